"""Regression tests for defects found in review: undecodable names, wrong-shape weights,
parameter validation, exit codes, one-class evaluation, writes into the dataset, CSV decoding,
and warnings the split adds."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

import imagefit
from conftest import TEST_IMAGE_SIZE, make_dataset, make_image
from imagefit.cli.main import main
from imagefit.config import TrainConfig
from imagefit.data.tables import from_table
from imagefit.errors import ConfigError, DatasetError, ModelFormatError
from imagefit.models.backbones import create_backbone
from imagefit.workflows.train import train_run


def test_class_folder_name_that_is_not_utf8_trains_saves_and_reports(tmp_path):
    data = make_dataset(tmp_path / "data", {"cat": 8, "dog": 8})
    latin1 = os.fsdecode(b"caf\xe9")                       # 'caf\udce9' on Linux
    os.rename(data / "dog", data / latin1)
    result = train_run(TrainConfig(data=str(data), out=str(tmp_path / "run"),
                                   image_size=TEST_IMAGE_SIZE, epochs=3),
                       progress=False)
    assert latin1 in result.classifier.classes_
    loaded = imagefit.load_model(tmp_path / "run")
    assert loaded.classes_ == result.classifier.classes_
    assert (tmp_path / "run" / "report" / "index.html").is_file()
    assert main(["report", str(tmp_path / "run"), "--quiet"]) == 0


def test_backbone_weights_of_the_wrong_shape_are_a_model_format_error(tmp_path):
    state = create_backbone("efficientnet_lite0", image_size=32, pretrained=False).state_dict()
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelFormatError, match="does not fit"):
        create_backbone("efficientnet_lite0", image_size=32, weights=path)


def test_negative_workers_is_a_config_error(dataset):
    with pytest.raises(ConfigError, match="'workers'"):
        imagefit.ImageClassifier(image_size=TEST_IMAGE_SIZE, workers=-1).fit(
            imagefit.scan_folder(dataset))


def test_missing_model_is_a_user_error_exit_1(tmp_path, capsys):
    image = make_image(tmp_path / "a.png", (10, 20, 30), seed=0)
    assert main(["predict", str(tmp_path / "no-such-run"), str(image)]) == 1
    assert "No model found" in capsys.readouterr().err


def test_evaluate_a_folder_with_a_single_class(trained_run, tmp_path):
    only = tmp_path / "only"
    shutil.copytree(trained_run["test"] / "cat", only / "cat")
    result = imagefit.evaluate(trained_run["result"].classifier, only)
    assert result.metrics["n"] == len(list((only / "cat").iterdir()))


def test_report_output_inside_the_dataset_is_refused(trained_run, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(trained_run["test"], test)
    before = sorted(p.name for p in test.rglob("*"))
    code = main(["evaluate", str(trained_run["run"]), str(test), "--report",
                 str(test / "report"), "--quiet"])
    assert code == 2
    assert sorted(p.name for p in test.rglob("*")) == before


def test_csv_that_is_not_utf8_and_short_rows(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("path,label\ncaf\xe9.png,cat\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        from_table(bad)
    make_dataset(tmp_path, {"cat": 2, "dog": 2})
    short = tmp_path / "short.csv"
    short.write_text("label,path\ncat,cat/cat_000.jpg\ndog,dog/dog_001.png\ncat\n")
    index = from_table(short, min_classes=2)
    assert len(index) == 2
    assert [b.message for b in index.report.bad_files] == ["row has no path"]


def test_train_prints_the_warnings_the_split_adds(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"cat": 8, "dog": 8})
    source = data / "owl_source.png"
    make_image(source, (0, 0, 250), seed=99)
    (data / "owl").mkdir()
    for i in range(6):  # six copies of one image: no distinct image for validation
        shutil.copy(source, data / "owl" / f"copy{i}.png")
    source.unlink()
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--image-size",
                 str(TEST_IMAGE_SIZE), "--epochs", "2", "--no-report"]) == 0
    assert "warning: Class 'owl' has no validation image" in capsys.readouterr().err


def test_damaged_chunk_that_cannot_be_removed_is_an_error_not_a_hang(tmp_path, monkeypatch):
    import numpy as np

    from imagefit.errors import CacheError
    from imagefit.features.extract import _gather_stored
    from imagefit.features.store import FeatureStore

    store = FeatureStore(tmp_path, "k", dim=2)
    with store.writer() as writer:
        writer.add(["a" * 64], np.ones((1, 2), np.float32))
    npy = next(store.folder.glob("chunk-*.npy"))
    npy.write_bytes(npy.read_bytes()[:-4] + b"\x00\x00\x80\x7f")   # payload no longer matches
    monkeypatch.setattr(FeatureStore, "_discard", lambda self, name: setattr(self, "_locations",
                                                                             None))
    with pytest.raises(CacheError, match="cannot be removed"):
        _gather_stored(store, np.array(["a" * 64]), np.zeros((1, 2), np.float32))
