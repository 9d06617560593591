"""Security checks of reliability.md section 3 (C1, C5, C6, C9), end to end.

C1: a pickle whose `__reduce__` creates a marker file is offered to every loading path (model
folder, CLI commands, backbone weights, resume checkpoints, feature and decoded-image caches);
the marker never appears and each path ends in a clear error or a recompute. A static scan keeps
it so. C5/C6: output paths made from input names stay inside the output folder. C9: hostile
names are printed escaped and rendered without raw tags.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import inspect
import io
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_IMAGE_SIZE, make_dataset, make_image
from imagefit._fileio import WINDOWS_RESERVED
from imagefit.cli.main import main
from imagefit.errors import CacheError, DatasetError, ModelFormatError
from imagefit.evaluation.ranking import rank_per_class
from imagefit.explain import safe_name
from imagefit.features.extract import DecodeRunner, compute_features
from imagefit.features.store import FeatureStore
from imagefit.metrics import format_per_class_table
from imagefit.models.backbones import preprocessing_for
from imagefit.report.html import ReportData, render_report
from imagefit.train.checkpoint import Checkpointer
from imagefit.workflows.augment import MAX_STEM_BYTES, _check_class_name, _unique_stems, copy_stem

REPO = Path(__file__).resolve().parents[1]
HOSTILE_FILE = "\x1b[2J<script>alert(1)"   # clears a terminal; a tag in HTML; a file name


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- C1: malicious pickles -------------------------------------------------------------------

class _Evil:
    """Unpickling this opens (creates) the marker file: arbitrary code would run instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a malicious pickle was unpickled"


def evil_pickle(marker: Path) -> bytes:
    data = pickle.dumps(_Evil(marker))
    pickle.loads(data).close()  # the fixture is armed: unpickling does create the marker
    assert marker.exists()
    marker.unlink()
    return data


def evil_torch_file(path: Path, marker: Path) -> Path:
    """A torch.save checkpoint (zip) whose pickle holds the payload."""
    buffer = io.BytesIO()
    torch.save({"format": 1, "fingerprint": "", "epoch": 1, "payload": _Evil(marker)}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=False)["payload"].close()  # armed (test-only unsafe load)
    assert marker.exists()
    marker.unlink()
    path.write_bytes(buffer.getvalue())
    return path


