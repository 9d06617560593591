"""Exporting to ONNX / TorchScript (verified, with metadata, dynamic batch), the README's
onnxruntime snippet run as written without imagefit, `imagefit export`, and streamed prediction
(`iter_predict_files` chunks and `imagefit predict` row order)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import COLOURS, TEST_IMAGE_SIZE, make_image
from imagefit import load_image
from imagefit.cli.main import main
from imagefit.errors import ConfigError, ExportError
from imagefit.export.onnx import TOLERANCE, export_model

README = Path(__file__).resolve().parents[1] / "README.md"


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def val_paths(run: Path) -> list[str]:
    with open(run / "split.csv", newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f) if row["split"] == "val"]


def decode(paths, size: int) -> np.ndarray:
    return np.stack([load_image(p, size) for p in paths])


@pytest.fixture(scope="module")
def clf(trained_run):
    return trained_run["result"].classifier


@pytest.fixture(scope="module")
def onnx_export(trained_run, clf, tmp_path_factory):
    paths = val_paths(trained_run["run"])
    out = tmp_path_factory.mktemp("export") / "sub" / "model.onnx"
    result = export_model(clf, out, verify_images=paths)
    return result, paths


# --- ONNX --------------------------------------------------------------------------------------

def test_onnx_export_verified_on_validation_images(onnx_export):
    result, paths = onnx_export
    assert len(paths) >= 3
    assert result.path.is_file() and result.path.stat().st_size > 1000
    assert result.format == "onnx"
    assert 0 <= result.max_abs_diff <= TOLERANCE
    assert result.n_verified == len(paths)  # every validation image decodes
    assert result.verified_on == "given images"


def test_onnx_runtime_matches_predict_files_on_real_images(onnx_export, clf):
    result, paths = onnx_export
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    size = int(session.get_modelmeta().custom_metadata_map["imagefit.image_size"])
    got = session.run(None, {"images": decode(paths, size)})[0]
    expected = clf.predict_files(paths).proba
    assert got.shape == (len(paths), len(clf.classes_))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert (got >= 0).all()
    # The probabilities are not degenerate (a constant output would also "sum to one").
    assert len({int(i) for i in got.argmax(axis=1)}) > 1


def test_onnx_metadata(onnx_export, clf):
    result, _ = onnx_export
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["imagefit.classes"]) == list(clf.classes_) == ["cat", "dog", "owl"]
    assert int(meta["imagefit.image_size"]) == clf.preprocessing_.image_size == TEST_IMAGE_SIZE
    as_json = json.loads(json.dumps(clf.preprocessing_.to_dict()))  # tuples become lists
    assert json.loads(meta["imagefit.preprocessing"]) == as_json
    assert float(meta["imagefit.temperature"]) == pytest.approx(float(clf.temperature_))
    assert meta["imagefit.backbone"] == clf.backbone_name_
    text = meta["imagefit.input"]
    assert "uint8" in text and f"{TEST_IMAGE_SIZE}, {TEST_IMAGE_SIZE}, 3" in text
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]


def test_onnx_dynamic_batch(onnx_export, clf):
    result, paths = onnx_export
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    size = clf.preprocessing_.image_size
    images = decode((paths * 5)[:5], size)
    five = session.run(None, {"images": images})[0]
    one = session.run(None, {"images": images[:1]})[0]
    assert five.shape == (5, len(clf.classes_))
    assert one.shape == (1, len(clf.classes_))
    np.testing.assert_allclose(one[0], five[0], atol=1e-6)
    np.testing.assert_allclose(five.sum(axis=1), 1.0, atol=1e-5)


# --- TorchScript -------------------------------------------------------------------------------

def test_torchscript_export_verifies_and_loads(trained_run, clf, tmp_path):
    paths = val_paths(trained_run["run"])
    out = tmp_path / "model.pt"
    result = export_model(clf, out, format="torchscript", verify_images=paths)
    assert result.format == "torchscript" and result.path == out and out.is_file()
    assert result.max_abs_diff <= TOLERANCE and result.n_verified == len(paths)
    loaded = torch.jit.load(io.BytesIO(out.read_bytes()))
    with torch.no_grad():
        got = loaded(torch.from_numpy(decode(paths, clf.preprocessing_.image_size))).numpy()
    np.testing.assert_allclose(got, clf.predict_files(paths).proba, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


# --- failures ----------------------------------------------------------------------------------

def test_failed_verification_raises_and_writes_nothing(trained_run, clf, tmp_path, monkeypatch):
    import imagefit.export.onnx as onnx_mod

    real = onnx_mod._run_onnx
    monkeypatch.setattr(onnx_mod, "_run_onnx", lambda data, images: real(data, images) + 0.01)
    out = tmp_path / "nested" / "model.onnx"
    with pytest.raises(ExportError) as info:
        export_model(clf, out, verify_images=val_paths(trained_run["run"]))
    message = str(info.value)
    assert "difference" in message
    assert re.search(r"1\.0\d?e-02", message)  # the measured difference, 0.01
    assert not out.exists()
    assert not list(tmp_path.rglob("*"))  # no temporary or partial file either


def test_unknown_format_is_config_error(clf, tmp_path):
    out = tmp_path / "model.tflite"
    with pytest.raises(ConfigError, match="tflite"):
        export_model(clf, out, format="tflite")
    assert not out.exists()


# --- README snippet ----------------------------------------------------------------------------

def readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- onnx-snippet:start -->\s*```python\n(.*?)```\s*"
                      r"<!-- onnx-snippet:end -->", text, re.S)
    assert block, "README.md has no python block between the onnx-snippet markers"
    return block.group(1)


def test_readme_onnx_snippet_runs_without_imagefit(onnx_export, clf, tmp_path):
    result, _ = onnx_export
    model = tmp_path / "runs" / "demo" / "export" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(result.path.read_bytes())
    photo = make_image(tmp_path / "photo.jpg", COLOURS["owl"], seed=4242, fmt="JPEG")
    code = 'import sys; sys.modules["imagefit"] = None\n' + readme_snippet()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    label, probability = proc.stdout.split()
    assert label == clf.predict([str(photo)])[0]
    assert float(probability) == pytest.approx(float(clf.predict_proba([str(photo)]).max()),
                                               abs=1e-3)


def test_snippet_really_cannot_import_imagefit(tmp_path):
    code = 'import sys; sys.modules["imagefit"] = None\nimport imagefit\n'
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "import of imagefit halted" in proc.stderr


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_export_default_onnx(trained_run, capsys):
    run = trained_run["run"]
    out = run / "export" / "model.onnx"
    assert cli(["export", run, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["imagefit.classes"]) == ["cat", "dog", "owl"]


def test_cli_export_torchscript_and_out(trained_run, tmp_path, capsys):
    run = trained_run["run"]
    assert cli(["export", run, "--format", "torchscript", "--quiet"]) == 0
    pt = run / "export" / "model.pt"
    assert pt.is_file()
    loaded = torch.jit.load(io.BytesIO(pt.read_bytes()))
    with torch.no_grad():
        p = loaded(torch.zeros(2, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3, dtype=torch.uint8))
    assert tuple(p.shape) == (2, 3)

    out = tmp_path / "custom" / "X.onnx"
    assert cli(["export", run, "--out", out]) == 0
    assert out.is_file()
    printed = capsys.readouterr().out
    assert str(out) in printed and "validation images" in printed


def test_cli_export_refuses_pickle(tmp_path, capsys):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"\x80\x04\x95not really a pickle.")
    assert cli(["export", evil, "--quiet"]) == 6
    assert "pickle" in capsys.readouterr().err.lower()
    assert not (tmp_path / "export").exists()


# --- streamed prediction -----------------------------------------------------------------------

def _mixed_paths(test: Path, tmp_path: Path) -> tuple[list[str], dict[int, str]]:
    images = sorted(str(p) for p in test.rglob("*.*"))
    paths = images[:8]
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    paths.insert(2, str(tmp_path / "missing.png"))
    paths.insert(7, str(text))
    return paths, {2: "io_error", 7: "unidentified"}


def test_iter_predict_files_chunks_in_order(trained_run, clf, tmp_path):
    paths, bad = _mixed_paths(trained_run["test"], tmp_path)
    assert len(paths) == 10
    chunks = list(clf.iter_predict_files(paths, chunk_size=3))
    assert [len(c.paths) for c in chunks] == [3, 3, 3, 1]
    assert [len(c.errors) for c in chunks] == [3, 3, 3, 1]
    assert [c.proba.shape for c in chunks] == [(3, 3), (3, 3), (3, 3), (1, 3)]
    assert [str(p) for c in chunks for p in c.paths] == paths
    proba = np.concatenate([c.proba for c in chunks])
    errors = [e for c in chunks for e in c.errors]
    whole = clf.predict_files(paths)
    np.testing.assert_allclose(proba, whole.proba, atol=1e-5)  # NaN rows must match too
    assert list(whole.errors) == errors
    for i, error in enumerate(errors):
        if i in bad:
            assert error.startswith(bad[i]), (i, error)
            assert np.isnan(proba[i]).all()
        else:
            assert error == ""
            assert np.isfinite(proba[i]).all()
            assert proba[i].sum() == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_rows_follow_sorted_recursive_order(trained_run, tmp_path):
    test = trained_run["test"]
    folder = tmp_path / "incoming"
    sources = sorted(test.rglob("*.*"))
    # Created in an order unlike the sorted one, in nested folders (no folder mixes files
    # and subfolders, so walk order and sorted path order agree).
    layout = ["z_last/b.png", "a_first/zz.jpg", "d_deep/inner/k.png", "m_mid/c.jpg",
              "a_first/aa.png", "m_mid/B.png", "z_last/a.jpg"]
    for name, src in zip(layout, sources[::2]):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
    (folder / "m_mid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    out = tmp_path / "p.csv"
    assert cli(["predict", trained_run["run"], folder, "--out", out, "--quiet"]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = ["a_first/aa.png", "a_first/zz.jpg", "d_deep/inner/k.png", "m_mid/B.png",
                "m_mid/broken.png", "m_mid/c.jpg", "z_last/a.jpg", "z_last/b.png"]
    assert [Path(r["path"]).relative_to(folder).as_posix() for r in rows] == expected
    by_name = {Path(r["path"]).relative_to(folder).as_posix(): r for r in rows}
    assert by_name["m_mid/broken.png"]["error"] and by_name["m_mid/broken.png"]["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 7
    predicted = trained_run["result"].classifier.predict([r["path"] for r in good])
    assert [r["label"] for r in good] == list(predicted)
