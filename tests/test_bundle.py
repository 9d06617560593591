"""The model folder: round trip in a fresh process, its metadata contract, checksum and
completeness checks, and the refusal to unpickle anything (API, CLI, and a scan of src/)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_IMAGE_SIZE, make_image
from imagefit.bundle import resolve_model_dir
from imagefit.cli.main import main
from imagefit.errors import ModelFormatError
from imagefit.estimator import load_model
from imagefit.models.backbones import create_backbone

SRC = Path(__file__).resolve().parents[1] / "src" / "imagefit"
META_KEYS = {"format_version", "backbone", "image_size", "preprocessing", "classes", "head",
             "temperature", "versions", "weights_sha256"}


def _test_files(trained_run) -> list[str]:
    return sorted(str(p) for p in Path(trained_run["test"]).rglob("*") if p.is_file())


@pytest.fixture
def model_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained model folder (safe to damage)."""
    return Path(shutil.copytree(trained_run["run"] / "model", tmp_path / "model"))


def test_model_loads_in_fresh_process_from_folder_only(trained_run, model_copy, tmp_path):
    files = _test_files(trained_run)
    expected = trained_run["result"].classifier.predict_proba(files)
    script = (
        "import json, sys\n"
        "import imagefit\n"
        "clf = imagefit.load_model(sys.argv[1])\n"
        "paths = json.loads(sys.argv[2])\n"
        "print(json.dumps({'classes': list(clf.classes_),\n"
        "                  'proba': clf.predict_proba(paths).tolist()}))\n")
    env = dict(os.environ, IMAGEFIT_CACHE=str(tmp_path / "empty-cache"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script, str(model_copy), json.dumps(files)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["classes"] == ["cat", "dog", "owl"]
    proba = np.array(out["proba"])
    assert proba.shape == (len(files), 3)
    np.testing.assert_allclose(proba, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


_PREDICT_SCRIPT = (
    "import json, sys\n"
    "import imagefit\n"
    "clf = imagefit.load_model(sys.argv[1])\n"
    "proba = clf.predict_proba(json.loads(sys.argv[2])).tolist()\n"
    "print(json.dumps({'proba': proba, 'timm': 'timm' in sys.modules}))\n")


def _predict_in_fresh_process(model: Path, files: list[str], cache: Path) -> dict:
    env = dict(os.environ, IMAGEFIT_CACHE=str(cache), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", _PREDICT_SCRIPT, str(model), json.dumps(files)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_loaded_model_predicts_from_its_verified_graph_without_building_the_backbone(
        trained_run, model_copy, tmp_path):
    """The first prediction exports the backbone to ONNX and checks it against PyTorch; later
    ones run that graph without building the backbone (no timm import), with the same
    probabilities. A graph changed since its check is not trusted: the backbone is built."""
    files = _test_files(trained_run)
    expected = trained_run["result"].classifier.predict_proba(files)
    cache = tmp_path / "cache"
    first = _predict_in_fresh_process(model_copy, files, cache)
    assert first["timm"] is True
    second = _predict_in_fresh_process(model_copy, files, cache)
    assert second["timm"] is False
    (graph,) = (cache / "onnx").glob("*.onnx")
    assert graph.stem == json.loads((model_copy / "model.json").read_text())["backbone_key"]
    graph.write_bytes(graph.read_bytes() + b"\0")
    third = _predict_in_fresh_process(model_copy, files, cache)
    assert third["timm"] is True
    for out in (first, second, third):
        np.testing.assert_allclose(np.array(out["proba"]), expected, atol=1e-5, rtol=0)


def test_a_model_without_a_backbone_key_still_predicts(trained_run, model_copy, tmp_path):
    """model.json written before backbone_key existed: the backbone is built, as it was."""
    meta_path = model_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["backbone_key"]
    meta_path.write_text(json.dumps(meta))
    files = _test_files(trained_run)
    expected = trained_run["result"].classifier.predict_proba(files)
    for _ in range(2):
        out = _predict_in_fresh_process(model_copy, files, tmp_path / "cache")
        assert out["timm"] is True
        np.testing.assert_allclose(np.array(out["proba"]), expected, atol=1e-5, rtol=0)


def test_backbone_weights_that_do_not_fit_are_refused_when_the_backbone_is_built(model_copy):
    """Loading checks the head at once; the backbone's weights are checked when it is built
    (explain, export, save, or a prediction with no verified graph)."""
    meta_path = model_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, backbone="simple_cnn",
                                         settings=dict(meta["settings"],
                                                       backbone="simple_cnn"))))
    clf = load_model(model_copy)
    with pytest.raises(ModelFormatError, match="could not be rebuilt"):
        clf.get_config()  # builds the network


