"""Test-time augmentation and the training settings the model folder carries for prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_IMAGE_SIZE
from imagefit import ImageClassifier, load_image, load_model, scan_folder
from imagefit.cli.main import main
from imagefit.errors import ConfigError


@pytest.fixture(scope="module")
def flip_model(tmp_path_factory):
    from conftest import make_dataset

    base = tmp_path_factory.mktemp("tta")
    data = make_dataset(base / "data", {"cat": 10, "dog": 8, "owl": 6})
    clf = ImageClassifier(mode="finetune", image_size=TEST_IMAGE_SIZE, epochs=2,
                          augment={"horizontal_flip": True}, max_pixels=10_000_000, seed=3)
    clf.fit(scan_folder(data))
    clf.save(base / "model")
    return clf, base, data


def test_model_json_keeps_augment_pixel_cap_and_seed(flip_model):
    clf, base, _ = flip_model
    meta = json.loads((base / "model" / "model.json").read_text())
    assert meta["augment"]["horizontal_flip"] is True and meta["max_pixels"] == 10_000_000
    assert meta["seed"] == 3 and meta["mode"] == "finetune"
    loaded = load_model(base / "model")
    assert loaded.max_pixels == 10_000_000 and loaded.seed == 3
    assert loaded.augment_ == clf.augment_


def test_tta_averages_the_image_and_its_mirror(flip_model, tmp_path):
    clf, base, data = flip_model
    source = sorted((data / "owl").iterdir())[0]
    mirror = tmp_path / "mirror.png"
    Image.open(source).transpose(Image.FLIP_LEFT_RIGHT).save(mirror)
    model = load_model(base / "model")
    plain = model.predict_files([str(source), str(mirror)]).proba
    tta = model.predict_files([str(source)], tta=True).proba
    np.testing.assert_allclose(tta[0], plain.mean(axis=0), atol=1e-4)
    # The mirror really is another input (probabilities may saturate; features do not).
    images = np.stack([load_image(str(p), TEST_IMAGE_SIZE) for p in (source, mirror)])
    features = model.embed(images)
    assert not np.allclose(features[0], features[1], atol=1e-3)


def test_tta_refused_for_a_model_trained_without_flips(dataset):
    clf = ImageClassifier(mode="probe", image_size=TEST_IMAGE_SIZE, epochs=2).fit(
        scan_folder(dataset))
    with pytest.raises(ConfigError, match="without flips"):
        clf.predict_files([str(p) for p in sorted(dataset.rglob("*.png"))[:1]], tta=True)


def test_cli_predict_tta(flip_model, tmp_path, capsys):
    _, base, data = flip_model
    out = tmp_path / "p.csv"
    assert main(["predict", str(base / "model"), str(data / "owl"), "--tta", "--out", str(out),
                 "--quiet"]) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("path,label,confidence")
