"""Explaining predictions: stage discovery, activation grids, Grad-CAM (shapes, range, class
dependence, the model left as it was), overlays, `explain_image`'s files and JSON, file names made
safe from hostile class names, and `imagefit explain` in-process."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import imagefit
from conftest import TEST_IMAGE_SIZE, make_dataset
from imagefit.cli.main import main
from imagefit.errors import ConfigError, ImageLoadError
from imagefit.explain import _inside, explain_image, gradcam, overlay, safe_name
from imagefit.explain.activations import JET, MIN_TILE, activation_grid, apply_colormap, find_stages
from imagefit.models.backbones import SimpleCNN

SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture(scope="module")
def data64(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("explain") / "d", {"cat": 8, "dog": 8})


@pytest.fixture(scope="module")
def probe64(data64):
    """EfficientNet-Lite0 at 64 px: its last stages are 2x2, so Grad-CAM has spatial structure."""
    return imagefit.ImageClassifier(image_size=64, epochs=5).fit(imagefit.scan_folder(data64))


@pytest.fixture(scope="module")
def scratch32(data64):
    return imagefit.ImageClassifier(mode="scratch", image_size=32, epochs=2).fit(
        imagefit.scan_folder(data64))


@pytest.fixture
def models(trained_run, probe64, scratch32):
    return {"probe32": trained_run["result"].classifier, "probe64": probe64,
            "scratch32": scratch32}


def image_for(clf, path: Path) -> np.ndarray:
    prep = clf.preprocessing_
    return imagefit.load_image(path, prep.image_size, background=prep.background)


def fresh_copy(clf, folder: Path):
    """An independent copy of a fitted classifier (a save/load round trip), free to alter."""
    return imagefit.load_model(clf.save(folder))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


# --- stages and activation grids ----------------------------------------------------------------

def test_find_stages_of_known_and_other_backbones():
    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    assert [s.name for s in find_stages(lite)] == (
        ["stem"] + [f"block_{i}" for i in range(7)] + ["head"])
    assert find_stages(lite)[1].module is lite.blocks[0]
    assert [s.name for s in find_stages(SimpleCNN(32))] == ["block_0", "block_1", "block_2"]
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert [s.name for s in find_stages(resnet)] == ["act1", "layer1", "layer2", "layer3",
                                                     "layer4"]

    class Listed(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.layers = nn.ModuleList([nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)])

    assert [s.name for s in find_stages(Listed())] == ["layers_0", "layers_1"]
    assert find_stages(nn.Linear(3, 2)) == []


def test_activation_grid_tiles_and_normalises():
    act = np.random.default_rng(0).normal(size=(40, 4, 6)).astype(np.float32)
    act[1] = 7.0  # a constant channel comes out black, not NaN
    grid = activation_grid(act)
    # 32 channels at most: 6 x 6 layout; tiles scaled 12x to 48 x 72, 1-px separators.
    assert grid.dtype == np.uint8 and grid.shape == (6 * 49 - 1, 6 * 73 - 1, 3)
    assert np.all(grid[48, :] == 255) and np.all(grid[:, 72] == 255)
    tile = activation_grid(act[1:2], colormap=None)
    assert tile.shape == (MIN_TILE, 72, 3) and np.all(tile == 0)
    grey = activation_grid(act[:1], colormap=None)
    assert grey.min() == 0 and grey.max() == 255
    with pytest.raises(ConfigError):
        activation_grid(np.zeros((4, 4), np.float32))


def test_colormap_ends_and_range():
    assert apply_colormap(np.array([0.0, 1.0]), JET).tolist() == [[0, 0, 128], [128, 0, 0]]
    assert apply_colormap(np.array([np.nan, -3.0, 9.0]), None).tolist() == [
        [0, 0, 0], [0, 0, 0], [255, 255, 255]]


# --- Grad-CAM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["probe32", "probe64", "scratch32"])
def test_gradcam_shape_dtype_range(models, trained_run, name):
    clf = models[name]
    size = clf.preprocessing_.image_size
    image = image_for(clf, next(Path(trained_run["test"]).glob("cat/*")))
    modes = [m.training for m in clf.net_.modules()]
    for k in range(len(clf.classes_)):
        heatmap = gradcam(clf, image, k)
        assert heatmap.shape == (size, size) and heatmap.dtype == np.float32
        assert np.isfinite(heatmap).all()
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        assert heatmap.max() in (0.0, 1.0)  # normalised by its peak, or empty
    assert [m.training for m in clf.net_.modules()] == modes  # an eval model stays in eval


def test_gradcam_has_structure_and_depends_on_class(probe64, data64):
    image = image_for(probe64, data64 / "cat" / "cat_000.jpg")
    cat, dog = (gradcam(probe64, image, probe64.classes_.index(c)) for c in ("cat", "dog"))
    assert cat.max() > cat.min()  # 2x2 last stage upsampled: not a flat map
    assert not np.allclose(cat, dog)


def test_gradcam_leaves_the_model_as_it_was(probe64, data64):
    net = probe64.net_
    image = image_for(probe64, data64 / "dog" / "dog_001.png")
    head_weight = net.head[1].weight
    head_weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    try:
        before = {n: p.requires_grad for n, p in net.named_parameters()}
        modes = {n: m.training for n, m in net.named_modules()}
        state = {k: v.clone() for k, v in net.state_dict().items()}
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
        first = gradcam(probe64, image, 1)
        with torch.no_grad():  # works inside a caller's no_grad too
            second = gradcam(probe64, image, 1)
        np.testing.assert_array_equal(first, second)  # computed in eval mode: no dropout noise
        assert {n: p.requires_grad for n, p in net.named_parameters()} == before
        for n, p in net.named_parameters():  # no gradient reaches (or piles onto) parameters
            assert (p.grad is None) == (grads[n] is None)
            assert p.grad is None or torch.equal(p.grad, grads[n])
        assert {n: m.training for n, m in net.named_modules()} == modes  # as it was
        assert all(not m._forward_hooks for m in net.modules())
        for stage in find_stages(net.backbone):
            assert not stage.module._forward_hooks
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    finally:
        head_weight.requires_grad_(True)


def test_gradcam_refuses_bad_input(scratch32, data64):
    image = image_for(scratch32, data64 / "cat" / "cat_000.jpg")
    for bad in (image[:16], image.astype(np.float32), image[..., :2]):
        with pytest.raises(ConfigError, match="uint8 array of shape"):
            gradcam(scratch32, bad, 0)
    for index in (-1, 2, True, 0.0):
        with pytest.raises(ConfigError, match="class_index"):
            gradcam(scratch32, image, index)


def test_overlay_blends_jet_over_image():
    image = np.full((8, 8, 3), 100, np.uint8)
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = overlay(image, heat)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0), apply_colormap(heat, JET))
    with pytest.raises(ConfigError):
        overlay(image, heat[:4])
    with pytest.raises(ConfigError):
        overlay(image, heat, alpha=1.5)


# --- explain_image ------------------------------------------------------------------------------

def test_explain_image_writes_everything(trained_run, tmp_path):
    clf = trained_run["result"].classifier
    path = sorted(Path(trained_run["test"]).glob("owl/*"))[0]
    expected = clf.predict_files([path])
    label = clf.classes_[int(expected.proba[0].argmax())]
    other = next(c for c in clf.classes_ if c != label)
    result = explain_image(clf, path, tmp_path / "out", true_label=other)

    out = tmp_path / "out"
    assert result.label == label and result.out_dir == out
    names = [p.relative_to(out).as_posix() for p in result.files]
    assert names[0] == "input.png" and names[-1] == "explain.json"
    assert f"gradcam_pred_{label}.png" in names and f"gradcam_true_{other}.png" in names
    grids = sorted(out.glob("activations/*.png"))
    assert [g.name for g in grids] == sorted(
        ["stage_0_stem.png", "stage_8_head.png"] + [f"stage_{i + 1}_block_{i}.png"
                                                    for i in range(7)])
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(result.files)
    assert png_size(out / "input.png") == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    for grid in grids:
        assert min(png_size(grid)) > 48
    assert png_size(out / f"gradcam_pred_{label}.png") == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)

    doc = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert doc["prediction"] == label and doc["true_label"] == other
    assert list(doc["probabilities"]) == list(clf.classes_)
    np.testing.assert_allclose(list(doc["probabilities"].values()), expected.proba[0],
                               rtol=1e-6)  # calibrated, as predict reports them
    assert doc["confidence"] == pytest.approx(expected.proba[0].max())
    assert doc["files"] == names
    assert doc["stages"][-1]["name"] == "head" and doc["stages"][-1]["shape"][1:] == [1, 1]
    # At 32 px the head is 1x1: the map can only be flat, and the notes say so.
    assert any("Grad-CAM" in note for note in doc["notes"]) and doc["notes"] == result.notes


def test_explain_image_true_label_equal_to_prediction(scratch32, data64, tmp_path):
    path = data64 / "cat" / "cat_002.jpg"
    label = scratch32.predict([path])[0]
    result = explain_image(scratch32, path, tmp_path, true_label=label)
    names = {p.name for p in result.files}
    assert f"gradcam_pred_{label}.png" in names
    assert not any(n.startswith("gradcam_true_") for n in names)
    assert len(list(tmp_path.glob("activations/stage_*_block_*.png"))) == 3


def test_explain_image_refuses_unknown_label_and_bad_image(scratch32, data64, tmp_path):
    with pytest.raises(ConfigError, match="cat, dog"):
        explain_image(scratch32, data64 / "cat" / "cat_000.jpg", tmp_path / "a",
                      true_label="horse")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((data64 / "cat" / "cat_000.jpg").read_bytes()[:100])
    for bad in (broken, tmp_path / "missing.png"):
        with pytest.raises(ImageLoadError):
            explain_image(scratch32, bad, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_explain_image_without_stages_notes_instead_of_crashing(scratch32, data64, tmp_path):
    class Flat(nn.Module):  # no conv stage, no feature_info, no containers
        def __init__(self):
            super().__init__()
            self.flatten = nn.Flatten()
            self.linear = nn.Linear(32 * 32 * 3, 64)
            self.num_features = 64

        def forward(self, x):
            return self.linear(self.flatten(x))

    clf = fresh_copy(scratch32, tmp_path / "model")
    clf.net_.backbone = Flat().eval()
    result = explain_image(clf, data64 / "cat" / "cat_000.jpg", tmp_path / "out")
    assert [p.name for p in result.files] == ["input.png", "explain.json"]
    assert any("activations skipped" in n for n in result.notes)
    assert any("Grad-CAM skipped" in n for n in result.notes)


# --- hostile class names ------------------------------------------------------------------------

HOSTILE = ["../../x", "a/b", "<script>", "nul\x00byte", "x" * 300, "", ".", "..", "..\\..\\y",
           "/etc/passwd", "chat noir", "ünïcødé", "CON", "-rf", ".hidden"]


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_name_keeps_file_names_inside(name, tmp_path):
    safe = safe_name(name)
    assert SAFE.fullmatch(safe) and len(safe) <= 64
    assert safe not in (".", "..") and not safe.startswith(".")
    target = (tmp_path / f"gradcam_pred_{safe}.png").resolve()
    assert target.parent == tmp_path.resolve()
    assert (tmp_path / safe).resolve().parent == tmp_path.resolve()


def test_safe_name_examples_and_inside_check(tmp_path):
    assert safe_name("../../x") == "_._.._x"
    assert safe_name("a/b") == "a_b" and safe_name("<script>") == "_script_"
    assert safe_name("golden retriever") == "golden_retriever"
    assert _inside(tmp_path, "activations/a.png") == tmp_path / "activations" / "a.png"
    with pytest.raises(ConfigError, match="outside"):
        _inside(tmp_path, "../escape.png")


def test_explain_with_hostile_class_names_writes_inside(scratch32, data64, tmp_path):
    clf = fresh_copy(scratch32, tmp_path / "model")
    clf.classes_ = ("../../evil", "<b>/\x00")
    path = data64 / "dog" / "dog_000.jpg"
    predicted = clf.predict([path])[0]
    other = next(c for c in clf.classes_ if c != predicted)
    result = explain_image(clf, path, tmp_path / "out", true_label=other)
    root = (tmp_path / "out").resolve()
    assert all(p.resolve().is_relative_to(root) for p in result.files)
    names = {p.name for p in result.files}
    assert f"gradcam_pred_{safe_name(predicted)}.png" in names
    assert f"gradcam_true_{safe_name(other)}.png" in names
    assert {safe_name(c) for c in clf.classes_} == {"_._.._evil", "_b___"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_explain_writes_files(trained_run, tmp_path, capsys):
    image = sorted(Path(trained_run["test"]).glob("dog/*"))[0]
    out = tmp_path / "why"
    assert cli(["explain", trained_run["run"], image, "--out", out, "--true-label", "owl"]) == 0
    printed = capsys.readouterr().out
    assert "Predicted" in printed and "explain.json" in printed
    assert (out / "explain.json").is_file() and (out / "input.png").is_file()
    assert len(list(out.glob("activations/*.png"))) == 9
    assert list(out.glob("gradcam_pred_*.png"))


def test_cli_explain_default_out_and_quiet(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"] / "model", run / "model")  # keep the shared run clean
    image = tmp_path / "my photo!.png"
    shutil.copy(sorted(Path(trained_run["test"]).glob("cat/*.png"))[0], image)
    assert cli(["explain", run, image, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert (run / "explain" / "my_photo_" / "explain.json").is_file()
    # A model folder works too; its parent takes the explain/ folder.
    assert cli(["explain", run / "model", image, "--quiet"]) == 0


def test_cli_explain_errors(trained_run, tmp_path, capsys):
    image = sorted(Path(trained_run["test"]).glob("cat/*"))[0]
    assert cli(["explain", trained_run["run"], tmp_path / "missing.jpg", "--out", tmp_path / "o",
                "--quiet"]) == 1
    assert "error: io_error" in capsys.readouterr().err
    assert cli(["explain", trained_run["run"], image, "--out", tmp_path / "o",
                "--true-label", "horse"]) == 2
    assert "cat, dog, owl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_explain_help_has_examples(capsys):
    assert cli(["explain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--true-label" in out
