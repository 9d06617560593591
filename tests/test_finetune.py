"""Fine-tuning, the training loop's schedule, checkpoints and resume: the lower backbone stays
bit-identical while the top stage learns, learning rates fall from head to lower stages, batch-norm
stays frozen, a time budget stops each stage, and a run interrupted after an epoch continues to
the same weights and history as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TEST_IMAGE_SIZE, make_dataset
from imagefit import ImageClassifier, scan_folder
from imagefit.data.augment import PRESETS, Augmenter
from imagefit.errors import CacheError, ConfigError
from imagefit.models.backbones import create_backbone
from imagefit.train import stages as stages_module
from imagefit.train.checkpoint import Checkpointer
from imagefit.train.engine import LoopHooks, LoopSettings, fit_loop, lr_factor
from imagefit.train.finetune import (MIN_BATCH_FOR_BN, STAGE_LR_DECAY, TOP_STAGE_LR, TopNet,
                                     default_unfreeze, param_groups, split_backbone)
from imagefit.train.loader import shuffled_indices
from imagefit.train.settings import (check_estimator_params, resolve_settings,
                                     resolve_time_budget)

COUNTS = {"cat": 14, "dog": 9, "owl": 6}  # the `dataset` fixture's classes
LOWER_PREFIXES = ("conv_stem.", "bn1.", *(f"blocks.{i}." for i in range(6)))
TOP_PREFIXES = ("blocks.6.", "conv_head.", "bn2.")


def finetuner(**params) -> ImageClassifier:
    # No time budget unless a test sets one: epoch counts must not depend on the machine's load.
    params = {"mode": "finetune", "image_size": TEST_IMAGE_SIZE, "epochs": 4, "augment": "keras",
              "workers": 0, "time_budget": "none", **params}
    return ImageClassifier(**params)


def fresh_backbone() -> nn.Module:
    return create_backbone("efficientnet_lite0", image_size=TEST_IMAGE_SIZE, pretrained=True)


def rows(history) -> list[tuple[str, int]]:
    return [(r["stage"], r["epoch"]) for r in history]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.name.encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory, _session_cache) -> Path:
    """The `dataset` fixture's images, once per module (fine-tuning runs share it)."""
    return make_dataset(tmp_path_factory.mktemp("finetune") / "data", COUNTS)


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    """Pretrained weights, never trained (tests may change requires_grad, not values)."""
    return fresh_backbone()


class Collect(logging.Handler):
    """The messages one `imagefit.*` logger says while it is attached."""

    def __init__(self, name: str):
        super().__init__()
        self.messages: list[str] = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory):
    """An uninterrupted fine-tuning run with checkpoints: (classifier, checkpoint folder,
    the warnings its settings said)."""
    folder = tmp_path_factory.mktemp("run-a") / "checkpoints"
    with Collect("imagefit.train.settings") as messages:
        clf = finetuner(checkpoint_dir=str(folder)).fit(scan_folder(data))
    return clf, folder, messages


# --- the estimator -------------------------------------------------------------------------------

def test_finetune_runs_probe_then_finetune(run_a):
    clf, _, messages = run_a
    assert clf.mode_ == "finetune" and clf.unfreeze_ == 1 == default_unfreeze(clf.n_train_)
    assert clf.augment_ == PRESETS["keras"]
    stages = [stage for stage, _ in rows(clf.history_)]
    n_probe = stages.count("probe")
    assert n_probe >= 1 and stages == ["probe"] * n_probe + ["finetune"] * 4
    assert rows(clf.history_)[n_probe:] == [("finetune", e) for e in (1, 2, 3, 4)]
    assert [e for _, e in rows(clf.history_)[:n_probe]] == list(range(1, n_probe + 1))
    # class weights alone (balance "auto" on a 14/9/6 split) are no stacked correction
    assert clf.balance_ == "weights"
    assert not [m for m in messages if "balance='sampler'" in m]