def test_loaded_model_matches_in_process_model(trained_run):
    clf = trained_run["result"].classifier
    loaded = load_model(trained_run["run"])
    files = _test_files(trained_run)
    assert loaded.classes_ == clf.classes_
    assert loaded.temperature_ == pytest.approx(clf.temperature_, rel=1e-6)
    assert loaded.backbone_name_ == "efficientnet_lite0"
    assert loaded.preprocessing_ == clf.preprocessing_
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(files), clf.predict(files))


def test_loaded_and_fitted_models_have_the_same_attributes(trained_run):
    """Saving rebuilds, never pokes: fit ends through the same restore as loading, so a loaded
    model has every fitted attribute, with the same values where the folder keeps them."""
    clf = trained_run["result"].classifier
    loaded = load_model(trained_run["run"])
    assert set(vars(loaded)) == set(vars(clf))
    assert {"history_", "best_epoch_", "unfreeze_", "n_train_", "n_val_", "settings_",
            "validation_", "bad_files_"} <= set(vars(loaded))
    for name in ("history_", "best_epoch_", "unfreeze_", "n_train_", "n_val_", "mode_",
                 "balance_", "augment_", "preprocessing_", "backbone_name_"):
        assert getattr(loaded, name) == getattr(clf, name), name
    np.testing.assert_array_equal(loaded.class_weight_, clf.class_weight_)
    assert loaded.settings_.epochs == clf.settings_.epochs and loaded.settings_.lr == clf.settings_.lr
    assert loaded.settings_.device == "cpu" and loaded.settings_.cache_dir is None
    assert clf.validation_ is not None and loaded.validation_ is None  # not kept in the folder
    assert loaded.get_config()["training"] == clf.get_config()["training"]


def test_a_loaded_model_honours_its_prediction_parameters(trained_run, tmp_path):
    """cache_dir, workers, max_pixels and batch_size set on a loaded model are what prediction
    uses (the machine-specific settings are not taken from model.json)."""
    from imagefit import scan_folder

    clf = load_model(trained_run["run"]).set_params(cache_dir=str(tmp_path / "cache"),
                                                    workers=0)
    result = clf.embed_index(scan_folder(trained_run["test"]).with_hashes())
    assert result.ok.all() and result.n_computed == 15
    assert list((tmp_path / "cache").rglob("chunk-*.json"))  # stored where it was told


def test_model_json_contract(trained_run):
    folder = trained_run["run"] / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert META_KEYS <= set(meta)
    clf = trained_run["result"].classifier
    assert meta["format_version"] == 1
    assert meta["backbone"] == "efficientnet_lite0"
    assert meta["image_size"] == TEST_IMAGE_SIZE
    prep = meta["preprocessing"]
    assert {"mean", "std", "interpolation", "background"} <= set(prep)
    assert prep["image_size"] == TEST_IMAGE_SIZE
    assert prep["mean"] == [0.5, 0.5, 0.5] and prep["std"] == [0.5, 0.5, 0.5]
    assert prep["interpolation"] == "bilinear"
    assert prep["background"] == [255, 255, 255]
    assert meta["classes"] == ["cat", "dog", "owl"]
    assert meta["head"]["in_features"] == 1280
    assert meta["head"]["dropout"] == pytest.approx(0.2)
    assert meta["temperature"] == pytest.approx(clf.temperature_)
    assert meta["temperature"] > 0
    assert {"imagefit", "torch", "timm"} <= set(meta["versions"])
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert meta["weights_sha256"] == digest


def test_run_folder_and_model_folder_both_accepted(trained_run):
    run = trained_run["run"]
    assert resolve_model_dir(run) == run / "model"
    assert resolve_model_dir(run / "model") == run / "model"
    assert resolve_model_dir(str(run)) == run / "model"
    a, b = load_model(run), load_model(run / "model")
    files = _test_files(trained_run)[:4]
    np.testing.assert_array_equal(a.predict_proba(files), b.predict_proba(files))


def test_save_model_round_trip_to_new_folder(trained_run, tmp_path):
    clf = trained_run["result"].classifier
    folder = clf.save(tmp_path / "nested" / "saved")
    assert folder == tmp_path / "nested" / "saved"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")] == []
    files = _test_files(trained_run)[:5]
    np.testing.assert_allclose(load_model(folder).predict_proba(files),
                               clf.predict_proba(files), atol=1e-6)


def test_tampered_weights_are_refused(model_copy):
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit in the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum"):
        load_model(model_copy)


