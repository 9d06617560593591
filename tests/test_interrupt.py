"""The training loop under faults, in-process: SIGINT/SIGTERM mid-epoch (saved, resumed exactly),
non-finite losses (skipped, named, K in a row stop the run, never the best model), a checkpoint
that cannot be written (disk full: the previous one is kept)."""

from __future__ import annotations

import errno
import logging
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from imagefit.errors import OutputError, TrainingDivergedError, TrainingInterrupted
from imagefit.train.checkpoint import Checkpointer
from imagefit.train.engine import MAX_NONFINITE_IN_A_ROW, LoopHooks, LoopSettings, fit_loop
from imagefit.train.loader import shuffled_indices

N, BATCH = 48, 8


def _problem():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(N, 6)).astype(np.float32))
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 1).long())
    xv = torch.from_numpy(rng.normal(size=(16, 6)).astype(np.float32))
    yv = ((xv[:, 0] > 0).long() + (xv[:, 1] > 1).long()).numpy()
    return x, y, xv, yv


def _fit(checkpointer=None, *, signal_at=None, signum=signal.SIGINT, epochs=5, x=None,
         batch_files=None, diverge_from=None):
    """A small model trained with dropout and a cosine schedule; `signal_at=(epoch, batch)`
    sends `signum` to this process while that batch is being fetched; from epoch
    `diverge_from` on every input is infinite."""
    x0, y, xv, yv = _problem()
    x = x0 if x is None else x
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    settings = LoopSettings(epochs=epochs, lr=0.05, patience=100, stage="tiny",
                            schedule="cosine", warmup_steps=3, steps_per_epoch=N // BATCH)

    def batches(epoch, first):
        rows = torch.from_numpy(shuffled_indices(N, 1)(epoch)).split(BATCH)
        for number, b in enumerate(rows[first:], start=first):
            if signal_at == (epoch, number):
                os.kill(os.getpid(), signum)
            poisoned = diverge_from is not None and epoch >= diverge_from
            yield (x[b] * float("inf") if poisoned else x[b]), y[b]

    history, best = fit_loop(model, batches, lambda: model(xv), yv, 3, settings,
                             hooks=LoopHooks(checkpointer=checkpointer, batch_files=batch_files))
    return model, history, best


def _same_model(a: nn.Module, b: nn.Module) -> None:
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_mid_epoch_and_resuming_ends_exactly_as_an_uninterrupted_run(
        tmp_path, signum, code):
    reference, history_ref, best_ref = _fit(Checkpointer(tmp_path / "ref", "fp"))
    ckpt = Checkpointer(tmp_path / "run", "fp")
    with pytest.raises(TrainingInterrupted) as caught:
        _fit(ckpt, signal_at=(3, 2), signum=signum)
    assert caught.value.exit_code == code and "epoch 3" in str(caught.value)
    saved = ckpt.load("tiny")
    assert saved["epoch"] == 2                                    # epochs 1-2 finished
    assert saved["partial"]["epoch"] == 3 and saved["partial"]["batch"] == 3  # step finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    torch.manual_seed(123)  # a new process starts from another RNG state
    resumed, history, best = _fit(ckpt)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]       # none lost, none repeated
    assert strip(history) == strip(history_ref) and best == best_ref
    _same_model(reference, resumed)


def test_without_a_checkpointer_ctrl_c_is_an_ordinary_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        _fit(None, signal_at=(2, 1))


def test_a_non_finite_step_is_skipped_and_its_files_named(caplog):
    x, *_ = _problem()
    x = x.clone()
    x[7] = float("nan")  # one poisoned row: its batch's loss is NaN every epoch
    names = np.array([f"img_{i:02d}.png" for i in range(N)])
    files = lambda epoch, batch: names[shuffled_indices(N, 1)(epoch)[batch * BATCH:
                                                                   (batch + 1) * BATCH]]
    with caplog.at_level(logging.WARNING, logger="imagefit.train.engine"):
        model, history, _ = _fit(None, x=x, batch_files=files)
    skipped = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(skipped) == 5                                      # once per epoch
    assert all("img_07.png" in r.getMessage() for r in skipped)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(np.isfinite(r["train_loss"]) for r in history)