def test_finetune_keeps_the_lower_backbone_bit_identical(run_a, backbone):
    clf, _, _ = run_a
    before = backbone.state_dict()  # never trained: the pretrained weights
    after = clf.net_.backbone.state_dict()
    assert before.keys() == after.keys()
    lower = [k for k in after if k.startswith(LOWER_PREFIXES)]
    top = [k for k in after if k.startswith(TOP_PREFIXES)]
    assert len(lower) > 100 and len(top) > 10
    for key in lower:
        assert torch.equal(before[key], after[key]), key
    changed = [k for k in top if not torch.equal(before[k], after[k])]
    assert "conv_head.weight" in changed and any(k.startswith("blocks.6.") for k in changed)
    # With batches of at least MIN_BATCH_FOR_BN, the unfrozen stage's batch-norm statistics
    # adapt (the lower part's, checked above, never do).
    assert clf.batch_size >= MIN_BATCH_FOR_BN
    assert "bn2.running_mean" in changed and "blocks.6.0.bn1.running_var" in changed


def test_checkpoint_files_load_with_weights_only(run_a, backbone):
    clf, folder, _ = run_a
    assert sorted(p.name for p in folder.iterdir()) == ["finetune.pt", "probe.pt"]
    state = torch.load(folder / "finetune.pt", map_location="cpu", weights_only=True)
    assert state["format"] == 1 and state["epoch"] == 4 and state["done"] is True
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3, 4]
    upper = split_backbone(backbone, 1).upper.state_dict()
    assert set(state["model"]) == {f"upper.{k}" for k in upper} | {"head.1.weight",
                                                                    "head.1.bias"}
    # the best weights were restored into the model at the end
    torch.testing.assert_close(state["best_state"]["head.1.weight"],
                               clf.net_.head[1].weight, rtol=0, atol=0)
    probe = torch.load(folder / "probe.pt", map_location="cpu", weights_only=True)
    assert probe["done"] is True and probe["fingerprint"] == state["fingerprint"]


def test_training_into_a_folder_with_checkpoints_needs_resume(run_a, data):
    _, folder, _ = run_a
    digest = folder_digest(folder)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        finetuner(checkpoint_dir=str(folder)).fit(scan_folder(data))
    assert folder_digest(folder) == digest


def test_resume_refuses_a_checkpoint_of_other_settings(run_a, data):
    _, folder, _ = run_a
    digest = folder_digest(folder)
    with pytest.raises(CacheError, match="different settings"):
        finetuner(checkpoint_dir=str(folder), resume=True, lr=5e-4).fit(scan_folder(data))
    assert folder_digest(folder) == digest


def test_resume_after_an_interruption_matches_the_uninterrupted_run(run_a, data, tmp_path,
                                                                   monkeypatch):
    clf_a, _, _ = run_a
    folder = tmp_path / "checkpoints"
    save = Checkpointer.save
    finetune_saves = []

    def save_then_interrupt(self, stage, state):
        save(self, stage, state)  # the checkpoint is written, then the process "dies"
        if stage == "finetune":
            finetune_saves.append(state["epoch"])
            if len(finetune_saves) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetuner(checkpoint_dir=str(folder)).fit(scan_folder(data))
    monkeypatch.undo()
    saved = torch.load(folder / "finetune.pt", weights_only=True)
    assert finetune_saves == [1, 2] and saved["epoch"] == 2 and saved["done"] is False

    clf_b = finetuner(checkpoint_dir=str(folder), resume=True).fit(scan_folder(data))
    # no lost or repeated epoch, in either stage
    assert rows(clf_b.history_) == rows(clf_a.history_)
    for a, b in zip(clf_a.history_, clf_b.history_):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-7)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5, abs=1e-7)
    # epochs 1-2 were not run again: their rows are the checkpoint's, timings included
    b_finetune = [r for r in clf_b.history_ if r["stage"] == "finetune"]
    assert b_finetune[:2] == saved["history"]
    assert clf_b.best_epoch_ == clf_a.best_epoch_
    state_a, state_b = clf_a.net_.state_dict(), clf_b.net_.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=0, atol=1e-6, msg=key)
    paths = scan_folder(data).paths[::4]
    np.testing.assert_allclose(clf_b.predict_proba(paths), clf_a.predict_proba(paths), atol=1e-6)