def test_tampered_checksum_in_json_is_refused(model_copy):
    meta_path = model_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="checksum"):
        load_model(model_copy)


@pytest.mark.parametrize("remove", ["model.json", "model.safetensors"])
def test_missing_file_is_refused(model_copy, remove):
    (model_copy / remove).unlink()
    with pytest.raises(ModelFormatError, match="No model found"):
        load_model(model_copy)


def test_missing_or_empty_folder_is_refused(tmp_path):
    with pytest.raises(ModelFormatError):
        load_model(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError):
        load_model(tmp_path / "empty")


def test_broken_json_and_unknown_format_are_refused(model_copy):
    meta_path = model_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ModelFormatError, match="format"):
        load_model(model_copy)
    meta_path.write_text("{ not json")
    with pytest.raises(ModelFormatError, match="JSON"):
        load_model(model_copy)


def test_json_that_does_not_fit_weights_is_refused(model_copy):
    meta_path = model_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, classes=["a", "b"])))  # weights have 3 outputs
    with pytest.raises(ModelFormatError, match="could not be rebuilt"):
        load_model(model_copy)


# --- pickles ---------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_file(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Evil(marker)))
    # Sanity: unpickling really would create the marker (then undo it).
    pickle.loads(path.read_bytes()).close()
    assert marker.exists()
    marker.unlink()
    return path


@pytest.mark.parametrize("name", ["evil.pkl", "evil.pt", "evil.pth", "evil.ckpt", "evil.bin"])
def test_pickle_file_refused_by_load_model(tmp_path, name):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / name, marker)
    with pytest.raises(ModelFormatError, match="Refusing"):
        load_model(evil)
    assert not marker.exists()


def test_pickle_refused_by_cli_predict(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.pkl", marker)
    image = make_image(tmp_path / "x.png", (10, 20, 30), seed=0)
    code = main(["predict", str(evil), str(image), "--quiet"])
    assert code == 6
    err = capsys.readouterr().err
    assert "Refusing" in err and "evil.pkl" in err
    assert not marker.exists()
    code = main(["evaluate", str(_evil_file(tmp_path / "evil.pt", marker)), str(tmp_path),
                 "--quiet"])
    assert code == 6
    assert not marker.exists()


def test_pickle_refused_as_backbone_weights(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "backbone.pt", marker)
    with pytest.raises(ModelFormatError, match="safetensors"):
        create_backbone("efficientnet_lite0", image_size=TEST_IMAGE_SIZE, weights=evil)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused(model_copy, tmp_path):
    """A model folder whose model.safetensors is a pickle (checksum updated to match):
    never unpickled, and reported as a ModelFormatError."""
    marker = tmp_path / "pwned"
    weights = model_copy / "model.safetensors"
    _evil_file(weights, marker)
    meta_path = model_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError):
        load_model(model_copy)
    assert not marker.exists()


def test_save_model_writes_only_safetensors_and_json(trained_run, tmp_path):
    folder = trained_run["result"].classifier.save(tmp_path / "m")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "temperature" in names and "head.1.weight" in names
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]


# --- static scan of src/ ---------------------------------------------------------------------

def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _unsafe_loads(source: str, filename: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        where = f"{filename}:{node.lineno} {name}"
        if name == "torch.load":
            value = kw.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                problems.append(where + " without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load",
                      "cPickle.loads", "joblib.load", "dill.load", "dill.loads"):
            problems.append(where)
        elif name in ("np.load", "numpy.load"):
            value = kw.get("allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant)
                                          and value.value is False):
                problems.append(where + " with allow_pickle")
    return problems


def test_scanner_catches_unsafe_calls():
    bad = ("import torch, pickle, numpy as np\n"
           "torch.load('a')\n"
           "torch.load('a', weights_only=False)\n"
           "pickle.loads(b'')\n"
           "np.load('a', allow_pickle=True)\n")
    assert len(_unsafe_loads(bad, "bad.py")) == 4
    good = ("import torch, numpy as np\n"
            "torch.load('a', map_location='cpu', weights_only=True)\n"
            "np.load('a', allow_pickle=False)\nnp.load('b')\n")
    assert _unsafe_loads(good, "good.py") == []


def test_src_never_unpickles():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    problems = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        problems += _unsafe_loads(source, str(path.relative_to(SRC)))
        # `from pickle import load` or `from torch import load` would dodge the call scan.
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "torch", "joblib"):
                names = {a.name for a in node.names}
                if names & {"load", "loads", "Unpickler"}:
                    problems.append(f"{path.name}: from {node.module} import {names}")
    assert problems == []
