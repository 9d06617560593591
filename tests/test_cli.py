"""The `imagefit` command, run in-process through `main(argv)`: run-folder contents, bad files
and --strict, evaluate, predict, features, option and config errors, and help texts."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TEST_IMAGE_SIZE, make_dataset, tree_digest
from imagefit import load_model, scan_folder
from imagefit.cli.main import main

SIZE = ["--image-size", str(TEST_IMAGE_SIZE)]
CLASSES = ["cat", "dog", "owl"]
RUN_FILES = ["bad_files.csv", "config.yaml", "eval/metrics.json", "eval/predictions.csv",
             "history.csv", "model/model.json", "model/model.safetensors", "split.csv"]
METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece", "n", "classes",
               "confusion_matrix", "per_class"}


def cli(argv) -> int:
    """Run the command as the console script would: argparse exits become return codes."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _bad_dataset(root: Path) -> tuple[Path, Path, Path]:
    data = make_dataset(root, {"cat": 8, "dog": 8, "owl": 6})
    good = (data / "cat" / "cat_000.jpg").read_bytes()
    truncated = data / "cat" / "broken.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    empty = data / "dog" / "empty.jpg"
    empty.write_bytes(b"")
    return data, truncated, empty


# --- train -----------------------------------------------------------------------------------

