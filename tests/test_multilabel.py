"""Any number of labels per image (issue 12): label sets from lists, 0/1 matrices and tables
(labels joined by a separator, or several 0/1 columns), the split by iterative stratification,
the sigmoid head with per-label calibration and thresholds, and every command on such a table:
train, evaluate, predict, report, export, serve, explain."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_IMAGE_SIZE, torchrun_train
from imagefit.data.index import ImageIndex
from imagefit.data.sources import SourceOptions, open_dataset
from imagefit.errors import ConfigError, DatasetError
from imagefit.estimator import ImageClassifier
from imagefit.evaluation.issues import find_tag_issues
from imagefit.metrics import multilabel_metrics
from imagefit.train.calibrate import best_f1_thresholds, fit_platt, platt_proba

COLOURS = {"red": (0, 230, 20, 20), "blue": (1, 20, 20, 230), "green": (2, 20, 220, 20)}


def make_tag_images(folder: Path, n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n noisy grey images, each with a coloured square per label in its own corner (red
    half of the images, blue 40 %, green 25 %): learnable from frozen features."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, tags = [], []
    for i in range(n):
        pixels = np.full((40, 40, 3), 128.0) + rng.normal(0, 10, (40, 40, 3))
        present = [name for name, share in (("red", 0.5), ("blue", 0.4), ("green", 0.25))
                   if rng.random() < share]
        for name in present:
            corner, *rgb = COLOURS[name]
            y, x = divmod(corner, 2)
            pixels[y * 20 + 2:y * 20 + 18, x * 20 + 2:x * 20 + 18] = rgb
        path = folder / f"img{i:03d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
        tags.append(present)
    return paths, tags


def write_table(path: Path, rows: list[list], header: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _imagefit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("imagefit")), *args],
                          capture_output=True, text=True, timeout=600)


# --- label sets as data -------------------------------------------------------------------


def test_label_lists_and_indicator_matrices_give_the_same_index():
    lists = ImageIndex.from_tags(["a.png", "b.png", "c.png"], [["cat"], ["cat", "dog"], []])
    matrix = ImageIndex.from_tags(["a.png", "b.png", "c.png"],
                                  np.array([[1, 0], [1, 1], [0, 0]]), ["cat", "dog"])
    for index in (lists, matrix):
        assert index.classes == ("cat", "dog") and index.is_multilabel
        assert index.tags.tolist() == [[True, False], [True, True], [False, False]]
        assert index.counts().tolist() == [2, 1]
        assert index.label_names().tolist() == ["cat", "cat|dog", ""]
    assert lists.labels.tolist() == [0, 1, -1]  # the rarest label, for stratified subsets
    unnamed = ImageIndex.from_tags(["a.png"], np.array([[0, 1, 1]]))
    assert unnamed.classes == ("0", "1", "2")


def test_bad_label_sets_are_clear_errors():
    with pytest.raises(ConfigError, match="only 0 and 1"):
        ImageIndex.from_tags(["a.png"], np.array([[0, 2]]))
    with pytest.raises(ConfigError, match="2 paths but 1 label sets"):
        ImageIndex.from_tags(["a.png", "b.png"], [["cat"]])
    with pytest.raises(ConfigError, match="not among the labels"):
        ImageIndex.from_tags(["a.png"], [["cat", "cow"]], ["cat", "dog"])
    with pytest.raises(ConfigError, match="3 columns but 2 label names"):
        ImageIndex.from_tags(["a.png"], np.array([[0, 1, 1]]), ["x", "y"])


def test_tables_of_joined_labels_and_of_0_1_columns_are_multi_label(tmp_path):
    paths, tags = make_tag_images(tmp_path / "img", 12)
    joined = write_table(tmp_path / "joined.csv", [[p, "|".join(t)] for p, t in zip(paths, tags)],
                         ["path", "label"])
    index = open_dataset(joined, SourceOptions(task="auto"))
    assert index.is_multilabel and set(index.classes) <= {"red", "blue", "green"}
    labelled = [set(t) for t in tags if t]
    assert labelled == [set(n.split("|")) for n in index.label_names()]
    assert any("multi-label" in note for note in index.report.notes)
    # An empty cell is a missing annotation, not "no label": reported, never trained on.
    assert sum("has no label" in b.message for b in index.report.bad_files) == 12 - len(labelled)

    semi = write_table(tmp_path / "semi.csv", [[p, " ; ".join(t)] for p, t in zip(paths, tags)],
                       ["path", "tags"])
    index = open_dataset(semi, SourceOptions(task="multilabel", label_col="tags"))
    assert labelled == [set(n.split("|")) for n in index.label_names()]

    columns = write_table(tmp_path / "cols.csv",
                          [[p, int("red" in t), int("blue" in t)] for p, t in zip(paths, tags)],
                          ["path", "red", "blue"])
    index = open_dataset(columns, SourceOptions(task="auto", label_col="red,blue"))
    assert index.classes == ("red", "blue")
    assert index.tags[:, 0].tolist() == ["red" in t for t in tags]
    assert len(index) == 12  # rows without any label stay: all 0 is a label set too

    custom = write_table(tmp_path / "custom.csv", [[p, "+".join(t) or "red"]
                                                  for p, t in zip(paths, tags)],
                         ["path", "label"])
    index = open_dataset(custom, SourceOptions(task="auto", label_sep="+"))
    assert index.is_multilabel == any(len(t) > 1 for t in tags)


def test_table_mistakes_name_what_to_fix(tmp_path):
    paths, _ = make_tag_images(tmp_path / "img", 4)
    table = write_table(tmp_path / "t.csv", [[p, 1, "yes"] for p in paths], ["path", "a", "b"])
    with pytest.raises(DatasetError, match="must hold 0 or 1.*line 2 column 'b': 'yes'"):
        open_dataset(table, SourceOptions(task="auto", label_col="a,b"))
    with pytest.raises(ConfigError, match="multi-label task; use --task multilabel"):
        open_dataset(table, SourceOptions(task="classify", label_col="a,b"))
    with pytest.raises(ConfigError, match="reads each image's labels from a table"):
        open_dataset(tmp_path / "img", SourceOptions(task="multilabel"))


def test_the_split_keeps_every_label_on_both_sides_and_duplicates_together():
    rng = np.random.default_rng(0)
    tags = rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.04, 0.03]
    hashes = np.array([f"h{i // 2 if i < 40 else i}" for i in range(200)])  # 20 duplicate pairs
    index = ImageIndex(np.array([f"{i}.png" for i in range(200)]), np.zeros(200, np.int64),
                       tuple("abcdef"), sha256=hashes, tags=tags, checked=True)
    train, val = index.split(0.25, seed=1)
    assert len(train) + len(val) == 200
    assert (train.counts() > 0).all() and (val.counts() > 0).all()
    shares = val.counts() / index.counts()
    assert np.abs(shares - 0.25).max() < 0.1
    assert not set(train.sha256.tolist()) & set(val.sha256.tolist())


# --- calibration, thresholds, label issues ------------------------------------------------


def test_platt_scaling_calibrates_each_label_and_thresholds_maximise_f1():
    rng = np.random.default_rng(0)
    truth = rng.random((4000, 2)) < [0.3, 0.6]
    logits = np.where(truth, 2.0, -2.0) * 3 + rng.normal(0, 6, truth.shape)  # overconfident
    a, b = fit_platt(logits, truth)
    proba = platt_proba(logits, a, b)
    for k in range(2):
        high = proba[:, k] > 0.8
        assert truth[high, k].mean() == pytest.approx(proba[high, k].mean(), abs=0.05)
        assert proba[:, k].mean() == pytest.approx(truth[:, k].mean(), abs=0.02)
    thresholds = best_f1_thresholds(proba, truth)
    def f1(k, t):
        pred = proba[:, k] >= t
        return 2 * (pred & truth[:, k]).sum() / (pred.sum() + truth[:, k].sum())

    for k in range(2):
        assert f1(k, thresholds[k]) >= max(f1(k, t) for t in np.linspace(0.05, 0.95, 19)) - 1e-9
    assert fit_platt(logits[:, :1], np.zeros((4000, 1), bool)) == ([1.0], [0.0])


def test_confident_learning_per_label_finds_flipped_tags():
    rng = np.random.default_rng(1)
    truth = rng.random((300, 3)) < 0.4
    proba = np.where(truth, rng.uniform(0.5, 1.0, truth.shape), rng.uniform(0, 0.4, truth.shape))
    proba[[5, 17, 40], [0, 0, 2]] = np.where(truth[[5, 17, 40], [0, 0, 2]], 0.97, 0.03)
    given = truth.copy()
    given[[5, 17], 0] = ~given[[5, 17], 0]
    given[40, 2] = ~given[40, 2]
    found = find_tag_issues(given, proba)
    flagged = set(zip(found.rows.tolist(), found.labels.tolist()))
    assert {(5, 0), (17, 0), (40, 2)} <= flagged
    assert len(flagged) <= 8
    for row, label, missing in zip(found.rows, found.labels, found.missing):
        assert missing == (not given[row, label])


# --- the estimator ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tags")
    paths, tags = make_tag_images(folder, 100)
    clf = ImageClassifier(image_size=48, mode="probe", epochs=100, time_budget="none",
                          workers=0)  # 32 px blurs the squares: the features need 48
    clf.fit(paths[:80], tags[:80])
    return clf, paths, tags


def test_fit_on_label_lists_learns_each_label(tagger):
    clf, paths, tags = tagger
    assert clf.multilabel_ and set(clf.classes_) == {"red", "blue", "green"}
    truth = np.array([[c in t for c in clf.classes_] for t in tags[80:]])
    predicted = clf.predict(paths[80:])
    assert predicted.shape == truth.shape and set(np.unique(predicted)) <= {0, 1}
    assert (predicted == truth).mean() > 0.8  # thresholds chosen on 16 validation images
    proba = clf.predict_proba(paths[80:])
    assert multilabel_metrics(truth, proba, clf.classes_)["map"] > 0.9
    assert proba.shape == truth.shape and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(axis=1), 1.0)  # independent labels, not a softmax
    assert clf.score(paths[80:], tags[80:]) > 0.8
    assert clf.thresholds_.shape == (3,) and ((clf.thresholds_ > 0) & (clf.thresholds_ < 1)).all()


def test_a_saved_multi_label_model_loads_and_predicts_the_same(tagger, tmp_path):
    import imagefit

    clf, paths, _ = tagger
    folder = clf.save(tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["task"] == "multilabel"
    assert set(meta["multilabel"]) >= {"platt_a", "platt_b", "thresholds", "pos_weight"}
    loaded = imagefit.load_model(folder)
    assert loaded.multilabel_ and loaded.classes_ == clf.classes_
    np.testing.assert_allclose(loaded.predict_proba(paths[:5]), clf.predict_proba(paths[:5]),
                               atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(paths[:5]), clf.predict(paths[:5]))


def test_an_indicator_matrix_and_a_fixed_threshold(tagger):
    _, paths, tags = tagger
    matrix = np.array([[int(c in t) for c in ("red", "blue", "green")] for t in tags[:60]])
    clf = ImageClassifier(image_size=TEST_IMAGE_SIZE, mode="probe", epochs=10,
                          time_budget="none", workers=0, threshold=0.4)
    clf.fit(paths[:60], matrix)
    assert clf.classes_ == ("0", "1", "2")  # scikit-learn's columns, unnamed
    np.testing.assert_array_equal(clf.thresholds_, [0.4, 0.4, 0.4])
    np.testing.assert_array_equal(clf.predict(paths[:4]),
                                  (clf.predict_proba(paths[:4]) >= 0.4).astype(int))


def test_options_that_balance_classes_are_refused_for_label_sets(tagger):
    _, paths, tags = tagger
    for option in ({"balance": "sampler"}, {"class_weight": "balanced"},
                   {"logit_adjustment": 1.0}, {"max_per_class": 5}):
        with pytest.raises(ConfigError, match="multi-label model weighs each label"):
            ImageClassifier(image_size=TEST_IMAGE_SIZE, workers=0, **option).fit(
                paths[:20], tags[:20])
    with pytest.raises(ConfigError, match="'threshold' parameter must be 'auto' or"):
        ImageClassifier(image_size=TEST_IMAGE_SIZE, workers=0, threshold=1.5).fit(
            paths[:20], tags[:20])
    with pytest.raises(ConfigError, match="applies to multi-label data"):
        ImageClassifier(image_size=TEST_IMAGE_SIZE, workers=0, threshold=0.5).fit(
            paths[:20], ["a", "b"] * 10)


def test_fine_tuning_trains_on_label_rows_and_resumes(tmp_path):
    """The image stage's loader carries 0/1 rows; a finished run resumed with the same
    settings continues from its checkpoints (the same history)."""
    paths, tags = make_tag_images(tmp_path / "img", 40, seed=3)
    settings = dict(image_size=TEST_IMAGE_SIZE, mode="finetune", epochs=2, time_budget="none",
                    workers=0, batch_size=8, checkpoint_dir=str(tmp_path / "ckpt"))
    first = ImageClassifier(**settings).fit(paths, tags)
    assert any(row["stage"] == "finetune" for row in first.history_)
    assert all(np.isfinite(row["train_loss"]) for row in first.history_)
    resumed = ImageClassifier(resume=True, **settings).fit(paths, tags)
    assert resumed.history_ == first.history_


# --- the commands -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory):
    """`imagefit train` on a table of 70 images with labels joined by |, 10 marked test."""
    tmp_path = tmp_path_factory.mktemp("tag-run")
    paths, tags = make_tag_images(tmp_path / "img", 70, seed=2)
    rows = [[Path(p).name, "|".join(t), "test" if i >= 60 else "train"]
            for i, (p, t) in enumerate(zip(paths, tags))]
    table = write_table(tmp_path / "img" / "tags.csv", rows, ["file", "tags", "split"])
    run = tmp_path / "run"
    done = _imagefit("train", str(table), "--label-col", "tags", "--out", str(run),
                     "--image-size", "48", "--mode", "probe", "--epochs", "100")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"run": run, "table": table, "paths": paths, "tags": tags, "stdout": done.stdout,
            "stderr": done.stderr, "tmp": tmp_path}


def test_train_writes_a_multi_label_run_folder(tag_run):
    run = tag_run["run"]
    assert "Task: multi-label" in tag_run["stderr"] + tag_run["stdout"]
    assert "mAP" in tag_run["stdout"] and "threshold" in tag_run["stdout"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["map"] > 0.8
    test_metrics = json.loads((run / "test" / "metrics.json").read_text())
    n_test = sum(1 for t in tag_run["tags"][60:] if t)  # a row with an empty cell is skipped
    assert test_metrics["n"] == n_test and {"micro_f1", "samples_f1", "hamming_loss",
                                        "subset_accuracy", "ece"} <= set(test_metrics)
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].split(",")[4:6] == ["val_map", "val_macro_f1"]
    with open(run / "split.csv") as f:
        split = list(csv.DictReader(f))
    assert any("|" in row["label"] for row in split)
    config = (run / "config.yaml").read_text()
    assert "task: multilabel" in config and "thresholds:" in config


def test_predict_and_evaluate_a_table_of_label_sets(tag_run, tmp_path):
    run, table = tag_run["run"], tag_run["table"]
    out = tmp_path / "p.csv"
    done = _imagefit("predict", str(run), str(table), "--path-col", "file", "--out", str(out),
                     "--top-k", "2")
    assert done.returncode == 0, done.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["file", "tags", "split"]
    assert {"path", "labels", "prob_red", "prob_blue", "top_k", "error"} <= set(rows[0])
    hits = [set(r["labels"].split("|")) - {""} == set(r["tags"].split("|")) - {""}
            for r in rows]
    assert np.mean(hits) > 0.8
    assert all(len(r["top_k"].split(";")) == 2 for r in rows)

    done = _imagefit("predict", str(run), tag_run["paths"][0], tag_run["paths"][1])
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2

    out_json = tmp_path / "m.json"
    done = _imagefit("evaluate", str(run), str(table), "--path-col", "file",
                     "--label-col", "tags", "--json", str(out_json))
    assert done.returncode == 0, done.stderr
    n_test = sum(1 for t in tag_run["tags"][60:] if t)
    assert f"Evaluating the {n_test} rows" in done.stdout and "mAP" in done.stdout
    metrics = json.loads(out_json.read_text())
    assert metrics["n"] == n_test and set(metrics["per_label"]) == {"red", "blue", "green"}


def test_the_report_of_a_multi_label_run(tag_run, tmp_path):
    report = tag_run["run"] / "report"
    page = (report / "index.html").read_text()
    for text in ("Label co-occurrence", "Most confident positives", "Positives it missed",
                 "Confident false positives", "Likely label issues", "mAP"):
        assert text in page
    with open(report / "label_issues.csv") as f:
        assert next(csv.reader(f)) == ["path", "label", "issue", "score"]
    done = _imagefit("report", str(tag_run["run"]), "--data", str(tag_run["table"]),
                     "--path-col", "file", "--label-col", "tags", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    n_test = sum(1 for t in tag_run["tags"][60:] if t)
    assert f"({n_test} images evaluated" in done.stdout
    assert "evaluated on " + f"{n_test} test images" in (tmp_path / "r" / "index.html").read_text()


def test_export_serve_and_explain_a_multi_label_model(tag_run, tmp_path):
    import onnx
    import onnxruntime as ort
    from starlette.testclient import TestClient

    import imagefit
    from imagefit.data.images import load_image
    from imagefit.serve.app import ServeSettings, create_app

    run, path = tag_run["run"], tag_run["paths"][3]
    clf = imagefit.load_model(run)
    expected = clf.predict_proba([path])[0]
    done = _imagefit("export", str(run), "--out", str(tmp_path / "m.onnx"))
    assert done.returncode == 0, done.stderr
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["imagefit.task"] == "multilabel"
    assert json.loads(meta["imagefit.thresholds"]) == pytest.approx(clf.thresholds_.tolist())
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    image = load_image(path, clf.preprocessing_.image_size)[None]
    np.testing.assert_allclose(session.run(None, {"images": image})[0][0], expected, atol=1e-4)

    client = TestClient(create_app(clf, ServeSettings()), base_url="http://127.0.0.1:8000")
    assert client.get("/health").json()["task"] == "multilabel"
    answer = client.post("/predict", content=Path(path).read_bytes(),
                         headers={"Content-Type": "image/png"}).json()
    assert answer["labels"] == [c for c, p, t in zip(clf.classes_, expected, clf.thresholds_)
                                if p >= t]
    assert answer["probabilities"]["red"] == pytest.approx(expected[clf.classes_.index("red")],
                                                           abs=1e-4)

    out = tmp_path / "why"
    done = _imagefit("explain", str(run), path, "--label", "green", "--out", str(out))
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "explain.json").read_text())
    assert doc["prediction"] == answer["labels"]
    assert (out / "gradcam_label_green.png").is_file()
    assert all((out / f"gradcam_pred_{name}.png").is_file() for name in answer["labels"])


@pytest.mark.slow
def test_torchrun_trains_label_sets_on_two_gloo_ranks(tmp_path):
    """Data-parallel fine-tuning on label sets: 0/1 rows through the DDP loader; the
    calibration and thresholds the same on every rank; rank 0 writes the run."""
    paths, tags = make_tag_images(tmp_path / "img", 40, seed=4)
    table = write_table(tmp_path / "t.csv", [[p, "|".join(t) or "none"]
                                             for p, t in zip(paths, tags)], ["path", "label"])
    run = tmp_path / "run"
    done = torchrun_train(table, run, tmp_path, "--task", "multilabel")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Validation metrics") == 1  # only rank 0 prints
    history = (run / "history.csv").read_text().splitlines()
    assert sum(",finetune," in line for line in history) == 2
    import imagefit

    clf = imagefit.load_model(run)
    assert clf.multilabel_ and np.isfinite(clf.predict_proba(paths[:2])).all()


# --- what scikit-learn users pass, and edge cases -----------------------------------------


def test_the_shapes_of_y_that_mean_label_sets_and_those_that_do_not(tmp_path):
    import pandas as pd

    from imagefit.data.sources import as_index, is_multilabel_y

    assert not is_multilabel_y(np.array([[0], [1], [2]]))  # a column: one label per image
    assert not is_multilabel_y(["cat", "dog"]) and not is_multilabel_y(pd.Series(["a", "b"]))
    assert is_multilabel_y(np.array([[0, 1], [1, 1]]))
    assert is_multilabel_y(pd.Series([["cat"], ["cat", "dog"]]))
    assert is_multilabel_y(pd.DataFrame({"x": [0, 1], "y": [True, True]}))
    ragged = np.array([["cat"], ["cat", "dog"]], dtype=object)
    index = as_index(["a.png", "b.png"], ragged, folder=tmp_path)
    assert index.classes == ("cat", "dog") and index.tags.tolist() == [[True, False], [True, True]]
    frame = as_index(["a.png", "b.png"], pd.DataFrame({"x": [0, 1], "y": [True, True]}),
                     folder=tmp_path)
    assert frame.classes == ("x", "y") and frame.tags.tolist() == [[False, True], [True, True]]
    with pytest.raises(ConfigError, match="hold '\\|'"):
        ImageIndex.from_tags(["a.png"], [["rock|pop"]])


def test_a_label_without_validation_positives_undoes_its_positive_weight():
    logits = np.zeros((10, 2))
    tags = np.zeros((10, 2), bool)
    tags[:4, 0] = True
    a, b = fit_platt(logits, tags, pos_weight=np.array([3.0, 20.0]))
    assert a[1] == 1.0 and b[1] == pytest.approx(-np.log(20.0))
    assert platt_proba(np.array([[0.0, np.log(20.0)]]), a, b)[0, 1] == pytest.approx(0.5)


def test_nested_non_finite_metrics_are_json_null():
    from imagefit.evaluation.regression import json_text

    metrics = multilabel_metrics(np.array([[1, 0], [1, 0]]), np.array([[0.9, 0.1], [0.8, 0.2]]),
                                 ["a", "b"])
    doc = json.loads(json_text(metrics))  # strict: no NaN literal
    assert doc["per_label"]["b"]["ap"] is None and doc["per_label"]["a"]["ap"] == 1.0


def test_score_reads_a_table_as_label_sets_and_a_comma_column_stays_one(tagger, tmp_path):
    clf, paths, tags = tagger
    table = write_table(tmp_path / "t.csv", [[p, "|".join(t)] for p, t in zip(paths[80:], tags[80:])
                                             if t], ["path", "label"])
    assert clf.score(str(table)) > 0.7
    named = write_table(tmp_path / "n.csv", [[p, "x"] for p in paths[:3]], ["path", "kind, final"])
    index = open_dataset(named, SourceOptions(label_col="kind, final"), min_classes=1)
    assert index.classes == ("x",) and not index.is_multilabel


def test_the_page_shows_a_multi_label_models_labels(tag_run, tmp_path):
    from selenium.webdriver.common.by import By
    from test_serve import served_page

    import imagefit

    with served_page(tag_run["run"], tmp_path) as (driver, wait):
        wait.until(lambda d: "any number per image" in d.find_element(By.ID, "model").text)
        path = next(p for p, t in zip(tag_run["paths"], tag_run["tags"]) if len(t) >= 2)
        driver.find_element(By.ID, "file").send_keys(path)
        status = driver.find_element(By.ID, "status")
        wait.until(lambda d: status.get_attribute("data-labels") is not None
                   or status.get_attribute("class") == "error")
        assert status.get_attribute("class") != "error", status.text
        clf = imagefit.load_model(tag_run["run"])
        proba = clf.predict_proba([path])[0]
        expected = [c for c, p, t in zip(clf.classes_, proba, clf.thresholds_) if p >= t]
        assert status.get_attribute("data-labels") == "|".join(expected)
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars li")
        assert len(bars) == len(clf.classes_)  # every label's probability, not a top 5
