"""A number per image (issue 12): tables of image -> value read as a regression, the
`ImageRegressor` estimator (standardised targets, probe and fine-tuning, split-conformal
intervals, save and load), and `imagefit train / predict / evaluate` on such a table."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_IMAGE_SIZE, make_dataset, torchrun_train
from imagefit.data.index import ImageIndex, value_strata
from imagefit.data.sources import SourceOptions, open_dataset
from imagefit.errors import ConfigError, DatasetError
from imagefit.regressor import ImageRegressor
from imagefit.train.calibrate import conformal_halfwidth


def make_value_images(folder: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n noisy images whose red level is their value (0 to 100): learnable from features."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    values = rng.uniform(0, 100, n).round(2)
    paths = []
    for i, v in enumerate(values):
        pixels = np.zeros((40, 40, 3))
        pixels[..., 0] = v * 2.4
        pixels[..., 1] = rng.integers(0, 60)
        pixels += rng.normal(0, 8, pixels.shape)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths, values


def write_table(path: Path, rows: list[list], header: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("values")
    paths, values = make_value_images(folder, 90)
    reg = ImageRegressor(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=60,
                         time_budget="none", workers=0)
    reg.fit(paths[:70], values[:70])
    return reg, paths, values


def test_a_table_of_decimals_is_a_regression_and_of_whole_numbers_a_classification(tmp_path):
    paths, values = make_value_images(tmp_path / "img", 12)
    table = write_table(tmp_path / "t.csv", [[p, v] for p, v in zip(paths, values)],
                        ["path", "label"])
    assert not open_dataset(table).is_regression  # classes unless asked: train asks "auto"
    index = open_dataset(table, SourceOptions(task="auto"))
    assert index.is_regression and np.allclose(index.targets, values)
    assert any("Task: regression" in note for note in index.report.notes)
    whole = write_table(tmp_path / "w.csv", [[p, i % 3] for i, p in enumerate(paths)],
                        ["path", "label"])
    classes = open_dataset(whole, SourceOptions(task="auto"))
    assert not classes.is_regression and classes.classes == ("0", "1", "2")
    assert any("--task regress" in note for note in classes.report.notes)
    forced = open_dataset(whole, SourceOptions(task="regress"))
    assert forced.is_regression and forced.targets.tolist() == [i % 3 for i in range(12)]
    assert not open_dataset(table, SourceOptions(task="classify")).is_regression


def test_a_value_that_is_not_a_number_is_an_error_naming_its_line(tmp_path):
    paths, _ = make_value_images(tmp_path / "img", 4)
    table = write_table(tmp_path / "t.csv", [[paths[0], "1.5"], [paths[1], "n/a"],
                                             [paths[2], "inf"], [paths[3], "2"]],
                        ["path", "age"])
    with pytest.raises(DatasetError, match=r"line 3: 'n/a', line 4: 'inf'"):
        open_dataset(table, SourceOptions(task="regress", label_col="age"))
    assert not open_dataset(table, SourceOptions(label_col="age", task="auto")).is_regression
    with pytest.raises(ConfigError, match="from a table"):
        open_dataset(make_dataset(tmp_path / "folder", {"cat": 2, "dog": 2}),
                     SourceOptions(task="regress"))
    with pytest.raises(ConfigError, match="task must be one of"):
        SourceOptions(task="tags")


def test_a_regression_split_spreads_the_range_over_both_sides():
    values = np.arange(200.0)
    labels, names = value_strata(values)
    assert len(names) == 10 and np.bincount(labels).tolist() == [20] * 10
    index = dataclasses.replace(ImageIndex.from_values([f"{i}.png" for i in range(200)], values),
                                sha256=np.array([f"{i:064x}" for i in range(200)]))
    train, val = index.split(0.2, seed=0)
    assert len(val) == 40 and sorted(train.targets.tolist() + val.targets.tolist()) == list(values)
    # every tenth of the range sends its share (a random split could miss the top values)
    assert np.bincount(np.searchsorted(np.arange(20, 200, 20), val.targets, "right")).tolist() \
        == [4] * 10
    with pytest.raises(ConfigError, match="finite"):
        ImageIndex.from_values(["a.png"], [float("nan")])


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_split_conformal_intervals_cover_as_promised(coverage):
    """Exchangeable residuals: over many calibration/test draws, the share of new residuals
    within the half-width is at least the promised coverage (and not far above it)."""
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(400):
        residuals = rng.standard_t(3, size=60)
        q = conformal_halfwidth(residuals[:40], coverage)
        covered.append(np.mean(np.abs(residuals[40:]) <= q))
    assert coverage - 0.01 <= np.mean(covered) <= coverage + 0.06
    assert conformal_halfwidth(np.ones(5), 0.9) == float("inf")  # too few to promise 90 %


def test_the_regressor_learns_the_value_and_its_interval_covers_new_images(fitted):
    reg, paths, values = fitted
    value, lower, upper = reg.predict_interval(paths[70:])
    truth = values[70:]
    assert reg.score(paths[70:], truth) > 0.8
    assert np.all(lower < value) and np.allclose(upper - value, reg.halfwidth_)
    assert np.mean((truth >= lower) & (truth <= upper)) >= 0.75  # 90 % promised, 20 images
    assert reg.history_ and "val_mae" in reg.history_[0]
    assert reg.target_scale_ == pytest.approx(values[:70].std(), rel=0.3)


def test_a_saved_regressor_loads_and_predicts_the_same(fitted, tmp_path):
    import imagefit

    reg, paths, _ = fitted
    folder = reg.save(tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["task"] == "regress" and meta["target"]["loss"] == "mse"
    loaded = imagefit.load_model(folder)
    assert isinstance(loaded, ImageRegressor)
    np.testing.assert_allclose(loaded.predict(paths[70:75]), reg.predict(paths[70:75]),
                               rtol=1e-5)
    assert loaded.halfwidth_ == reg.halfwidth_
    assert loaded.get_params()["interval"] == reg.interval


def test_regressor_parameters_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="loss"):
        ImageRegressor(loss="squared").fit(["a.png"], [1.0])
    with pytest.raises(ConfigError, match="interval"):
        ImageRegressor(interval=1.5).fit(["a.png"], [1.0])
    with pytest.raises(ConfigError, match="values"):
        ImageRegressor().fit(["a.png"])
    with pytest.raises(ConfigError, match="class labels, not values"):
        ImageRegressor().fit(ImageIndex.from_paths(["a.png"], ["cat"]))
    assert ImageRegressor(loss="huber").set_params(interval=0.8).get_params()["interval"] == 0.8


def test_the_loader_keeps_regression_targets_as_floats():
    from imagefit.data.augment import Augmenter
    from imagefit.train.loader import CachedImages, collate_uint8

    image = np.zeros((2, 2, 3), np.uint8)
    _, targets = collate_uint8([(image, 0.25), (None, 1.5), (image, -0.75)])
    assert targets.dtype == torch.float32 and targets.tolist() == [0.25, -0.75]
    _, classes = collate_uint8([(image, 2), (image, 0)])
    assert classes.dtype == torch.int64 and classes.tolist() == [2, 0]
    draws = CachedImages([], [], [], np.array([0.5, -1.25]), Augmenter("none"), seed=0)
    assert draws.labels.dtype == np.float32 and draws.labels.tolist() == [0.5, -1.25]


def test_fine_tuning_a_regression_trains_on_float_targets(tmp_path):
    paths, values = make_value_images(tmp_path / "img", 40, seed=1)
    reg = ImageRegressor(image_size=TEST_IMAGE_SIZE, mode="finetune", epochs=2, loss="huber",
                         time_budget="none", workers=0, batch_size=16)
    reg.fit(paths, values)
    stages = {row["stage"] for row in reg.history_}
    assert stages == {"probe", "finetune"}
    assert all(np.isfinite(row["val_mae"]) for row in reg.history_)
    assert reg.settings_.augment.horizontal_flip is False  # photometric by default
    assert reg.settings_.augment.color_jitter > 0


def _imagefit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("imagefit")), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def value_run(tmp_path_factory):
    """`imagefit train` on a table of 60 images (10 marked test) with an 80 % interval."""
    tmp_path = tmp_path_factory.mktemp("value-run")
    paths, values = make_value_images(tmp_path / "img", 60, seed=2)
    rows = [[Path(p).name, f"{v:.2f}", "test" if i >= 50 else "train"]
            for i, (p, v) in enumerate(zip(paths, values))]
    table = write_table(tmp_path / "img" / "ages.csv", rows, ["file", "age", "split"])
    run = tmp_path / "run"
    done = _imagefit("train", str(table), "--label-col", "age", "--out", str(run),
                     "--image-size", str(TEST_IMAGE_SIZE), "--mode", "probe", "--epochs", "30",
                     "--interval", "0.8", "--loss", "l1")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"run": run, "table": table, "paths": paths, "stdout": done.stdout,
            "tmp": tmp_path}


def test_train_writes_a_regression_run_folder(value_run):
    run = value_run["run"]
    assert "Validation: MAE" in value_run["stdout"]
    assert "80% prediction interval" in value_run["stdout"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "regress" and metrics["interval_promised"] == 0.8
    test = json.loads((run / "test" / "metrics.json").read_text())
    assert test["n"] == 10 and 0 <= test["interval_coverage"] <= 1
    history = (run / "history.csv").read_text().splitlines()[0]
    assert history == "epoch,stage,train_loss,val_loss,val_mae,val_rmse,val_r2,lr,seconds"
    assert "task: regress" in (run / "config.yaml").read_text()
    with open(run / "split.csv", newline="") as f:
        split = list(csv.DictReader(f))
    given = {Path(r[0]).name: float(r[1]) for r in
             csv.reader(value_run["table"].read_text().splitlines()[1:])}
    assert all(float(r["label"]) == given[Path(r["path"]).name] for r in split)  # the values


def test_predict_and_evaluate_a_table_of_values(value_run):
    run, table, tmp_path = value_run["run"], value_run["table"], value_run["tmp"]
    out = tmp_path / "pred.csv"
    done = _imagefit("predict", str(run), str(table), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out, newline="") as f:
        rows_out = list(csv.DictReader(f))
    assert list(rows_out[0])[-5:] == ["path", "value", "lower", "upper", "error"]
    assert len(rows_out) == 60
    assert float(rows_out[0]["lower"]) < float(rows_out[0]["value"]) < float(rows_out[0]["upper"])

    done = _imagefit("evaluate", str(run), str(table), "--label-col", "age", "--json",
                     str(tmp_path / "m.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MAE" in done.stdout and "promised 80%" in done.stdout
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 10  # the test rows

    for command in (["predict", str(run), value_run["paths"][0], "--top-k", "2"],
                    ["predict", str(run), value_run["paths"][0], "--tta"],
                    ["explain", str(run), value_run["paths"][0], "--true-label", "3"]):
        refused = _imagefit(*command)
        assert refused.returncode == 2 and "regression" in refused.stderr


def test_the_report_of_a_regression_shows_its_errors_and_suspicious_values(value_run,
                                                                          tmp_path):
    run, table = value_run["run"], value_run["table"]
    page = (run / "report" / "index.html").read_text()  # train built it
    for text in ("Predicted (y) against true (x)", "Residuals", "Largest over-estimates",
                 "Largest under-estimates", "Most accurate", "Likely label issues"):
        assert text in page
    assert (run / "report" / "label_issues.csv").read_text().splitlines()[0] == \
        "path,given_value,out_of_fold,score"
    # A training value made absurd is found among the label issues.
    with open(run / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    victim = next(r for r in rows if r["split"] == "train")
    victim["label"] = "1000.0"
    with open(tmp_path / "split.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.copy(tmp_path / "split.csv", copy / "split.csv")
    done = _imagefit("report", str(copy), "--data", str(table), "--label-col", "age")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "10 images evaluated" in done.stdout  # the test rows
    with open(copy / "report" / "label_issues.csv", newline="") as f:
        issues = list(csv.DictReader(f))
    assert issues and issues[0]["path"] == victim["path"]


def test_evaluate_report_for_a_regression_run_and_a_bare_model_folder(value_run, tmp_path):
    run, table = value_run["run"], value_run["table"]
    done = _imagefit("evaluate", str(run), str(table), "--label-col", "age", "--report",
                     str(tmp_path / "r1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Likely label issues" in (tmp_path / "r1" / "index.html").read_text()
    import shutil

    shutil.copytree(run / "model", tmp_path / "bare")
    done = _imagefit("evaluate", str(tmp_path / "bare"), str(table), "--label-col", "age",
                     "--report", str(tmp_path / "r2"))
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "r2" / "index.html").read_text()
    assert "Largest over-estimates" in page and "Likely label issues" not in page


def test_explain_draws_where_the_image_raises_the_value(value_run, tmp_path):
    done = _imagefit("explain", str(value_run["run"]), value_run["paths"][4], "--out",
                     str(tmp_path / "why"))
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "why" / "explain.json").read_text())
    import imagefit

    expected = imagefit.load_model(value_run["run"]).predict([value_run["paths"][4]])[0]
    assert doc["prediction"] == pytest.approx(expected, rel=1e-4)
    lower, upper = doc["interval"]
    assert lower < doc["prediction"] < upper and doc["confidence"] is None
    assert "gradcam_value.png" in doc["files"] and (tmp_path / "why" / "input.png").is_file()
    with Image.open(tmp_path / "why" / "gradcam_value.png") as im:
        assert im.size == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_regressor_gives_the_value_and_its_interval(value_run, fmt):
    import imagefit
    from imagefit.data.images import load_image
    from imagefit.export.onnx import export_model

    reg = imagefit.load_model(value_run["run"])
    paths = value_run["paths"][:6]
    result = export_model(reg, value_run["tmp"] / f"model.{fmt}", format=fmt,
                          verify_images=paths)
    assert result.verified_on == "given images" and result.max_abs_diff < 1e-4
    images = np.stack([load_image(p, TEST_IMAGE_SIZE) for p in paths])
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
        assert meta["imagefit.task"] == "regress" and meta["imagefit.interval"] == "0.8"
        got = ort.InferenceSession(str(result.path)).run(None, {"images": images})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(result.path))(torch.from_numpy(images)).numpy()
    expected = reg.predict(paths)
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got[:, 2] - got[:, 0], reg.halfwidth_, rtol=1e-4)


def test_the_service_answers_a_value_with_its_interval(value_run):
    from starlette.testclient import TestClient

    import imagefit
    from imagefit.serve.app import ServeSettings, create_app

    reg = imagefit.load_model(value_run["run"])
    client = TestClient(create_app(reg, ServeSettings()), base_url="http://127.0.0.1:8000")
    assert client.get("/health").json()["task"] == "regress"
    path = value_run["paths"][3]
    answer = client.post("/predict", content=Path(path).read_bytes(),
                         headers={"Content-Type": "image/png"}).json()
    assert answer["value"] == pytest.approx(reg.predict([path])[0], rel=1e-4)
    assert answer["upper"] - answer["value"] == pytest.approx(reg.halfwidth_)
    assert answer["interval"] == 0.8


def test_the_page_shows_a_regressions_value(value_run, tmp_path):
    from selenium.webdriver.common.by import By
    from test_serve import served_page

    import imagefit

    with served_page(value_run["run"], tmp_path) as (driver, wait):
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("a number"))
        path = value_run["paths"][5]
        driver.find_element(By.ID, "file").send_keys(path)
        status = driver.find_element(By.ID, "status")
        wait.until(lambda d: status.get_attribute("data-value")
                   or status.get_attribute("class") == "error")
        assert status.get_attribute("class") != "error", status.text
        expected = imagefit.load_model(value_run["run"]).predict([path])[0]
        assert float(status.get_attribute("data-value")) == pytest.approx(expected, rel=1e-4)
        assert "80% interval" in status.text


def test_class_balancing_options_are_refused_for_a_regression(tmp_path):
    paths, values = make_value_images(tmp_path / "img", 12)
    table = write_table(tmp_path / "t.csv", [[p, v] for p, v in zip(paths, values)],
                        ["path", "value"])
    done = _imagefit("train", str(table), "--task", "regress", "--balance", "sampler",
                     "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "--balance balance classes" in done.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_a_regression_resumes_from_its_checkpoints_and_refuses_another_loss(tmp_path):
    """A finished run resumed with the same settings continues from its checkpoints (nothing is
    retrained: the same history and model); with another loss the checkpoints are refused."""
    from imagefit.errors import ResumeMismatchError

    paths, values = make_value_images(tmp_path / "img", 40, seed=3)
    settings = dict(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=5, time_budget="none",
                    workers=0, checkpoint_dir=str(tmp_path / "ckpt"))
    first = ImageRegressor(**settings).fit(paths, values)
    resumed = ImageRegressor(resume=True, **settings).fit(paths, values)
    assert resumed.history_ == first.history_
    np.testing.assert_array_equal(resumed.predict(paths[:3]), first.predict(paths[:3]))
    with pytest.raises(ResumeMismatchError):
        ImageRegressor(resume=True, loss="l1", **settings).fit(paths, values)


@pytest.mark.slow
def test_torchrun_trains_a_regression_on_two_gloo_ranks(tmp_path):
    """Data-parallel fine-tuning of a regression: float targets through the DDP loader, the
    ridge start and the conformal interval the same on every rank; rank 0 writes the run."""
    paths, values = make_value_images(tmp_path / "img", 40, seed=4)
    table = write_table(tmp_path / "t.csv", [[p, f"{v:.2f}"] for p, v in zip(paths, values)],
                        ["path", "value"])
    run = tmp_path / "run"
    done = torchrun_train(table, run, tmp_path, "--task", "regress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Validation: MAE") == 1  # only rank 0 prints
    history = (run / "history.csv").read_text().splitlines()
    assert sum(",finetune," in line for line in history) == 2
    import imagefit

    reg = imagefit.load_model(run)
    assert np.isfinite(reg.predict(paths[:2])).all()


def test_a_validation_table_and_held_out_top_values_train(tmp_path):
    """A --val table is read as the training table turned out (whole numbers there are values
    too), and test rows holding the largest values leave the rest trainable."""
    paths, values = make_value_images(tmp_path / "img", 50, seed=5)
    order = np.argsort(values)
    rows = [[paths[i], f"{values[i]:.2f}", "test" if rank >= 40 else "train"]
            for rank, i in enumerate(order)]
    table = write_table(tmp_path / "train.csv", rows, ["path", "value", "split"])
    val_paths, val_values = make_value_images(tmp_path / "val", 12, seed=6)
    val = write_table(tmp_path / "val.csv", [[p, int(v)] for p, v in zip(val_paths, val_values)],
                      ["path", "value"])
    done = _imagefit("train", str(table), "--val", str(val), "--out", str(tmp_path / "run"),
                     "--image-size", str(TEST_IMAGE_SIZE), "--mode", "probe", "--epochs", "5",
                     "--no-report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Training on 40 images, validating on 12; 10 test images" in done.stdout
    test = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    assert test["n"] == 10


def test_fit_takes_a_validation_index_and_a_table(tmp_path):
    paths, values = make_value_images(tmp_path / "img", 36, seed=7)
    train, val = ImageIndex.from_values(paths[:24], values[:24]), \
        ImageIndex.from_values(paths[24:], values[24:])
    reg = ImageRegressor(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=3,
                         time_budget="none", workers=0).fit(train, val)
    assert reg.n_val_ == 12 and reg.n_train_ == 24
    table = write_table(tmp_path / "t.csv", [[p, v] for p, v in zip(paths, values)],
                        ["path", "value"])
    assert ImageRegressor(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=2,
                          time_budget="none", workers=0).fit(str(table)).n_train_ > 20
    classes = ImageIndex.from_paths(paths[24:], ["a", "b"] * 6)
    with pytest.raises(ConfigError, match="class labels, not values"):
        ImageRegressor(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=2).fit(train, classes)
    from imagefit.estimator import ImageClassifier

    with pytest.raises(ConfigError, match="both have values"):
        ImageClassifier(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=2).fit(classes, train)


def test_non_finite_metrics_are_json_null_and_large_values_export(tmp_path):
    from imagefit.evaluation.regression import json_text
    from imagefit.export.onnx import export_model

    text = json_text({"r2": float("nan"), "interval_mean_width": float("inf"), "mae": 1.5})
    assert json.loads(text) == {"r2": None, "interval_mean_width": None, "mae": 1.5}
    # Values near 5,000 with a spread of 0.3: a float32 step (5e-4) is 1.7e-3 of the scale.
    paths, values = make_value_images(tmp_path / "img", 30, seed=8)
    reg = ImageRegressor(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=3,
                         time_budget="none", workers=0).fit(paths, values * 0.01 + 5000)
    result = export_model(reg, tmp_path / "m.onnx", verify_images=paths[:4])
    assert result.max_abs_diff < 1e-4