def test_train_writes_complete_run_folder(dataset, tmp_path, capsys):
    before = tree_digest(dataset)
    run = tmp_path / "run"
    assert cli(["train", dataset, "--out", run, *SIZE, "--epochs", 10, "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert tree_digest(dataset) == before

    header, rows = read_csv(run / "split.csv")
    assert header == ["path", "label", "split", "sha256"]
    assert len(rows) == 29
    assert {r["split"] for r in rows} == {"train", "val"}
    for r in rows:
        assert r["label"] == Path(r["path"]).parent.name
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in dataset.rglob("*.*"))
    n_val = sum(r["split"] == "val" for r in rows)
    for c in CLASSES:  # stratified: every class has a validation image
        assert any(r["split"] == "val" and r["label"] == c for r in rows)

    header, history = read_csv(run / "history.csv")
    assert header == ["epoch", "stage", "train_loss", "val_loss", "val_accuracy",
                      "val_balanced_accuracy", "lr", "seconds"]
    # The default mode fine-tunes: a probe stage on cached features, then --epochs of finetune.
    assert [r["stage"] for r in history][-1] == "finetune"
    assert 1 <= sum(r["stage"] == "finetune" for r in history) <= 10
    for stage in ("probe", "finetune"):  # epochs are numbered within each stage
        epochs = [int(r["epoch"]) for r in history if r["stage"] == stage]
        assert epochs == list(range(1, len(epochs) + 1))

    header, bad = read_csv(run / "bad_files.csv")
    assert header == ["path", "reason", "message"] and bad == []

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 10 and config["image_size"] == TEST_IMAGE_SIZE
    assert config["backbone"] == "efficientnet_lite0" and config["balance"] == "weights"
    assert config["resolved"]["n_val"] == n_val and config["resolved"]["n_train"] == 29 - n_val
    # no --time-budget: a minute per 200 training images on a CPU, at least 3
    assert config["time_budget"] == 3.0 and config["resolved"]["time_budget_requested"] == "auto"

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["n"] == n_val and metrics["classes"] == CLASSES
    header, preds = read_csv(run / "eval" / "predictions.csv")
    assert header == ["path", "true_label", "label", "confidence",
                      *[f"prob_{c}" for c in CLASSES], "error"]
    assert len(preds) == n_val
    assert sorted(p["path"] for p in preds) == sorted(r["path"] for r in rows
                                                      if r["split"] == "val")
    model = json.loads((run / "model" / "model.json").read_text())
    assert model["classes"] == CLASSES and model["image_size"] == TEST_IMAGE_SIZE


def test_train_prints_summary_without_quiet(dataset, tmp_path, capsys):
    assert cli(["train", dataset, "--out", tmp_path / "run", *SIZE, "--epochs", 5]) == 0
    out = capsys.readouterr().out
    assert "Found 29 images in 3 classes: cat (14), dog (9), owl (6)" in out
    assert "Mode: finetune; balance: weights" in out
    assert "Trained with mode finetune, balance weights, augment light" in out
    assert "precision" in out and all(c in out for c in CLASSES)


def test_train_skips_and_lists_bad_files(tmp_path, capsys):
    data, truncated, empty = _bad_dataset(tmp_path / "data")
    before = tree_digest(data)
    run = tmp_path / "run"
    assert cli(["train", data, "--out", run, *SIZE, "--epochs", 10, "--quiet"]) == 0
    _, bad = read_csv(run / "bad_files.csv")
    reasons = {Path(b["path"]).name: b["reason"] for b in bad}
    assert reasons == {"broken.jpg": "truncated", "empty.jpg": "empty"}
    assert all(b["message"] for b in bad)
    _, split = read_csv(run / "split.csv")
    assert len(split) == 22
    assert not {"broken.jpg", "empty.jpg"} & {Path(r["path"]).name for r in split}
    assert (run / "model" / "model.json").is_file()
    assert tree_digest(data) == before


def test_train_strict_stops_on_bad_files(tmp_path, capsys):
    data, truncated, empty = _bad_dataset(tmp_path / "data")
    run = tmp_path / "run"
    code = cli(["train", data, "--out", run, *SIZE, "--epochs", 10, "--strict", "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert str(truncated) in err and str(empty) in err
    assert "nothing was trained" in err
    assert not (run / "model").exists()
    assert not (run / "split.csv").exists()
    _, bad = read_csv(run / "bad_files.csv")  # the details are still written
    assert sorted(Path(b["path"]).name for b in bad) == ["broken.jpg", "empty.jpg"]


def test_config_file_is_honoured_and_cli_wins(dataset, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("epochs: 3\nimage-size: 32\nbalance: none\n")
    run = tmp_path / "run"
    assert cli(["train", dataset, "--out", run, "--config", cfg, "--quiet"]) == 0
    _, history = read_csv(run / "history.csv")
    assert 1 <= sum(r["stage"] == "finetune" for r in history) <= 3
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 3 and config["balance"] == "none"
    assert config["image_size"] == TEST_IMAGE_SIZE
    run2 = tmp_path / "run2"
    assert cli(["train", dataset, "--out", run2, "--config", cfg, "--epochs", 2, "--quiet"]) == 0
    _, history = read_csv(run2 / "history.csv")
    assert sum(r["stage"] == "finetune" for r in history) <= 2
    assert yaml.safe_load((run2 / "config.yaml").read_text())["epochs"] == 2
    run3 = tmp_path / "run3"
    assert cli(["train", dataset, "--out", run3, "--config", cfg, "--time-budget", "none",
                "--quiet"]) == 0
    assert yaml.safe_load((run3 / "config.yaml").read_text())["time_budget"] is None


def test_config_file_unknown_key_exits_2(dataset, tmp_path, capsys):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("epochs: 3\nlearning_rate: 0.1\n")
    code = cli(["train", dataset, "--out", tmp_path / "run", *SIZE, "--config", cfg, "--quiet"])
    assert code == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_file_not_a_mapping_exits_2(dataset, tmp_path, capsys):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("- epochs\n- 3\n")
    assert cli(["train", dataset, "--out", tmp_path / "run", "--config", cfg, "--quiet"]) == 2
    assert "mapping" in capsys.readouterr().err


def test_bad_option_exits_2(dataset, tmp_path, capsys):
    assert cli(["train", dataset, "--mode", "nope", "--out", tmp_path / "run"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli(["train", dataset, "--epochs", "many"]) == 2
    assert cli(["train", dataset, "--no-such-option"]) == 2
    assert cli(["train", dataset, "--time-budget", "soon"]) == 2
    assert "'soon'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_value_is_config_error_exit_2(dataset, tmp_path, capsys):
    code = cli(["train", dataset, "--out", tmp_path / "run", *SIZE, "--epochs", 0, "--quiet"])
    assert code == 2
    assert "'epochs' parameter" in capsys.readouterr().err


def test_missing_data_folder_exits_1(tmp_path, capsys):
    code = cli(["train", tmp_path / "nowhere", "--out", tmp_path / "run", *SIZE, "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and err.startswith("error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("inside", [".", "run", "cat/run"])
def test_out_inside_data_is_refused(dataset, inside, capsys):
    before = tree_digest(dataset)
    out = dataset / inside
    code = cli(["train", dataset, "--out", out, *SIZE, "--epochs", 2, "--quiet"])
    assert code != 0
    assert "inside the dataset" in capsys.readouterr().err
    assert tree_digest(dataset) == before


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_json_and_table(trained_run, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert cli(["evaluate", trained_run["run"], trained_run["test"], "--json", out]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "recall" in printed
    for c in CLASSES:
        assert any(line.startswith(c) for line in printed.splitlines())
    metrics = json.loads(out.read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["n"] == 15 and metrics["classes"] == CLASSES
    assert {c: metrics["per_class"][c]["support"] for c in CLASSES} == dict.fromkeys(CLASSES, 5)
    test = scan_folder(trained_run["test"])
    pred = load_model(trained_run["run"]).predict(test)
    assert metrics["accuracy"] == pytest.approx(float((pred == test.label_names()).mean()))
    assert np.array(metrics["confusion_matrix"]).sum() == 15


# --- predict ---------------------------------------------------------------------------------

def _predict_inputs(trained_run, tmp_path):
    folder = trained_run["test"] / "dog"
    missing = tmp_path / "missing.jpg"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    return folder, missing, bad


def test_predict_csv_keeps_input_order_with_error_rows(trained_run, tmp_path, capsys):
    folder, missing, bad = _predict_inputs(trained_run, tmp_path)
    out = tmp_path / "p.csv"
    code = cli(["predict", trained_run["run"], folder, missing, bad, "--out", out, "--quiet"])
    assert code == 0
    header, rows = read_csv(out)
    assert header[:6] == ["path", "label", "confidence", "prob_cat", "prob_dog", "prob_owl"]
    assert header[-1] == "error"
    folder_files = sorted(str(p) for p in folder.iterdir())
    assert [r["path"] for r in rows] == folder_files + [str(missing), str(bad)]
    expected = load_model(trained_run["run"]).predict_proba(folder_files)
    for r, p in zip(rows[:5], expected):
        assert r["error"] == ""
        np.testing.assert_allclose([float(r[f"prob_{c}"]) for c in CLASSES], p, atol=1e-5)
        assert r["label"] == CLASSES[int(p.argmax())]
        assert float(r["confidence"]) == pytest.approx(p.max(), abs=1e-5)
    assert rows[5]["error"].startswith("io_error")
    assert rows[6]["error"].startswith("unidentified")
    for r in rows[5:]:
        assert r["label"] == "" and r["prob_cat"] == "" and r["confidence"] == ""


def test_predict_top_k_column(trained_run, tmp_path):
    folder, _, _ = _predict_inputs(trained_run, tmp_path)
    out = tmp_path / "p.csv"
    assert cli(["predict", trained_run["run"], folder, "--out", out, "--top-k", 2,
                "--quiet"]) == 0
    header, rows = read_csv(out)
    assert "top_k" in header
    assert len(rows) == 5
    for r in rows:
        entries = [e.split(":") for e in r["top_k"].split(";")]
        assert len(entries) == 2
        assert entries[0][0] == r["label"]
        probs = [float(p) for _, p in entries]
        assert probs[0] >= probs[1]
        for name, p in entries:
            assert float(p) == pytest.approx(float(r[f"prob_{name}"]), abs=1e-4)


def test_predict_top_k_out_of_range_exits_2(trained_run, tmp_path, capsys):
    folder, _, _ = _predict_inputs(trained_run, tmp_path)
    assert cli(["predict", trained_run["run"], folder, "--top-k", 4, "--quiet"]) == 2
    assert "top_k" in capsys.readouterr().err


def test_predict_to_stdout_and_all_failed_exit_1(trained_run, tmp_path, capsys):
    folder, missing, bad = _predict_inputs(trained_run, tmp_path)
    image = sorted(folder.iterdir())[0]
    assert cli(["predict", trained_run["run"], image, missing, "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[0] == str(image) and lines[0].split("\t")[1] in CLASSES
    assert lines[1].startswith(f"{missing}\tERROR\t")
    assert cli(["predict", trained_run["run"], missing, bad, "--quiet"]) == 1


@pytest.mark.parametrize("command", ["evaluate", "predict", "augment"])
def test_an_output_that_cannot_be_written_fails_before_any_work(trained_run, tmp_path, capsys,
                                                                 monkeypatch, command):
    """evaluate --json / predict --out / augment --preview into a missing folder, or onto a
    folder: one line, exit 1, and the work never started (the model is not even loaded)."""
    import imagefit.estimator

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    # (the commands import load_model when they run, from here)
    monkeypatch.setattr(imagefit.estimator, "load_model", no_work)
    run, data = trained_run["run"], trained_run["test"]
    option = {"evaluate": "--json", "predict": "--out", "augment": "--preview"}[command]
    args = {"evaluate": [run, data], "predict": [run, data], "augment": [data]}[command]
    for target, reason in ((tmp_path / "missing" / "out.x", "does not exist"),
                           (tmp_path, "it is a folder")):
        assert cli([command, *args, option, target, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"Cannot write {option} {target}: " in err and reason in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_predict_and_evaluate_use_the_trained_pixel_cap_unless_overridden(trained_run, tmp_path,
                                                                          capsys):
    """model.json's max_pixels is the cap prediction applies (a file training refused is
    refused here too); --max-pixels overrides it."""
    model = Path(shutil.copytree(trained_run["run"] / "model", tmp_path / "model"))
    meta = json.loads((model / "model.json").read_text())
    meta["max_pixels"] = meta["settings"]["max_pixels"] = 1000  # test images are 40x30 = 1,200
    (model / "model.json").write_text(json.dumps(meta))
    assert load_model(model).max_pixels == 1000
    out = tmp_path / "p.csv"
    image = sorted(Path(trained_run["test"]).rglob("*.png"))[0]
    assert cli(["predict", model, image, "--out", out, "--quiet"]) == 1  # every file refused
    assert read_csv(out)[1][0]["error"].startswith("too_large: ")
    assert cli(["predict", model, image, "--out", out, "--max-pixels", 5000, "--quiet"]) == 0
    assert read_csv(out)[1][0]["error"] == ""
    assert cli(["evaluate", model, trained_run["test"], "--json", tmp_path / "m.json",
                "--max-pixels", 5000, "--quiet"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 15
    assert cli(["evaluate", model, trained_run["test"], "--max-pixels", 0, "--quiet"]) == 2
    assert "The 'max_pixels' parameter must be an int >= 1. Got 0 instead." in capsys.readouterr().err


# --- features --------------------------------------------------------------------------------

def test_features_writes_matrix_and_index_and_reuses(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"cat": 5, "dog": 4, "owl": 3}, seed=77)
    before = tree_digest(data)
    out = tmp_path / "feats"
    assert cli(["features", data, "--out", out, *SIZE, "--workers", 0]) == 0
    first_msg = capsys.readouterr().out
    assert "(12 computed, 0 reused)" in first_msg
    features = np.load(out / "features.npy")
    assert features.shape == (12, 1280) and features.dtype == np.float32
    header, rows = read_csv(out / "index.csv")
    assert header == ["path", "label"] and len(rows) == 12
    index = scan_folder(data)
    assert [r["path"] for r in rows] == index.paths.tolist()
    assert [r["label"] for r in rows] == [Path(r["path"]).parent.name for r in rows]
    # Row i holds the features of the file in row i: same as the classifier's own extraction.
    clf_runner_feats = _features_of([rows[0]["path"], rows[-1]["path"]])
    np.testing.assert_allclose(features[[0, -1]], clf_runner_feats, atol=1e-4)
    assert not np.allclose(features[0], features[-1], atol=1e-3)
    header, bad = read_csv(out / "bad_files.csv")
    assert header == ["path", "reason", "message"] and bad == []

    assert cli(["features", data, "--out", out, *SIZE, "--workers", 0]) == 0
    assert "(0 computed, 12 reused)" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "features.npy"), features)
    assert tree_digest(data) == before


def _features_of(paths):
    from imagefit.features.extract import BackboneRunner, compute_features
    from imagefit.models.backbones import create_backbone, preprocessing_for

    runner = BackboneRunner(create_backbone("efficientnet_lite0", image_size=TEST_IMAGE_SIZE),
                            preprocessing_for("efficientnet_lite0", TEST_IMAGE_SIZE),
                            runtime="torch")
    return compute_features(np.array(paths), runner).features


def test_features_skips_bad_files(tmp_path, capsys):
    data, truncated, empty = _bad_dataset(tmp_path / "data")
    out = tmp_path / "feats"
    assert cli(["features", data, "--out", out, *SIZE, "--workers", 0, "--quiet"]) == 0
    assert np.load(out / "features.npy").shape == (22, 1280)
    _, rows = read_csv(out / "index.csv")
    assert len(rows) == 22
    _, bad = read_csv(out / "bad_files.csv")
    assert sorted(Path(b["path"]).name for b in bad) == ["broken.jpg", "empty.jpg"]


def test_features_decodes_each_file_once(tmp_path, monkeypatch):
    """A cold `imagefit features` takes its pixels from the pre-flight, which decodes every file
    anyway: the extraction after it finds every row stored and decodes nothing."""
    from imagefit.features import extract

    decoded = []
    real = extract.iter_image_batches

    def counting(paths, *args, **kwargs):
        decoded.extend(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(extract, "iter_image_batches", counting)
    monkeypatch.setenv("IMAGEFIT_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", {"cat": 5, "dog": 4})
    out = tmp_path / "feats"
    assert cli(["features", data, "--out", out, *SIZE, "--workers", 0, "--quiet"]) == 0
    assert decoded == []
    _, rows = read_csv(out / "index.csv")
    np.testing.assert_allclose(np.load(out / "features.npy")[[0, -1]],
                               _features_of([rows[0]["path"], rows[-1]["path"]]), atol=1e-4)


# --- help ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "features", "demo"])
def test_help_has_examples(command, capsys):
    assert cli([command, "--help"]) == 0
    assert "examples" in capsys.readouterr().out.lower()


def test_top_level_help_and_version(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", "features", "demo"):
        assert command in out
    assert cli(["--version"]) == 0
    assert "imagefit 0.1.0" in capsys.readouterr().out
    assert cli([]) == 2  # a command is required


def test_one_message_channel_info_to_stdout_warnings_to_stderr(dataset, tmp_path, capsys):
    """What the library says goes through the `imagefit` logger, configured by the CLI for one
    command: info lines on stdout, warnings on stderr (also with --quiet), then restored."""
    import logging

    logger = logging.getLogger("imagefit")
    before = (logger.level, logger.propagate, list(logger.handlers))
    argv = ["train", dataset, *SIZE, "--mode", "probe", "--augment", "keras", "--epochs", 3,
            "--no-report"]
    assert cli([*argv, "--out", tmp_path / "a"]) == 0
    out, err = capsys.readouterr()
    probe_warning = "warning: mode 'probe' trains on features computed once per image"
    assert "Found 29 images in 3 classes" in out and "Trained with mode probe" in out
    assert probe_warning in err and "warning:" not in out
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    assert cli([*argv, "--out", tmp_path / "b", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and probe_warning in err