def test_resume_refuses_a_checkpoint_after_the_augment_file_changed(data, tmp_path):
    spec = tmp_path / "aug.yaml"
    spec.write_text("preset: keras\n", encoding="utf-8")
    folder = tmp_path / "checkpoints"
    # time_budget is not part of the fingerprint; 0 keeps this run to one epoch per stage
    finetuner(augment=str(spec), checkpoint_dir=str(folder), time_budget=0).fit(
        scan_folder(data))
    spec.write_text("preset: strong\nrotation_range: 90\n", encoding="utf-8")
    with pytest.raises(CacheError, match="different settings"):
        finetuner(augment=str(spec), checkpoint_dir=str(folder), resume=True,
                  time_budget=0).fit(scan_folder(data))


@pytest.fixture(scope="module")
def budget_run(data):
    """One short run: a balanced sampler with balancing class weights on top (a stacked
    correction) and a time budget of 0. Returns (classifier, label arrays the sampler was built
    with, the settings' warnings, engine log messages)."""
    built = []

    class SpySampler(stages_module.BalancedSampler):
        def __init__(self, labels, **kwargs):
            super().__init__(labels, **kwargs)
            built.append(np.asarray(labels).copy())

    with pytest.MonkeyPatch.context() as patch, Collect("imagefit.train.engine") as logged, \
            Collect("imagefit.train.settings") as messages:
        patch.setattr(stages_module, "BalancedSampler", SpySampler)
        clf = finetuner(balance="sampler", class_weight="balanced",
                        time_budget=0).fit(scan_folder(data))
    return clf, built, messages, logged


def test_time_budget_zero_stops_each_stage_after_one_epoch(budget_run, data):
    clf, _, _, logged = budget_run
    assert rows(clf.history_) == [("probe", 1), ("finetune", 1)]
    assert [m for m in logged if m.startswith("Time budget reached")] == [
        "Time budget reached after epoch 1 of probe; keeping the best epoch (1).",
        "Time budget reached after epoch 1 of finetune; keeping the best epoch (1)."]
    proba = clf.predict_proba(scan_folder(data).paths[:5])  # a usable model
    assert proba.shape == (5, 3) and np.isfinite(proba).all()
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_sampler_is_used_and_stacked_weights_warn(budget_run):
    clf, built, messages, _ = budget_run
    assert clf.balance_ == "sampler"
    assert len(built) == 4  # per stage: does an epoch draw a subset?, then its draws
    assert all(len(labels) == clf.n_train_ for labels in built)
    stacked = [m for m in messages if "balance='sampler' with class_weight='balanced'" in m]
    assert len(stacked) == 1
    assert clf.class_weight_.tolist() != [1.0, 1.0, 1.0]  # what was asked for, warned about


def test_scratch_trains_on_augmented_draws(data, monkeypatch):
    calls = []
    sample = Augmenter.sample

    def counting_sample(self, rng, shape):
        calls.append(tuple(shape))
        return sample(self, rng, shape)

    monkeypatch.setattr(Augmenter, "sample", counting_sample)
    clf = ImageClassifier("simple_cnn", mode="scratch", image_size=TEST_IMAGE_SIZE, epochs=2,
                          augment="keras", workers=0, time_budget="none").fit(scan_folder(data))
    assert clf.mode_ == "scratch" and clf.unfreeze_ is None
    assert clf.augment_ == PRESETS["keras"]
    assert rows(clf.history_) == [("scratch", 1), ("scratch", 2)]
    # one fresh draw per training image and epoch, at the working size; none for validation
    assert len(calls) == 2 * clf.n_train_
    assert set(calls) == {(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)}
    proba = clf.predict_proba(scan_folder(data).paths[:4])
    assert proba.shape == (4, 3) and np.isfinite(proba).all()


def batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_scratch_mode_trains_batchnorm_statistics(data):
    clf = ImageClassifier("test_efficientnet", mode="scratch", image_size=TEST_IMAGE_SIZE,
                          epochs=1, augment="none", workers=0).fit(scan_folder(data))
    norms = batchnorms(clf.net_.backbone)
    assert len(norms) > 5
    assert all(int(m.num_batches_tracked) > 0 for m in norms)
    assert all(float(m.running_mean.abs().max()) > 0 for m in norms)


def test_scratch_mode_with_small_batches_still_trains_batchnorm(data):
    clf = ImageClassifier("test_efficientnet", mode="scratch", image_size=TEST_IMAGE_SIZE,
                          epochs=1, batch_size=8, augment="none", workers=0).fit(
        scan_folder(data))
    assert all(int(m.num_batches_tracked) > 0 for m in batchnorms(clf.net_.backbone))


def test_finetune_survives_a_last_batch_of_one_image(run_a, data):
    n_train = run_a[0].n_train_
    assert n_train - 1 >= MIN_BATCH_FOR_BN  # same split; batches of n - 1 and 1
    clf = finetuner(batch_size=n_train - 1, time_budget=0).fit(scan_folder(data))
    assert clf.n_train_ == n_train
    assert rows(clf.history_) == [("probe", 1), ("finetune", 1)]


# --- finetune building blocks --------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3])
def test_split_backbone_leaves_only_the_top_stages_trainable(backbone, n):
    net = backbone
    split = split_backbone(net, n)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    top_blocks = tuple(f"blocks.{i}." for i in range(7 - n, 7))
    expected = {name for name, _ in net.named_parameters()
                if name.startswith(top_blocks + ("conv_head.", "bn2."))}
    assert trainable == expected
    assert len(split.stages) == n
    assert not any(p.requires_grad for p in split.lower.parameters())
    staged = [id(p) for group in split.stages for p in group]
    assert len(staged) == len(set(staged)) == len(expected)
    # the top stage (first group) holds the last block plus the final conv and its norm
    assert {id(p) for p in net.conv_head.parameters()} <= set(map(id, split.stages[0]))
    # the two halves compose to the whole backbone
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(split.upper(split.lower(x)), net(x), atol=1e-5, rtol=1e-5)


def test_split_backbone_rejects_bad_unfreeze(backbone):
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ConfigError, match="'unfreeze'"):
            split_backbone(backbone, bad)


def test_split_backbone_of_a_generic_module_uses_top_children():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.Linear(6, 2))
    split = split_backbone(net, 2)
    assert split.lower is None and split.upper is net
    assert [list(map(id, g)) for g in split.stages] == [
        [id(net[3].weight), id(net[3].bias)], [id(net[2].weight), id(net[2].bias)]]
    assert not net[0].weight.requires_grad and net[2].weight.requires_grad


def test_param_group_rates_fall_from_head_to_lower_stages(backbone):
    head = nn.Linear(backbone.num_features, 3)
    split = split_backbone(backbone, 3)
    groups = param_groups(head, split, lr=1e-3)
    lrs = [g["lr"] for g in groups]
    assert len(lrs) == 4 and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs == pytest.approx([1e-3, 1e-3 * TOP_STAGE_LR, 1e-3 * TOP_STAGE_LR * STAGE_LR_DECAY,
                                 1e-3 * TOP_STAGE_LR * STAGE_LR_DECAY ** 2])
    ids = lambda params: [id(p) for p in params]
    assert ids(groups[0]["params"]) == ids(head.parameters())
    assert [ids(g["params"]) for g in groups[1:]] == [ids(stage) for stage in split.stages]


def test_default_unfreeze_rule():
    assert [default_unfreeze(n) for n in (1, 1999, 2000, 19_999, 20_000, 10**6)] == \
        [1, 1, 2, 2, 3, 3]


