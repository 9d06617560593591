"""The shape of the code, held by tests: no import cycles among imagefit's modules, no private
attribute of another object reached from outside its module, the estimator small, and every
public entry point's bad-parameter message in the one format of `_validation.param_error`.
The layer order itself is import-linter's contract in pyproject.toml (`make test` runs it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from imagefit.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "imagefit"
# The one allowed upward import: EvaluationResult.save_report, an alias of the report's function
# (also listed in pyproject's import-linter contract).
ALLOWED_EDGES = {("imagefit.evaluation.result", "imagefit.report.evaluation"),
                 ("imagefit.evaluation.tagging", "imagefit.report.evaluation")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_among_modules():
    graph = _import_graph()
    assert len(graph) > 40  # the walk found the package
    for a, b in ALLOWED_EDGES:
        assert b in graph[a], f"stale allowance {a} -> {b}"
        graph[a].discard(b)
    # The package root re-exports the public API; it is imported by nothing inside.
    importers_of_root = [m for m, targets in graph.items() if "imagefit" in targets]
    assert importers_of_root == []
    assert _cycles(graph) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_imports_under_its_own_name(name):
    """`import imagefit.x.y as m` binds the module: no function re-exported by a package
    (`imagefit.evaluate`, `imagefit.explain.gradcam`) shadows a subpackage or module."""
    import sys

    namespace = {}
    exec(f"import {name} as m", namespace)
    assert namespace["m"] is sys.modules[name]


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _foreign_private_accesses(path: Path) -> list[str]:
    """`x._name` (not a dunder) where x is an object other than self/cls: a private attribute
    of another object. Names bound by imports are modules and classes, not objects."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in {"self", "cls"} | imported:
                continue  # its own state, a helper object it owns, or a module's name
            found.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_reaches_into_another_objects_private_attributes():
    # The estimators' alternative constructors (`from_config`) set up the instance they build.
    found = [hit for path in SRC.rglob("*.py") if path.name not in ("estimator.py", "regressor.py")
             for hit in _foreign_private_accesses(path)]
    assert found == []


def test_private_access_check_catches_one(tmp_path):
    probe = SRC / "_probe_for_test.py"
    try:
        probe.write_text("def f(clf):\n    return clf._get_runner()\n", encoding="utf-8")
        assert _foreign_private_accesses(probe) == ["imagefit/_probe_for_test.py:2: "
                                                     "clf._get_runner"]
    finally:
        probe.unlink()


def test_estimator_stays_small():
    lines = (SRC / "estimator.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, "estimator.py: move stages to train/, checks to _validation"
    tree = ast.parse("\n".join(lines))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= 50, f"{node.name} is {length} lines"


# --- one message format for bad parameters ---------------------------------------------------

MESSAGE = re.compile(r"^The '\w+' parameter must be .+\. Got .+ instead\.$", re.S)


def _entry_points(tmp_path):
    """(description, callable raising ConfigError for a bad parameter) for public functions."""
    from imagefit import ImageClassifier, ImageIndex
    from imagefit.data.augment import resolve_augment
    from imagefit.data.sampling import (
        BalancedSampler,
        class_weights,
        effective_number_weights,
        logit_adjustment,
        resolve_balance,
    )
    from imagefit.evaluation.issues import (
        find_label_issues,
        near_duplicate_pairs,
        out_of_fold_probabilities,
        stratified_fold_ids,
    )
    from imagefit.evaluation.ranking import rank_per_class
    from imagefit.models.backbones import preprocessing_for
    from imagefit.workflows.augment import augment_folder
    from imagefit.workflows.benchmark import benchmark_loader

    index = ImageIndex.from_paths(["a.png", "b.png"], ["x", "y"])
    y, p = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    counts = np.array([3, 1])
    return [
        ("ImageClassifier epochs", lambda: ImageClassifier(epochs=0).fit(index)),
        ("ImageClassifier lr", lambda: ImageClassifier(lr=-1.0).fit(index)),
        ("ImageClassifier mode", lambda: ImageClassifier(mode="x").fit(index)),
        ("ImageClassifier device", lambda: ImageClassifier(device="tpu").fit(index)),
        ("ImageIndex.split", lambda: index.split(val_fraction=1.5)),
        ("preprocessing_for", lambda: preprocessing_for("efficientnet_lite0", 8)),
        ("resolve_augment", lambda: resolve_augment({"rotation_range": -5})),
        ("resolve_balance", lambda: resolve_balance("x", counts)),
        ("class_weights", lambda: class_weights("x", counts, ("a", "b"))),
        ("effective_number_weights", lambda: effective_number_weights(counts, beta=2.0)),
        ("logit_adjustment", lambda: logit_adjustment(counts, tau=-1.0)),
        ("BalancedSampler", lambda: BalancedSampler(y, seed=-1)),
        ("rank_per_class", lambda: rank_per_class(y, p, k=0)),
        ("stratified_fold_ids", lambda: stratified_fold_ids(y, n_folds=1)),
        ("out_of_fold_probabilities", lambda: out_of_fold_probabilities(
            np.zeros((2, 3), np.float32), y, 2, epochs=0)),
        ("find_label_issues", lambda: find_label_issues(y, p, rank_by="x")),
        ("near_duplicate_pairs", lambda: near_duplicate_pairs(np.eye(3, dtype=np.float32),
                                                              threshold=2.0)),
        ("augment_folder", lambda: augment_folder(tmp_path / "none", tmp_path / "out",
                                                  per_image=0)),
        ("benchmark_loader", lambda: benchmark_loader(tmp_path / "none", workers=-1)),
    ]


def test_every_public_entry_point_uses_the_one_message_format(tmp_path):
    for name, call in _entry_points(tmp_path):
        with pytest.raises(ConfigError) as info:
            call()
        assert MESSAGE.match(str(info.value)), f"{name}: {info.value}"


def test_param_error_is_the_format():
    from imagefit._validation import check_choice, check_int, check_scalar, param_error

    assert str(param_error("k", "an int >= 1", 0)) == ("The 'k' parameter must be an int >= 1. "
                                                        "Got 0 instead.")
    for call in (lambda: check_int("n", True), lambda: check_int("n", 5, 0, 3),
                 lambda: check_scalar("x", float("nan")), lambda: check_scalar("x", 1, 0, 1,
                                                                                high_open=True),
                 lambda: check_choice("c", "z", ("a", "b"))):
        with pytest.raises(ConfigError) as info:
            call()
        assert MESSAGE.match(str(info.value)), str(info.value)
    assert check_int("n", np.int64(3), 0, 3) == 3
    assert check_scalar("x", 0.5, 0, 1, high_open=True) == 0.5