def _set_checksum(folder: Path) -> None:
    """Make model.json vouch for whatever model.safetensors now holds (a careful attacker)."""
    meta = json.loads((folder / "model.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta))


def make_evil_model(kind: str, trained_run, tmp_path: Path, marker: Path) -> Path:
    """A model argument in one of the ways a pickle can be slipped in."""
    if kind == "evil.pkl":
        path = tmp_path / "evil.pkl"
        path.write_bytes(evil_pickle(marker))
        return path
    if kind == "evil.pt":
        return evil_torch_file(tmp_path / "evil.pt", marker)
    if kind == "evil.safetensors":  # a pickle under a trusted suffix, given as a file
        path = tmp_path / "evil.safetensors"
        path.write_bytes(evil_pickle(marker))
        return path
    folder = Path(shutil.copytree(trained_run["run"] / "model", tmp_path / "model"))
    if kind == "folder/weights-pickle":
        (folder / "model.safetensors").write_bytes(evil_pickle(marker))
        _set_checksum(folder)
    elif kind == "folder/weights-torch-zip":
        evil_torch_file(folder / "model.safetensors", marker)
        _set_checksum(folder)
    elif kind == "folder/json-pickle":
        (folder / "model.json").write_bytes(evil_pickle(marker))
    else:
        raise AssertionError(kind)
    return folder


MODEL_KINDS = ["evil.pkl", "evil.pt", "evil.safetensors", "folder/weights-pickle",
               "folder/weights-torch-zip", "folder/json-pickle"]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_load_model_never_unpickles(kind, trained_run, tmp_path, marker):
    import imagefit

    evil = make_evil_model(kind, trained_run, tmp_path, marker)
    with pytest.raises(ModelFormatError):  # ModelNotFoundError (a file, not a folder) included
        imagefit.load_model(evil)
    assert not marker.exists()


def _command(name: str, model: Path, trained_run, tmp_path: Path) -> list:
    image = sorted(Path(trained_run["test"]).glob("cat/*"))[0]
    return {"predict": ["predict", model, image],
            "evaluate": ["evaluate", model, trained_run["test"]],
            "export": ["export", model, "--out", tmp_path / "exported" / "m.onnx"],
            "explain": ["explain", model, image, "--out", tmp_path / "explained"],
            "report": ["report", model, "--out", tmp_path / "report"],
            "serve": ["serve", model, "--port", "8765"]}[name]


@pytest.mark.parametrize("kind", ["evil.pkl", "evil.safetensors", "folder/weights-pickle",
                                  "folder/json-pickle"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "explain", "report",
                                     "serve"])
def test_every_command_refuses_a_pickled_model(command, kind, trained_run, tmp_path, marker,
                                               monkeypatch, capsys):
    def never_bind(*args, **kwargs):
        raise AssertionError("serve reached uvicorn.run with a malicious model")

    monkeypatch.setattr("uvicorn.run", never_bind)
    evil = make_evil_model(kind, trained_run, tmp_path, marker)
    code = cli(_command(command, evil, trained_run, tmp_path))
    err = capsys.readouterr().err
    # A pickle file is refused by name (6); a file that is not a folder is "no model" (1).
    assert code == (1 if kind == "evil.safetensors" else 6), err
    assert err.startswith("error: ") and "Traceback" not in err
    if kind == "evil.pkl":
        assert "Refusing to load 'evil.pkl'" in err and "run arbitrary code" in err
    assert not marker.exists()
    assert not any((tmp_path / name).exists() for name in ("exported", "explained", "report"))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt"])
@pytest.mark.parametrize("command", ["train", "features"])
def test_backbone_weights_option_never_unpickles(command, name, tmp_path, marker, capsys):
    data = make_dataset(tmp_path / "data", {"cat": 4, "dog": 4})
    weights = tmp_path / name
    if name.endswith(".pt"):
        evil_torch_file(weights, marker)
    else:
        weights.write_bytes(evil_pickle(marker))
    extra = (["--mode", "probe", "--epochs", "2", "--no-report"] if command == "train" else [])
    code = cli([command, data, "--out", tmp_path / "out", "--weights", weights,
                "--image-size", TEST_IMAGE_SIZE, "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 6, err
    last = err.strip().splitlines()[-1]   # after any warnings about the data
    assert last.startswith("error: ") and "Traceback" not in err and name in last
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_checkpointer_refuses_a_malicious_checkpoint(fmt, tmp_path, marker):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    if fmt == "torch.save":
        evil_torch_file(folder / "probe.pt", marker)
    else:
        (folder / "probe.pt").write_bytes(evil_pickle(marker))
    with pytest.raises(CacheError, match="Cannot resume"):
        Checkpointer(folder).load("probe")
    assert not marker.exists()


@pytest.fixture
def evil_resume(trained_run, tmp_path, marker):
    """A copy of the shared run whose every checkpoint is a malicious torch.save file, and the
    command that resumes it."""
    run = Path(shutil.copytree(trained_run["run"], tmp_path / "run"))
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    assert checkpoints
    for path in checkpoints:
        evil_torch_file(path, marker)
    return ["train", trained_run["data"], "--out", run, "--resume", "--mode", "probe",
            "--epochs", "2", "--image-size", TEST_IMAGE_SIZE, "--quiet", "--no-report"]


def test_resume_refuses_a_malicious_checkpoint(evil_resume, marker, capsys):
    code = cli(evil_resume)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: Cannot resume: checkpoint") and "Traceback" not in err
    assert "\x1b" not in err  # torch's message carries ANSI bold; printed escaped
    assert not marker.exists()


def test_resume_refusal_does_not_advise_unsafe_loading(evil_resume, marker, capsys):
    cli(evil_resume)
    err = capsys.readouterr().err
    assert "Cannot resume" in err
    assert "weights_only` set to `False`" not in err and "add_safe_globals" not in err


def _evil_chunk(kind: str, npy: Path, marker: Path) -> None:
    if kind == "raw pickle":
        npy.write_bytes(evil_pickle(marker))
    else:  # a real .npy file holding an object array, i.e. a pickle behind the .npy header
        evil_pickle(marker)
        np.save(npy, np.array([_Evil(marker)], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("kind", ["raw pickle", "npy object array", "record"])
def test_feature_store_chunk_that_is_a_pickle_is_discarded(kind, tmp_path, marker):
    store = FeatureStore(tmp_path / "cache", "k", dim=4)
    keys = [f"{i:064x}" for i in range(3)]
    with store.writer() as writer:
        writer.add(keys, np.arange(12, dtype=np.float32).reshape(3, 4))
    (npy,) = store.folder.glob("chunk-*.npy")
    if kind == "record":
        npy.with_suffix(".json").write_bytes(evil_pickle(marker))
        store = FeatureStore(tmp_path / "cache", "k", dim=4)
        assert store.missing(np.array(keys)).all()
    else:
        _evil_chunk(kind, npy, marker)
        store = FeatureStore(tmp_path / "cache", "k", dim=4)
        with pytest.raises(CacheError, match="failed validation and was removed"):
            store.get(keys)
        assert store.missing(np.array(keys)).all()
    assert list(store.folder.glob("chunk-*")) == []
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["raw pickle", "npy object array"])
def test_decoded_image_cache_chunk_that_is_a_pickle_is_recomputed(kind, tmp_path, marker):
    data = make_dataset(tmp_path / "data", {"cat": 3, "dog": 2})
    paths = np.array(sorted(str(p) for p in data.rglob("*.*")))
    keys = np.array([hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths])
    decode = DecodeRunner(preprocessing_for("efficientnet_lite0", TEST_IMAGE_SIZE))
    store = decode.store(tmp_path / "cache")
    first = compute_features(paths, decode, keys=keys, store=store)
    assert first.n_computed == len(paths) and first.ok.all()
    for npy in store.folder.glob("chunk-*.npy"):
        _evil_chunk(kind, npy, marker)
    store = decode.store(tmp_path / "cache")
    again = compute_features(paths, decode, keys=keys, store=store)
    assert again.n_computed == len(paths) and again.ok.all()
    assert np.array_equal(again.features, first.features)
    assert not marker.exists()
    # The repaired cache serves every row without decoding again.
    third = compute_features(paths, decode, keys=keys, store=decode.store(tmp_path / "cache"))
    assert third.n_computed == 0 and np.array_equal(third.features, first.features)


# --- C1/C6: static scan ----------------------------------------------------------------------

SCANNED = [REPO / "src" / "imagefit", REPO / "benchmarks", REPO / "examples"]
# Deserialisers that can run code from the bytes they read, whatever their arguments.
BANNED = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
          "_pickle.Unpickler", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
          "cloudpickle.load", "cloudpickle.loads", "joblib.load", "shelve.open", "marshal.load",
          "marshal.loads", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load",
          "torch.jit.load", "eval", "exec"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}
# Reviewed exceptions: (path relative to src/ or to the repository, call).
ALLOWED = {("imagefit/export/onnx.py", "torch.jit.load")}  # the bytes it just exported, in memory


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, from the module's imports (`np` -> `numpy`,
    `from pickle import loads as l` -> `pickle.loads`)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:  # `import a.b` binds `a`; `import a.b as c` binds a.b
                top = a.name.split(".")[0]
                names[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _resolve(node: ast.AST | None, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _constant(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is type(value) \
        and node.value == value


def unsafe_calls(source: str, filename: str) -> list[str]:
    """`file:line: problem` for every way `source` could deserialise code or unpack outside."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    problems, called = [], set()

    def report(node, message):
        problems.append(f"{filename}:{node.lineno}: {message}")

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called.add(id(node.func))
        name = _resolve(node.func, aliases)
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
        kw = {k.arg: k.value for k in node.keywords}
        if (filename, name) in ALLOWED:
            continue
        if name in ("torch.load", "torch.serialization.load"):
            if not _constant(kw.get("weights_only"), True):
                report(node, f"{name} without weights_only=True")
        elif name in BANNED:
            report(node, f"{name} can run code from what it reads")
        elif name == "yaml.load" and _resolve(kw.get("Loader"), aliases) not in SAFE_YAML_LOADERS:
            report(node, "yaml.load without Loader=yaml.SafeLoader")
        if "allow_pickle" in kw and not _constant(kw["allow_pickle"], False):
            report(node, f"{name or attr} with allow_pickle that is not False")
        if name == "numpy.load" and len(node.args) >= 3 and not _constant(node.args[2], False):
            report(node, "numpy.load with allow_pickle given by position")
        if (attr == "extractall" or name == "shutil.unpack_archive") \
                and not _constant(kw.get("filter"), "data"):
            report(node, f"{name or attr} without filter='data' (members can land outside)")
    for node in ast.walk(tree):  # `load = pickle.loads` or `map(torch.load, files)`
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load) \
                and id(node) not in called:
            name = _resolve(node, aliases)
            if (name in BANNED - {"eval", "exec"} or name == "torch.load") \
                    and (filename, name) not in ALLOWED:
                report(node, f"{name} referenced without a call (its arguments go unchecked)")
    return problems


def test_checker_flags_each_unsafe_pattern_with_file_and_line():
    bad = "\n".join([
        "import pickle, tarfile, zipfile, yaml, shutil",            # 1
        "import numpy as np",                                       # 2
        "import torch as t",                                        # 3
        "from pickle import loads as l",                            # 4
        "t.load('a')",                                              # 5
        "t.load('a', weights_only=False)",                          # 6
        "t.load('a', weights_only='True')",                         # 7
        "pickle.load(open('a', 'rb'))",                             # 8
        "l(b'')",                                                   # 9
        "np.load('a', allow_pickle=True)",                          # 10
        "np.load('a', None, True)",                                 # 11
        "tarfile.open('a').extractall('d')",                        # 12
        "zipfile.ZipFile('a').extractall('d')",                     # 13
        "tarfile.open('a').extractall('d', filter='fully_trusted')",  # 14
        "shutil.unpack_archive('a', 'd')",                          # 15
        "yaml.load(s)",                                             # 16
        "yaml.load(s, Loader=yaml.Loader)",                         # 17
        "loader = t.load",                                          # 18
        "eval('1')",                                                # 19
        "t.jit.load('m.pt')",                                       # 20
    ])
    problems = unsafe_calls(bad, "bad.py")
    assert sorted(int(p.split(":")[1]) for p in problems) == list(range(5, 21))
    assert problems[0] == "bad.py:5: torch.load without weights_only=True"
    good = "\n".join([
        "import io, json, tarfile, yaml, numpy as np, torch",
        "torch.load('a', map_location='cpu', weights_only=True)",
        "np.load('a')",
        "np.load('a', mmap_mode='r', allow_pickle=False)",
        "np.save(io.BytesIO(), np.zeros(1), allow_pickle=False)",
        "tarfile.open('a').extractall('d', filter='data')",
        "yaml.safe_load('a: 1')",
        "yaml.load('a: 1', Loader=yaml.SafeLoader)",
        "model.eval()",
        "json.loads('{}')",
    ])
    assert unsafe_calls(good, "good.py") == []


def test_no_source_file_can_unpickle_or_unpack_outside():
    """Every torch.load passes weights_only=True; no pickle/dill/joblib/shelve/marshal load;
    np.load never allows pickles (its default is allow_pickle=False); no archive extraction
    without filter='data' (no command accepts archives today, so a future one must bring it).
    tests/ is not scanned: its fixtures unpickle on purpose, to prove they are armed."""
    assert inspect.signature(np.load).parameters["allow_pickle"].default is False
    files = [p for folder in SCANNED if folder.is_dir() for p in sorted(folder.rglob("*.py"))]
    assert len(files) > 60
    problems = []
    for path in files:
        base = REPO / "src" if path.is_relative_to(REPO / "src") else REPO
        problems += unsafe_calls(path.read_text(encoding="utf-8"),
                                 path.relative_to(base).as_posix())
    assert problems == [], "\n".join(problems)


# --- C5: output paths made from input names ---------------------------------------------------

HOSTILE_NAMES = ["../../etc/passwd", "..\\..\\win.ini", "/abs/x.jpg", "C:\\x.jpg", "a\x00b.jpg",
                 "CON.jpg", "NUL", "COM1.png", "aux", "nul.tar", "x" * 300, "é" * 200,
                 "\x1b[2J", "<script>", "", ".", "..", "...", ".hidden", "a/b\\c\x7f"]


def _reserved_on_windows(name: str) -> bool:
    return name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_copy_name_from_a_hostile_stem_stays_one_safe_name(name, tmp_path):
    stem = copy_stem(name)
    file_name = f"{stem}_aug12345.png"
    assert not set(stem) & {"/", "\\", "\x00"} and all(ch.isprintable() for ch in stem)
    assert stem not in ("", ".", "..") and not stem.startswith(".")
    assert not _reserved_on_windows(file_name)
    # The copy and the temp file it is written under fit the 255-byte name limit.
    assert len(f".tmp-{'0' * 32}-{file_name}".encode("utf-8", "surrogatepass")) <= 255
    folder = tmp_path / "out" / "cls"
    assert (folder / file_name).resolve().parent == folder.resolve()
    assert copy_stem(stem) == stem  # idempotent: stems are unique after clash handling


def test_copy_name_keeps_ordinary_names_and_stays_unique():
    for name in ("tabby", "chat noir", "ünïcødé", "IMG_0001", "a.b", "CON", "con", "12:00"):
        assert copy_stem(name) == name
    long = ["y" * 300 + "a", "y" * 300 + "b"]
    assert len({copy_stem(s) for s in long}) == 2
    assert all(len(copy_stem(s).encode()) <= MAX_STEM_BYTES for s in long)
    # Names that sanitise alike, or differ only in case or suffix, still get distinct stems.
    stems = _unique_stems(["/d/a\\b.png", "/d/a_b.png", "/d/A_B.png", "/e/a_b.png",
                           "/d/a\x1bb.gif"], [".png"] * 5, [1, 2, 3, 4, 5])
    assert len({s.casefold() for s in stems}) == 5


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\..\\win.ini", "/abs", "C:\\x",
                                  "a\x00b", "", ".", "..", "...", ".hidden", "x" * 256,
                                  "é" * 128])
def test_class_name_that_cannot_be_one_folder_is_refused(name):
    with pytest.raises(DatasetError, match="cannot be used as a folder name"):
        _check_class_name(name, windows=False)


@pytest.mark.parametrize("name", ["CON", "con.txt", "NUL", "COM1", "LPT9", "aux", "a:b", "a?",
                                  "what.", "trail ", "<script>", "\x1b[2J"])
def test_class_names_windows_cannot_hold_are_refused_there(name):
    _check_class_name(name, windows=False)  # fine as a folder name on POSIX
    with pytest.raises(DatasetError, match="Windows"):
        _check_class_name(name, windows=True)
    _check_class_name("CONSOLE", windows=True)
    _check_class_name("golden retriever", windows=True)


def _png(path: Path, seed: int) -> Path:
    return make_image(path, (200, 60, 40), seed=seed, fmt="PNG")


def _assert_all_inside(out: Path, before: dict[str, bytes], root: Path, *skip: Path) -> None:
    """Every entry under `out` is a real file or folder inside it, with a name of at most 255
    bytes; nothing else under `root` (but the `skip` folders, e.g. a cache) changed."""
    resolved = out.resolve()
    for path in out.rglob("*"):
        assert not path.is_symlink() and path.resolve().is_relative_to(resolved), path
        assert len(path.name.encode("utf-8", "surrogateescape")) <= 255

    def kept(files: dict[str, bytes]) -> dict[str, bytes]:
        return {k: v for k, v in files.items()
                if not any((root / k).is_relative_to(f) for f in (out, *skip))}

    assert kept(files_under(root)) == kept(before)


def test_augment_hostile_file_and_class_names_land_inside_the_output(tmp_path, capsys):
    data, out, sentinel = tmp_path / "data", tmp_path / "deep" / "out", tmp_path / "sentinel"
    sentinel.mkdir()
    files = {"CON": ["CON.jpg", "NUL", "COM1.png", "aux", "nul.tar.png", "<script>.jpg",
                     "\x1b[2J.png", "x" * 250 + ".png", "a\\..\\..\\b.png", "C:\\x.jpg",
                     "..\\..\\win.ini.png", "..foo.jpg"],  # the last two are hidden: skipped
             "<script>": ["a.png"], "\x1b[2J": ["b.png"]}
    for seed, (cls, name) in enumerate((c, n) for c, names in files.items() for n in names):
        make_image(data / cls / name, (200, 60, 40), seed=seed,
                   fmt="JPEG" if name.endswith(".jpg") else "PNG")
    outside = files_under(tmp_path)
    assert cli(["augment", data, "--out", out, "--per-image", "1"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\\x1b[2J" in printed
    _assert_all_inside(out, outside, tmp_path)
    assert list(sentinel.iterdir()) == []
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == [w for w in written if w != "manifest.csv"]
    # One copy per usable source, each directly in its class folder, under a name no platform
    # reads as a path, a device or a hidden file.
    assert len(rows) == 12
    for row in rows:
        cls, name = row["path"].split("/")
        assert cls in files and not name.startswith(".") and not _reserved_on_windows(name)
        assert "\\" not in name and name.isprintable()
    assert {"CON/CON_aug0.jpg", "CON/NUL_aug0.png", "CON/COM1_aug0.png", "CON/aux_aug0.png",
            "CON/_nul.tar_aug0.png", "CON/<script>_aug0.jpg", "CON/_[2J_aug0.png",
            "CON/a_.._.._b_aug0.png", "CON/C:_x_aug0.jpg", "<script>/a_aug0.png",
            "\x1b[2J/b_aug0.png"} <= {r["path"] for r in rows}


def test_augment_from_csv_hostile_names_and_refused_classes(tmp_path, capsys):
    images = tmp_path / "ds" / "images"
    sources = [_png(images / name, i) for i, name in
               enumerate(["\x1b[2J.png", "y" * 240 + ".png", "ok.png", "NUL.x.png"])]
    table = tmp_path / "ds" / "labels.csv"
    rows = [(f"images/{s.name}", label)
            for s, label in zip(sources, ["CON", "CON", "<script>", "<script>"])]
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    out = tmp_path / "out"
    outside = files_under(tmp_path)
    assert cli(["augment", table, "--out", out, "--per-image", "1", "--quiet"]) == 0
    _assert_all_inside(out, outside, tmp_path)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names[:3] == ["<script>/_NUL.x_aug0.png", "<script>/ok_aug0.png", "CON/_[2J_aug0.png"]
    assert names[3].startswith("CON/yyy") and len(names[3].split("/")[1]) <= MAX_STEM_BYTES + 10

    for label in ["../../escape", "..", "...", "x" * 300]:
        bad = tmp_path / "ds" / "bad.csv"
        with open(bad, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("path", "label"), ("images/ok.png", label),
                                     ("images/NUL.x.png", "fine")])
        target = tmp_path / "refused"
        before = files_under(tmp_path)
        assert cli(["augment", bad, "--out", target, "--per-image", "1", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "cannot be used as a folder name" in err and "Traceback" not in err
        assert not target.exists() and files_under(tmp_path) == before


def test_explain_default_folder_from_hostile_image_names(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"] / "model", run / "model")
    source = sorted(Path(trained_run["test"]).glob("cat/*.png"))[0]
    expected = {"CON.png": "_CON", f"{HOSTILE_FILE}.png": "__2J_script_alert_1_"}
    for name, folder in expected.items():
        image = tmp_path / "in" / name
        image.parent.mkdir(exist_ok=True)
        shutil.copy(source, image)
        assert cli(["explain", run, image]) == 0
        printed = capsys.readouterr().out
        assert "\x1b" not in printed
        assert (run / "explain" / folder / "explain.json").is_file(), sorted(
            p.name for p in (run / "explain").iterdir())
    assert sorted(p.name for p in (run / "explain").iterdir()) == sorted(expected.values())
    assert sorted(p.name for p in run.iterdir()) == ["explain", "model"]
    assert safe_name("COM1") == "_COM1" and safe_name("nul.txt") == "_nul.txt"


def test_features_writes_only_its_fixed_files_and_recomputes_a_pickled_chunk(
        trained_run, _session_cache, tmp_path, marker, monkeypatch, capsys):
    """`features --out`: hostile names only ever appear inside index.csv / bad_files.csv, never
    as paths; a feature-store chunk replaced by a pickle is recomputed, not unpickled."""
    cache = tmp_path / "cache"
    shutil.copytree(_session_cache / "onnx", cache / "onnx")  # the exported backbone, reused
    monkeypatch.setenv("IMAGEFIT_CACHE", str(cache))
    data = make_dataset(tmp_path / "data", {"cat": 3, "dog": 3})
    _png(data / "cat" / f"{HOSTILE_FILE}.png", 7)
    (data / "dog" / "x\\..\\..\\y.png").write_bytes(b"not an image")
    out = tmp_path / "feats"
    argv = ["features", data, "--out", out, "--image-size", TEST_IMAGE_SIZE, "--workers", "0"]
    outside = files_under(tmp_path)
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert sorted(p.name for p in out.iterdir()) == ["bad_files.csv", "features.npy",
                                                     "index.csv"]
    _assert_all_inside(out, outside, tmp_path, cache)
    with open(out / "index.csv", newline="", encoding="utf-8") as f:
        assert any(HOSTILE_FILE in row["path"] for row in csv.DictReader(f))
    with open(out / "bad_files.csv", newline="", encoding="utf-8") as f:
        assert [Path(r["path"]).name for r in csv.DictReader(f)] == ["x\\..\\..\\y.png"]
    first = np.load(out / "features.npy")

    chunks = sorted((cache / "features").rglob("chunk-*.npy"))
    assert chunks
    for npy in chunks:
        npy.write_bytes(evil_pickle(marker))
    assert cli(argv) == 0
    assert "7 computed, 0 reused" in capsys.readouterr().out
    assert np.array_equal(np.load(out / "features.npy"), first)
    assert not marker.exists()


# --- C9: hostile strings on the terminal and in HTML -----------------------------------------

@pytest.fixture
def hostile_model(trained_run, tmp_path) -> Path:
    """The trained model with a class renamed to a terminal escape plus a tag (the checksum
    covers the weights only, so the folder still loads)."""
    folder = Path(shutil.copytree(trained_run["run"] / "model", tmp_path / "model"))
    meta = json.loads((folder / "model.json").read_text())
    meta["classes"][0] = HOSTILE_FILE + "cat"
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_predict_prints_hostile_file_and_class_names_escaped(hostile_model, trained_run,
                                                             tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted(Path(trained_run["test"]).glob("cat/*.png"))[0],
                folder / f"{HOSTILE_FILE}.png")
    (folder / f"{HOSTILE_FILE}-broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert cli(["predict", hostile_model, folder, "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    lines = printed.splitlines()
    assert len(lines) == 2 and all(line.startswith(str(folder)) for line in lines)
    assert all("\\x1b[2J<script>alert(1)" in line for line in lines)
    assert "\tERROR\t" in lines[0]
    assert "\\x1b[2J<script>alert(1)cat\t" in lines[1]  # the renamed class, escaped


def test_cli_errors_print_hostile_paths_escaped(tmp_path, capsys):
    assert cli(["predict", tmp_path / HOSTILE_FILE, tmp_path]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "\x1b" not in err and "\\x1b[2J" in err


def test_evaluate_prints_unreadable_file_names_escaped(trained_run, tmp_path, capsys):
    data = Path(shutil.copytree(trained_run["test"], tmp_path / "test"))
    (data / "cat" / f"{HOSTILE_FILE}.jpg").write_bytes(b"not an image")
    assert cli(["evaluate", trained_run["run"], data]) == 0
    printed = capsys.readouterr().out
    assert "Skipped 1 unreadable" in printed
    assert "\x1b" not in printed


def test_per_class_table_escapes_class_names():
    row = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    metrics = {"classes": [HOSTILE_FILE, "ok"], "per_class": {HOSTILE_FILE: row, "ok": row},
               "accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0, "log_loss": 0.0,
               "ece": 0.0, "n": 2}
    assert "\x1b" not in format_per_class_table(metrics)


def test_report_html_has_no_raw_tag_and_assets_have_hashed_names(tmp_path):
    hostile_class = HOSTILE_FILE + "cls"
    paths = np.array([str(_png(tmp_path / "in" / f"{HOSTILE_FILE}.png", 0)),
                      str(_png(tmp_path / "in" / "..\\..\\evil.png", 1))])
    y, proba = np.array([0, 1]), np.array([[0.3, 0.7], [0.4, 0.6]])
    row = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    metrics = {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.3, "log_loss": 1.0,
               "ece": 0.2, "n": 2, "classes": [hostile_class, "ok"],
               "confusion_matrix": [[0, 1], [0, 1]],
               "per_class": {hostile_class: row, "ok": row}}
    data = ReportData(HOSTILE_FILE, metrics, (hostile_class, "ok"), paths, y, proba,
                      rank_per_class(y, proba), subtitle=HOSTILE_FILE,
                      class_counts={"train": np.array([3, 4])},
                      label_issues=[(paths[0], hostile_class, "ok", 0.9)],
                      duplicates={"summary": {HOSTILE_FILE: 1},
                                  "groups": [[(paths[0], hostile_class, "train"),
                                              (paths[1], "ok", "val")]]},
                      gradcams={0: np.zeros((8, 8, 3), np.uint8)}, notes=[HOSTILE_FILE])
    out = tmp_path / "report"
    index = render_report(data, out)
    html = index.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "</script" not in html.lower()
    assert "&lt;script&gt;alert(1)" in html
    assert all(re.fullmatch(r"[0-9a-f]{24}\.(jpg|png)", p.name)
               for p in (out / "assets").iterdir())
    assert {p.relative_to(out).parts[0] for p in out.rglob("*")} == {"assets", "index.html"}
    assert re.findall(r"src='([^']+)'", html) and all(
        s.startswith("assets/") for s in re.findall(r"src='([^']+)'", html))
    for thumb in (out / "assets").glob("*.jpg"):
        assert len(Image.open(thumb).getexif()) == 0