def test_topnet_train_keeps_batchnorm_in_eval_mode():
    upper = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2))
    top = TopNet(upper, head)
    bn = upper[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    assert top.train() is top
    assert top.training and upper[0].training and head[0].training
    assert not bn.training
    top(torch.randn(8, 3, 6, 6) * 5 + 3)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    top.eval()
    assert not any(m.training for m in top.modules())
    top.train(True)
    assert not bn.training and head[0].training


def test_topnet_train_bn_trains_only_unfrozen_batchnorm():
    frozen_bn, trainable_bn = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    frozen_bn.requires_grad_(False)
    upper = nn.Sequential(nn.Conv2d(3, 4, 3), frozen_bn, trainable_bn, nn.AdaptiveAvgPool2d(1),
                          nn.Flatten())
    top = TopNet(upper, nn.Linear(4, 2), train_bn=True).train()
    assert trainable_bn.training and not frozen_bn.training
    frozen_stats = frozen_bn.running_mean.clone()
    top(torch.randn(8, 3, 6, 6) * 5 + 3)
    assert torch.equal(frozen_bn.running_mean, frozen_stats)
    assert int(trainable_bn.num_batches_tracked) == 1
    assert not TopNet(upper, nn.Linear(4, 2)).train().upper[2].training  # default: frozen


# --- the schedule ---------------------------------------------------------------------------------

def test_lr_factor_warms_up_linearly_then_decays_to_zero():
    s = LoopSettings(epochs=5, lr=1.0, patience=1, stage="x", schedule="cosine", warmup_steps=4,
                     steps_per_epoch=10)
    factors = [lr_factor(step, s) for step in range(50)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    decay = factors[4:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert factors[-1] < 0.01 and lr_factor(50, s) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(200, s) == pytest.approx(0.0, abs=1e-12)  # stays at the end
    # cosine: halfway through the decay the factor is one half
    assert lr_factor(4 + 23, s) == pytest.approx(0.5)
    assert [lr_factor(step, s) for step in range(50)] == factors  # a pure function of the step


def test_lr_factor_constant_and_without_warmup():
    constant = LoopSettings(epochs=3, lr=1.0, patience=1, stage="x")
    assert {lr_factor(step, constant) for step in range(30)} == {1.0}
    s = LoopSettings(epochs=2, lr=1.0, patience=1, stage="x", schedule="cosine", steps_per_epoch=4)
    assert lr_factor(0, s) == 1.0 and lr_factor(4, s) == pytest.approx(0.5)


# --- the loop and checkpoints, on a tiny model ---------------------------------------------------

def _tiny_problem():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(48, 6)).astype(np.float32))
    y = torch.from_numpy((x[:, 0] > 0).long().numpy() + (x[:, 1] > 1).long().numpy())
    xv = torch.from_numpy(rng.normal(size=(16, 6)).astype(np.float32))
    yv = ((xv[:, 0] > 0).long() + (xv[:, 1] > 1).long()).numpy()
    return x, y, xv, yv


def _tiny_fit(checkpointer, epochs=6, time_budget_s=None):
    x, y, xv, yv = _tiny_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    settings = LoopSettings(epochs=epochs, lr=0.05, patience=100, stage="tiny",
                            schedule="cosine", warmup_steps=3, steps_per_epoch=6,
                            weight_decay=1e-3, time_budget_s=time_budget_s)
    batches = lambda epoch, first: ((x[b], y[b]) for b in torch.from_numpy(shuffled_indices(48, 1)(epoch)).split(8)[first:])
    history, best = fit_loop(model, batches, lambda: model(xv), yv, 3, settings,
                             hooks=LoopHooks(checkpointer=checkpointer))
    return model, history, best


def test_fit_loop_resume_is_exact(tmp_path):
    model_a, history_a, best_a = _tiny_fit(Checkpointer(tmp_path / "a", "fp"))

    class Interrupting(Checkpointer):
        def save(self, stage, state):
            super().save(stage, state)
            if state["epoch"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(Interrupting(tmp_path / "b", "fp"))
    torch.manual_seed(123)  # the resumed process starts from another RNG state
    model_b, history_b, best_b = _tiny_fit(Checkpointer(tmp_path / "b", "fp"))
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert [r["epoch"] for r in history_b] == [1, 2, 3, 4, 5, 6]
    assert strip(history_b) == strip(history_a) and best_b == best_a
    for key, value in model_a.state_dict().items():
        assert torch.equal(model_b.state_dict()[key], value), key
    # a finished stage is not trained again
    model_c, history_c, _ = _tiny_fit(Checkpointer(tmp_path / "b", "fp"))
    assert history_c == history_b
    for key, value in model_b.state_dict().items():
        assert torch.equal(model_c.state_dict()[key], value), key


def test_fit_loop_time_budget_zero_runs_one_epoch():
    _, history, best = _tiny_fit(None, time_budget_s=0.0)
    assert [r["epoch"] for r in history] == [1] and best == 1


def test_fit_loop_fits_a_decaying_schedule_to_the_time_budget():
    x, y, xv, yv = _tiny_problem()
    model = nn.Sequential(nn.Linear(6, 3))
    settings = LoopSettings(epochs=40, lr=0.05, patience=100, stage="tiny", schedule="cosine",
                            warmup_steps=2, steps_per_epoch=2, time_budget_s=1.5)

    def slow_batches(epoch, first):  # an epoch of about 0.25 s: 6 of the 40 fit the budget
        time.sleep(0.25)
        return ((x[b], y[b]) for b in torch.arange(48).split(24)[first:])

    history, _ = fit_loop(model, slow_batches, lambda: model(xv), yv, 3, settings)
    assert 2 <= len(history) <= 8
    # the schedule ran to its end within the budget, not cut off at a high learning rate
    assert history[-1]["lr"] < 0.1 * settings.lr
    # it stopped after the first epoch to end past the budget, never later
    assert sum(r["seconds"] for r in history[:-1]) < 1.5


def test_auto_augmentation_by_mode_and_training_set_size():
    def augment(mode, n, spec="auto"):
        params = ImageClassifier(mode=mode, augment=spec).get_params()
        return resolve_settings(params, np.array([n // 2, n - n // 2]), ("a", "b")).augment

    assert augment("finetune", 1_000) == PRESETS["light"]
    assert augment("scratch", 1_000) == PRESETS["light"]
    assert augment("scratch", 20_000) == PRESETS["none"]  # many images: epochs matter more
    assert augment("scratch", 20_000, "keras") == PRESETS["keras"]  # asked for: used
    assert augment("probe", 1_000).is_identity


def test_resolve_time_budget():
    assert resolve_time_budget("auto", 2_000, "cpu") == 10.0
    assert resolve_time_budget("auto", 50, "cpu") == 3.0
    assert resolve_time_budget("auto", 10**6, "cpu") == 30.0
    assert resolve_time_budget("auto", 2_000, "cuda") is None
    assert resolve_time_budget("none", 2_000, "cpu") is None
    assert resolve_time_budget(None, 2_000, "cpu") is None
    assert resolve_time_budget(2, 2_000, "cuda") == 2.0
    with pytest.raises(ConfigError, match="time_budget"):
        check_estimator_params(ImageClassifier(time_budget="soon").get_params())
    with pytest.raises(ConfigError, match="time_budget"):
        check_estimator_params(ImageClassifier(time_budget=-1).get_params())


def test_fit_loop_restores_the_best_epoch():
    model, history, best = _tiny_fit(None, epochs=6)
    scores = [(r["val_balanced_accuracy"], -r["val_loss"]) for r in history]
    assert best == 1 + max(range(len(scores)), key=lambda i: (scores[i], -i))
    x, y, xv, yv = _tiny_problem()
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(xv), torch.from_numpy(yv)).item()
    assert loss == pytest.approx(history[best - 1]["val_loss"], rel=1e-4)


def test_checkpointer_refuses_other_settings_and_damaged_files(tmp_path):
    ckpt = Checkpointer(tmp_path, "abc")
    assert ckpt.load("s") is None
    ckpt.save("s", {"epoch": 2, "model": {"w": torch.ones(2)}})
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["epoch"] == 2 and state["fingerprint"] == "abc"
    assert Checkpointer(tmp_path, "abc").load("s")["epoch"] == 2
    with pytest.raises(CacheError, match="different settings"):
        Checkpointer(tmp_path, "xyz").load("s")
    (tmp_path / "t.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CacheError, match="unreadable"):
        ckpt.load("t")
    torch.save({"epoch": 1}, tmp_path / "u.pt")
    with pytest.raises(CacheError, match="not an imagefit checkpoint"):
        ckpt.load("u")
    assert not list(tmp_path.glob(".tmp-*"))  # saves are atomic: no temp file left
    reader = Checkpointer(tmp_path / "r", "abc", writer=False)
    reader.save("s", {"epoch": 1})
    assert not (tmp_path / "r").exists()


def test_a_warm_cache_does_not_change_the_model(data, tmp_path):
    """Regression: dropout's generator was advanced by the decoding DataLoader, which runs only
    when the decoded-image cache is cold; the same seed then gave another model on a rerun."""
    index = scan_folder(data)
    cold = finetuner(epochs=2, cache_dir=str(tmp_path / "cache")).fit(index)
    warm = finetuner(epochs=2, cache_dir=str(tmp_path / "cache")).fit(index)
    assert [r["train_loss"] for r in warm.history_] == [r["train_loss"] for r in cold.history_]
    np.testing.assert_array_equal(warm.predict_proba(index.paths[:4]),
                                  cold.predict_proba(index.paths[:4]))


@pytest.mark.parametrize("finetune_bacc, kept", [
    (0.80, "probe"),      # 0.10 below on 400 images: more than two standard errors (0.04)
    (0.87, "finetune"),   # 0.03 below: within the noise of 400 images
    (0.95, "finetune")])
def test_finetune_ships_the_probe_only_when_it_is_clearly_better(monkeypatch, caplog,
                                                                finetune_bacc, kept):
    """Fine-tuning can wreck a small set's features and end clearly worse on validation than
    the frozen probe it started from; the model kept is then the probe's (weights restored,
    its validation logits for calibration, the whole history kept, `best_stage` saying so).
    A difference within the validation set's noise keeps the fine-tuned model."""
    from types import SimpleNamespace

    from imagefit.models.net import ImageClassifierNet
    from imagefit.train.objectives import Classification
    from imagefit.train.stages import StageResult, run_stages

    net = ImageClassifierNet(create_backbone("simple_cnn", image_size=32, pretrained=False), 2)
    val = np.arange(400)

    def probe_stage(net, train, val, ctx, loop):
        with torch.no_grad():
            net.head[1].weight.fill_(1.0)
        row = {"epoch": 1, "stage": "probe", "val_balanced_accuracy": 0.90, "val_loss": 0.3}
        return StageResult([row], 1, val, np.zeros((400, 2)), 10)

    def image_stage(net, train, val, ctx):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(2.0)
        row = {"epoch": 3, "stage": "finetune", "val_balanced_accuracy": finetune_bacc,
               "val_loss": 0.3}
        return StageResult([row], 3, val, np.ones((400, 2)), 10, 2, "finetune")

    monkeypatch.setattr(stages_module, "probe_stage", probe_stage)
    monkeypatch.setattr(stages_module, "image_stage", image_stage)
    ctx = SimpleNamespace(settings=SimpleNamespace(mode="finetune"), budget_left=lambda: None,
                          objective=None, score=Classification.score)  # a classifier's
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        result = run_stages(net, None, val, ctx)
    assert [r["stage"] for r in result.history] == ["probe", "finetune"]
    assert result.summary()["best_stage"] == kept
    if kept == "probe":
        assert result.best_epoch == 1 and result.unfreeze is None
        assert (result.val_logits == 0).all()
        assert (net.head[1].weight == 1.0).all()
        assert all(torch.equal(v, before[k]) for k, v in net.backbone.state_dict().items())
        assert "keeping the probe's model" in caplog.text
    else:
        assert result.best_epoch == 3 and result.unfreeze == 2
        assert (net.head[1].weight == 2.0).all()
        assert "keeping the probe" not in caplog.text
