"""`ImageClassifier`: the scikit-learn contract, parameter validation, fitting in both modes,
calibration, and the same probabilities at training time and at prediction time."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score

from conftest import TEST_IMAGE_SIZE, make_dataset
import imagefit
from imagefit import ImageClassifier, load_model, scan_folder
from imagefit.data.sampling import balanced_class_weights
from imagefit.errors import (
    BackboneUnavailableError,
    ConfigError,
    ImagefitError,
    ImageLoadError,
    NotFittedError,
)

CLASSES = ("cat", "dog", "owl")


def _fast(**params) -> ImageClassifier:
    params.setdefault("image_size", TEST_IMAGE_SIZE)
    params.setdefault("epochs", 10)
    params.setdefault("time_budget", "none")  # epoch counts must not depend on the load
    return ImageClassifier(**params)


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


# --- parameters ------------------------------------------------------------------------------

def test_init_stores_params_only():
    clf = ImageClassifier("simple_cnn", mode="x", epochs=0, lr=-1.0, device="tpu", seed=7)
    params = clf.get_params()
    assert params["backbone"] == "simple_cnn" and params["mode"] == "x"
    assert params["epochs"] == 0 and params["lr"] == -1.0 and params["device"] == "tpu"
    assert params["seed"] == 7
    assert set(vars(clf)) == set(params)  # nothing else is set, nothing validated
    assert not any(name.endswith("_") for name in vars(clf))


def test_get_params_round_trip_and_clone():
    clf = ImageClassifier("efficientnet_lite0", image_size=64, epochs=5, lr=0.01, dropout=0.3,
                          balance="none", val_fraction=0.3, seed=3, workers=0)
    params = clf.get_params()
    assert ImageClassifier(**params).get_params() == params
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert "epochs=5" in repr(clf) and "mode" not in repr(clf)  # only changed params shown


def test_set_params():
    clf = ImageClassifier()
    assert clf.set_params(epochs=4, mode="scratch") is clf
    assert clf.epochs == 4 and clf.mode == "scratch"
    with pytest.raises(ConfigError, match="Invalid parameter 'epoch'") as info:
        clf.set_params(epoch=3)
    assert "epochs" in str(info.value)  # lists the valid names
    assert not hasattr(clf, "epoch")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "predict_files", "score",
                                    "save", "proba_from_features"])
def test_use_before_fit_raises_not_fitted(tmp_path, method):
    clf = ImageClassifier()
    args = {"predict": (["x.png"],), "predict_proba": (["x.png"],),
            "predict_files": (["x.png"],), "score": (["x.png"], ["cat"]),
            "save": (tmp_path / "m",),
            "proba_from_features": (np.zeros((1, 1280), np.float32),)}[method]
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(clf, method)(*args)
    assert issubclass(NotFittedError, AttributeError) and issubclass(NotFittedError, ValueError)
    assert not hasattr(clf, "classes_")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("params,message", [
    ({"mode": "x"}, r"The 'mode' parameter must be one of \['auto', 'probe', 'finetune', 'scratch'\]\. "
                    r"Got 'x' instead\."),
    ({"epochs": 0}, r"The 'epochs' parameter must be an int in \[1, 100000\]\. Got 0 instead\."),
    ({"epochs": 2.5}, r"The 'epochs' parameter must be an int"),
    ({"epochs": True}, r"The 'epochs' parameter must be an int"),
    ({"lr": -1}, r"The 'lr' parameter must be a float in \[1e-08, 10\.0\]\. Got -1 instead\."),
    ({"dropout": 1.5}, r"The 'dropout' parameter must be a float"),
    ({"batch_size": 0}, r"The 'batch_size' parameter must be an int"),
    ({"seed": -1}, r"The 'seed' parameter must be an int"),
    ({"device": "tpu"}, r"The 'device' parameter must be one of \['auto', 'cpu', 'cuda'\]\. "
                        r"Got 'tpu' instead\."),
    ({"balance": "x"}, r"The 'balance' parameter must be one of"),
    ({"image_size": 8}, r"The 'image_size' parameter must be an int in \[16, 1024\]"),
    ({"val_fraction": 1.5}, r"The 'val_fraction' parameter must be a float in \(0, 1\)"),
])
def test_bad_params_raise_config_error(dataset, params, message):
    clf = _fast(**params)
    with pytest.raises(ConfigError, match=message):
        clf.fit(scan_folder(dataset))
    assert not hasattr(clf, "net_")


def test_probe_needs_a_pretrained_backbone(dataset):
    with pytest.raises(ConfigError, match="no pretrained weights"):
        _fast(backbone="simple_cnn", mode="probe").fit(scan_folder(dataset))


def test_simple_cnn_size_must_be_multiple_of_8(dataset):
    with pytest.raises(ConfigError, match="multiple of 8"):
        _fast(mode="scratch", image_size=36).fit(scan_folder(dataset))


def test_simple_cnn_default_size_is_one_it_accepts():
    from imagefit.models.backbones import preprocessing_for

    assert preprocessing_for("simple_cnn").image_size % 8 == 0  # was 150: --mode scratch failed


def test_unknown_backbone_is_config_error(dataset):
    with pytest.raises(ConfigError, match="Unknown backbone 'no_such_net_xyz'"):
        _fast(backbone="no_such_net_xyz").fit(scan_folder(dataset))


def test_offline_timm_backbone_mentions_weights_option(dataset, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE when first imported, which may precede conftest's
    # setting of it; make sure the hub is offline so this never touches (or waits on) a network.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneUnavailableError) as info:
        _fast(backbone="resnet18").fit(scan_folder(dataset))
    assert isinstance(info.value, ImagefitError)
    assert "--weights" in str(info.value) and "resnet18" in str(info.value)


# --- fitting ---------------------------------------------------------------------------------

def test_fit_probe_sets_fitted_attributes(dataset):
    index = scan_folder(dataset)
    clf = _fast(mode="probe", epochs=15)
    assert clf.fit(index) is clf
    assert clf.classes_ == CLASSES
    assert clf.temperature_ > 0 and np.isfinite(clf.temperature_)
    assert float(clf.net_.temperature) == pytest.approx(clf.temperature_)
    assert 1 <= len(clf.history_) <= 15
    assert [row["epoch"] for row in clf.history_] == list(range(1, len(clf.history_) + 1))
    assert 1 <= clf.best_epoch_ <= len(clf.history_)
    # cat 14 / owl 6 is over the 1.5 ratio: "auto" turns class weights on.
    assert clf.balance_ == "weights"
    train_counts = np.bincount(
        index.with_hashes().take(~np.isin(index.paths, clf.validation_[0].paths)).labels,
        minlength=3)
    np.testing.assert_allclose(clf.class_weight_, balanced_class_weights(train_counts))
    assert clf.n_train_ + clf.n_val_ == len(index) == 29
    assert clf.backbone_name_ == "efficientnet_lite0"
    assert clf.preprocessing_.image_size == TEST_IMAGE_SIZE
    assert clf.bad_files_ == []
    # The features are what the head sees: predict_proba agrees with the head on them.
    pred = clf.predict(_files(dataset))
    assert set(pred) <= set(CLASSES)
    assert (pred == np.array(index.label_names())).mean() >= 0.8  # easy, separable colours


def test_fit_balance_none_uses_unit_weights(dataset):
    clf = _fast(balance="none").fit(scan_folder(dataset))
    assert clf.balance_ == "none"
    np.testing.assert_array_equal(clf.class_weight_, np.ones(3))


def test_fit_positional_train_val(dataset, tmp_path):
    val_root = make_dataset(tmp_path / "val", {"cat": 3, "dog": 3, "owl": 3}, seed=5)
    train, val = scan_folder(dataset), scan_folder(val_root)
    clf = _fast().fit(train, val)
    assert clf.n_train_ == len(train) == 29
    assert clf.n_val_ == len(val) == 9
    assert sorted(clf.validation_[0].paths.tolist()) == _files(val_root)
    # The keyword form gives the same model.
    same = _fast().fit(train, val=val)
    files = _files(val_root)
    np.testing.assert_allclose(same.predict_proba(files), clf.predict_proba(files), atol=1e-6)


def test_fit_paths_and_labels(dataset):
    index = scan_folder(dataset)
    clf = _fast().fit(index.paths.tolist(), index.label_names().tolist())
    assert clf.classes_ == CLASSES
    assert clf.n_train_ + clf.n_val_ == 29


def test_scratch_mode_trains_simple_cnn_and_predicts(dataset, tmp_path):
    clf = _fast(mode="scratch", epochs=3).fit(scan_folder(dataset))
    assert clf.backbone_name_ == "simple_cnn"
    assert len(clf.history_) == 3 and {r["stage"] for r in clf.history_} == {"scratch"}
    assert clf.temperature_ > 0
    files = _files(dataset)
    proba = clf.predict_proba(files)
    assert proba.shape == (29, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(files), np.array(CLASSES)[proba.argmax(axis=1)])
    # A scratch model survives the model folder too.
    loaded = load_model(clf.save(tmp_path / "scratch-model"))
    assert loaded.backbone_name_ == "simple_cnn"
    np.testing.assert_allclose(loaded.predict_proba(files), proba, atol=1e-5)


def test_same_seed_same_model(dataset):
    files = _files(dataset)[:6]
    a = _fast(seed=1).fit(scan_folder(dataset)).predict_proba(files)
    b = _fast(seed=1).fit(scan_folder(dataset)).predict_proba(files)
    np.testing.assert_array_equal(a, b)


# --- prediction ------------------------------------------------------------------------------

def test_temperature_changes_confidence_not_argmax(trained_run):
    clf = load_model(trained_run["run"])  # a private copy: we change its temperature
    feats = clf.embed(_files(trained_run["test"]))
    argmaxes, confidences = [], []
    for t in (0.2, 1.0, 5.0):
        clf.net_.temperature.fill_(t)
        proba = clf.proba_from_features(feats)
        argmaxes.append(proba.argmax(axis=1))
        confidences.append(proba.max(axis=1).mean())
    for a in argmaxes[1:]:
        np.testing.assert_array_equal(a, argmaxes[0])
    assert confidences[0] > confidences[1] > confidences[2]


def test_training_eval_predictions_equal_predict_time(trained_run):
    """The probabilities written at training time (eval/predictions.csv) are the ones the saved
    model gives for the same files at prediction time."""
    with open(trained_run["run"] / "eval" / "predictions.csv", newline="",
              encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == trained_run["result"].classifier.n_val_ > 0
    paths = [r["path"] for r in rows]
    stored = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    preds = load_model(trained_run["run"]).predict_files(paths)
    assert preds.ok.all()
    np.testing.assert_allclose(preds.proba, stored, atol=1e-5, rtol=0)
    assert [r["label"] for r in rows] == [CLASSES[i] for i in preds.proba.argmax(axis=1)]
    assert all(r["error"] == "" for r in rows)
    assert all(r["true_label"] == Path(r["path"]).parent.name for r in rows)


def test_predict_files_error_rows_keep_order(trained_run, tmp_path):
    clf = trained_run["result"].classifier
    good = _files(trained_run["test"])[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    missing = tmp_path / "missing.png"
    paths = [good[0], str(missing), good[1], str(bad), str(missing), good[0]]
    preds = clf.predict_files(paths)
    assert preds.paths.tolist() == paths
    assert preds.ok.tolist() == [True, False, True, False, False, True]
    assert preds.errors[1].startswith("io_error") and preds.errors[4].startswith("io_error")
    assert preds.errors[3].startswith("unidentified")
    assert np.isnan(preds.proba[[1, 3, 4]]).all()
    np.testing.assert_array_equal(preds.proba[5], preds.proba[0])
    np.testing.assert_allclose(preds.proba[[0, 2]], clf.predict_proba(good), atol=1e-6)
    with pytest.raises(ImageLoadError) as info:
        clf.predict_proba([good[0], str(bad)])
    assert info.value.reason == "unidentified" and "bad.jpg" in str(info.value)


def test_score_is_balanced_accuracy(trained_run):
    clf = trained_run["result"].classifier
    test = scan_folder(trained_run["test"])
    pred = clf.predict(test)
    expected = balanced_accuracy_score(test.label_names(), pred)
    assert clf.score(test) == pytest.approx(expected)
    assert clf.score(test.paths.tolist(), test.label_names().tolist()) == pytest.approx(expected)
    assert expected >= 0.8  # separable colours: the probe does learn


def test_fit_paths_without_labels_is_a_clear_config_error(dataset):
    paths = sorted(str(p) for p in dataset.rglob("*.png"))
    with pytest.raises(ConfigError, match="without labels"):
        ImageClassifier(image_size=TEST_IMAGE_SIZE).fit(paths)


def test_fit_on_a_split_index_runs_the_preflight(dataset, monkeypatch):
    """README's Python example, `index.split()` then `fit(train, val)`: the split adds hashes,
    which once passed for "pre-flighted" and skipped the pre-flight and its hang watchdog."""
    from imagefit.train import stages

    broken = dataset / "dog" / "dog_broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    checked = []
    real = stages.preflight

    def spy(index, **kwargs):
        checked.append(len(index))
        return real(index, **kwargs)

    monkeypatch.setattr(stages, "preflight", spy)
    index = scan_folder(dataset)
    train, val = index.split(0.2, seed=0)
    assert not train.checked and train.sha256 is not None
    clf = _fast(epochs=2).fit(train, val)
    assert checked == [len(train), len(val)]
    assert [b.reason for b in clf.bad_files_ if b.path == str(broken)] == ["truncated"]
    assert str(broken) not in clf.validation_[0].paths
    # An index that went through the pre-flight is not checked twice.
    checked.clear()
    pre = imagefit.preflight(index, image_size=TEST_IMAGE_SIZE).index
    assert pre.checked
    _fast(epochs=1).fit(*pre.split(0.2, seed=0))
    assert checked == []


def test_a_probe_on_features_streamed_from_the_store_trains_as_one_held_in_memory(
        dataset, monkeypatch):
    """Past IN_MEMORY_FEATURES the probe reads its rows from the feature store a window at a
    time instead of gathering them: the same rows in the same order, so the same head."""
    from imagefit.train import stages

    def fit():
        return ImageClassifier(mode="probe", image_size=TEST_IMAGE_SIZE, epochs=5,
                               time_budget="none", workers=0).fit(imagefit.scan_folder(dataset))

    held = fit()
    monkeypatch.setattr(stages, "IN_MEMORY_FEATURES", 0)
    monkeypatch.setattr(stages, "WINDOW_ROWS", 20)  # windows of one batch; validation in 20s
    streamed = fit()
    for a, b in zip(held.net_.head.parameters(), streamed.net_.head.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in held.history_],
                               [r["val_loss"] for r in streamed.history_], atol=1e-5)