def test_k_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_epoch(tmp_path):
    ckpt = Checkpointer(tmp_path, "fp")
    with pytest.raises(TrainingDivergedError) as caught:
        _fit(ckpt, epochs=4, diverge_from=3)
    assert caught.value.exit_code == 5
    assert f"{MAX_NONFINITE_IN_A_ROW} steps in a row" in str(caught.value)
    saved = ckpt.load("tiny")
    assert saved["epoch"] == 2 and saved["partial"] is None       # the last good epoch
    assert all(torch.isfinite(v).all() for v in saved["best_state"].values())
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_weights_that_blow_up_stop_the_run():
    x, y, xv, yv = _problem()
    model = nn.Linear(6, 3)
    settings = LoopSettings(epochs=3, lr=1e37, patience=100, stage="huge")
    batches = lambda epoch, first: [(x, y)][first:]
    with pytest.raises(TrainingDivergedError) as caught:
        fit_loop(model, batches, lambda: model(xv), yv, 3, settings)
    assert "not finite" in str(caught.value)


def test_a_model_with_non_finite_outputs_never_becomes_the_best_one(tmp_path):
    x, y, xv, yv = _problem()
    model = nn.Linear(6, 3)
    calls = []

    def val_logits():  # the second epoch's model answers inf (as a blown-up one would)
        calls.append(1)
        return model(xv) * (float("inf") if len(calls) == 2 else 1.0)

    ckpt = Checkpointer(tmp_path, "fp")
    with pytest.raises(TrainingDivergedError) as caught:
        fit_loop(model, lambda epoch, first: [(x, y)][first:], val_logits, yv, 3,
                 LoopSettings(epochs=3, lr=0.05, patience=100, stage="s"),
                 hooks=LoopHooks(checkpointer=ckpt))
    assert "epoch 2" in str(caught.value) and "keeps epoch 1" in str(caught.value)
    saved = ckpt.load("s")
    assert saved["epoch"] == 1 and saved["best_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["best_state"].values())


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, "fp")
    ckpt.save("s", {"epoch": 1, "w": torch.ones(3)})

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as caught:
        ckpt.save("s", {"epoch": 2, "w": torch.zeros(3)})
    message = str(caught.value)
    assert "No space left on device" in message and "previous checkpoint is kept" in message
    monkeypatch.undo()
    assert ckpt.load("s")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]       # no half-written file


def test_a_signal_after_the_last_step_still_stops_once_the_stage_is_saved(tmp_path):
    x, y, xv, yv = _problem()
    model = nn.Linear(6, 3)
    settings = LoopSettings(epochs=2, lr=0.05, patience=100, stage="last")
    calls = []

    def val_logits():  # the signal lands in the last epoch's validation
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return model(xv)

    ckpt = Checkpointer(tmp_path, "fp")
    with pytest.raises(TrainingInterrupted) as caught:
        fit_loop(model, lambda epoch, first: [(x, y)][first:], val_logits, yv, 3, settings,
                 hooks=LoopHooks(checkpointer=ckpt))
    assert caught.value.exit_code == 143 and "after epoch 2 of last" in str(caught.value)
    saved = ckpt.load("last")
    assert saved["epoch"] == 2 and saved["done"] and saved["partial"] is None


def test_resuming_with_other_settings_exits_4_and_changes_nothing(trained_run, tmp_path, capsys):
    import shutil

    from conftest import TEST_IMAGE_SIZE
    from imagefit.cli.main import main

    run = shutil.copytree(trained_run["run"], tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    code = main(["train", str(trained_run["data"]), "--out", str(run), "--resume", "--quiet",
                 "--image-size", str(TEST_IMAGE_SIZE), "--epochs", "31"])  # it ran with 30
    assert code == 4
    err = capsys.readouterr().err
    assert "different settings or data" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_a_skipped_step_leaves_batch_norm_statistics_as_they_were():
    x, y, xv, yv = _problem()
    x = x.clone()
    x[7] = float("inf")  # its batch's forward pass would put inf/NaN into the running stats
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    settings = LoopSettings(epochs=3, lr=0.05, patience=100, stage="bn")
    batches = lambda epoch, first: ((x[b], y[b]) for b in torch.from_numpy(
        shuffled_indices(N, 1)(epoch)).split(BATCH)[first:])
    history, best = fit_loop(model, batches, lambda: model(xv), yv, 3, settings)
    assert [r["epoch"] for r in history] == [1, 2, 3]             # the run went on
    assert all(torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(xv)).all()
