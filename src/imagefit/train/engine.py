"""The training loop shared by every mode and task: epochs of mini-batches, the task's loss
(`objectives`: weighted cross-entropy for classes), validation after each epoch, model selection
on the task's validation score (balanced accuracy for classes; ties: lower validation loss),
early stopping, a time budget (to which a decaying schedule is fitted once
the first epochs are timed), the best epoch's weights restored at the end;
optionally a checkpoint after every epoch, from which a killed run continues exactly, and on
SIGINT/SIGTERM one mid-epoch. Steps with a non-finite loss or gradient are skipped and named;
a few in a row end the run (exit 5), and a non-finite model never becomes the best one.

`fit_loop` reads top to bottom: per epoch, `_train_one_epoch`, `_validate_epoch`, then
`_select_stop_save`, and `_stop_if_signalled`. What they share is one `_Loop`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from imagefit.errors import TrainingDivergedError, TrainingInterrupted
from imagefit.progress import progress_bar
from imagefit.train.checkpoint import Checkpointer
from imagefit.train.interrupt import StopRequest, stop_requests
from imagefit.train.objectives import Classification, MultiLabel, Regression

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Objective = Classification | Regression | MultiLabel


# Steps in a row whose loss or gradient is not finite before a run gives up (each is skipped).
MAX_NONFINITE_IN_A_ROW = 3


@dataclass
class LoopSettings:
    """One training stage. The learning rate is `lr` times `lr_factor(step)` of the schedule."""

    epochs: int
    lr: float
    patience: int
    stage: str
    weight_decay: float = 0.0
    schedule: str = "constant"        # constant | cosine (with linear warm-up)
    warmup_steps: int = 0
    steps_per_epoch: int = 1
    time_budget_s: float | None = None  # stop after the epoch that passes it; best kept


@dataclass
class StepSettings:
    """What one optimizer step computes, and where.

    Attributes:
        class_weight: per-class weights of the cross-entropy (default: none).
        logit_adjustment: added to the logits inside the loss only (Menon et al. 2021).
        objective: the task's loss and validation score (`objectives`); default: a
            `Classification` with the two settings above.
        param_groups: optimizer groups, each with its own "lr" (discriminative rates); default
            every trainable parameter at `LoopSettings.lr`.
        device: where the batches and the loss's tensors go.
    """

    class_weight: np.ndarray | None = None
    logit_adjustment: np.ndarray | None = None
    objective: Objective | None = None
    param_groups: list[dict] | None = None
    device: str = "cpu"


@dataclass
class LoopHooks:
    """What the loop touches besides the model it trains.

    Attributes:
        checkpointer: save the state after every epoch, and continue from a saved state. With
            one, SIGINT/SIGTERM stop the loop before its next step, saved mid-epoch
            (`TrainingInterrupted`).
        train_model: what training steps call (e.g. the model wrapped in
            DistributedDataParallel); its parameters must be the model's. Default: the model.
        batch_files: (epoch, batch) -> the files of that batch, named when its loss is not
            finite.
        progress: a progress bar over the epochs (on a terminal).
    """

    checkpointer: Checkpointer | None = None
    train_model: nn.Module | None = None
    batch_files: Callable[[int, int], Sequence[str]] | None = None
    progress: bool = False


def lr_factor(step: int, settings: LoopSettings, epochs: int | None = None) -> float:
    """The schedule as a pure function of the optimizer step (0-based), over `epochs` (default
    `settings.epochs`; fewer when a time budget allows fewer)."""
    if settings.schedule == "constant":
        return 1.0
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    epochs = settings.epochs if epochs is None else epochs
    total = max(epochs * settings.steps_per_epoch - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / total, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def fit_loop(model: nn.Module, train_batches: Callable[[int, int], Batches],
             val_logits: Callable[[], torch.Tensor], y_val: np.ndarray, n_classes: int,
             settings: LoopSettings, *, step_settings: StepSettings | None = None,
             hooks: LoopHooks | None = None) -> tuple[list[dict], int]:
    """Train `model` in place; return (history rows, best epoch).

    Args:
        train_batches: (epoch, first batch) -> iterable of (inputs, targets): the epoch's
            batches, freshly shuffled, from that batch on (a resumed epoch skips what it did);
            targets as the objective takes them (int64 classes, float values, 0/1 rows).
        val_logits: computes validation outputs with the model in eval mode.
        y_val: validation targets (may be empty: then the last epoch is kept).
        n_classes: the classes of the default objective (ignored with another).
        step_settings: the loss, optimizer groups and device (default `StepSettings()`).
        hooks: checkpointer, DDP-wrapped model, batch files, progress (default `LoopHooks()`).

    Raises:
        TrainingDivergedError: MAX_NONFINITE_IN_A_ROW steps in a row had a non-finite loss or
            gradient, or the weights stopped being finite. The checkpoint keeps the last good
            epoch; a non-finite model never becomes the best one.
        TrainingInterrupted: a signal stopped the loop after it saved its state.
    """
    loop = _Loop.start(model, settings, step_settings or StepSettings(), hooks or LoopHooks(),
                       n_classes)
    checkpointer = loop.hooks.checkpointer
    guard = contextlib.nullcontext(StopRequest()) if checkpointer is None else stop_requests()
    in_a_row = 0  # non-finite steps in a row, across epoch boundaries
    with guard as stop:
        for epoch in range(loop.state.epoch + 1, settings.epochs + 1):
            if loop.state.done:
                break
            run = _train_one_epoch(loop, train_batches, epoch, in_a_row, stop)
            in_a_row = run.in_a_row
            row = _validate_epoch(loop, run, val_logits, y_val, n_classes)
            _select_stop_save(loop, run, row, has_val=len(y_val) > 0)
            _stop_if_signalled(loop, stop)
    loop.bar.close()
    if loop.state.best_state is not None:
        model.load_state_dict(loop.state.best_state)
    model.eval()
    return loop.state.history, loop.state.best_epoch


def _train_one_epoch(loop: "_Loop", train_batches: Callable[[int, int], Batches], epoch: int,
                     in_a_row: int, stop: StopRequest) -> "_EpochRun":
    """Train one epoch, or the rest of an interrupted one; on a signal, save and stop."""
    run = _EpochRun.resume(loop.state.partial, epoch, loop.settings, in_a_row)
    loop.state.partial = None
    started = time.perf_counter()
    loop.train_model.train()
    for inputs, targets in train_batches(epoch, run.batch):
        run.batch += 1
        if len(targets):
            _train_step(loop, run, inputs, targets)
        signum = _stop_signal(stop)  # after the step: the saved state is after it
        if signum:
            run.seconds += time.perf_counter() - started
            _interrupt(signum, loop, run)
    run.seconds += time.perf_counter() - started
    if run.count == 0 and run.skipped:
        raise TrainingDivergedError(
            f"The loss was not finite in any step of epoch {epoch} of {loop.settings.stage}. "
            f"{loop.kept()}Try a lower learning rate (--lr).")
    if not _finite_weights(loop.model):
        raise TrainingDivergedError(
            f"The weights stopped being finite in epoch {epoch} of {loop.settings.stage}. "
            f"{loop.kept()}Try a lower learning rate (--lr).")
    return run


def _train_step(loop: "_Loop", run: "_EpochRun", inputs: torch.Tensor,
                targets: torch.Tensor) -> None:
    """The scheduled learning rate, then one step: counted, or skipped and named."""
    for group, base in zip(loop.optimizer.param_groups, loop.base_lrs):
        group["lr"] = base * lr_factor(run.step, loop.settings, loop.state.planned)
    run.step += 1
    loss = _step(loop.train_model, loop.optimizer, loop.objective, loop.params,
                 inputs.to(loop.device), targets.to(loop.device))
    if isinstance(loss, float):
        run.in_a_row = 0
        run.total += loss * len(targets)
        run.count += len(targets)
    else:
        _skip_step(run, loop.settings, loop.hooks.batch_files, loss, loop.kept())


def _validate_epoch(loop: "_Loop", run: "_EpochRun", val_logits: Callable[[], torch.Tensor],
                    y_val: np.ndarray, n_classes: int) -> dict:
    """The epoch's history row: training loss, validation metrics, last learning rate, and
    seconds (training and validation; `run.seconds` is brought up to date)."""
    started = time.perf_counter()
    row = {"epoch": run.epoch, "stage": loop.settings.stage,
           "train_loss": run.total / max(run.count, 1)}
    row.update(_val_metrics(loop.model, val_logits, y_val, loop.objective))
    run.seconds += time.perf_counter() - started
    row.update(lr=loop.optimizer.param_groups[-1]["lr"], seconds=round(run.seconds, 4))
    return row


def _select_stop_save(loop: "_Loop", run: "_EpochRun", row: dict, has_val: bool) -> None:
    """Keep the best model (on the objective's validation score, e.g. balanced accuracy, then
    lower loss), decide whether the stage is done (patience, time budget, last epoch), save,
    report."""
    state, settings, epoch = loop.state, loop.settings, run.epoch
    # Without validation data, later is better: the last epoch is kept.
    score = loop.objective.score(row) if has_val else (0.0, epoch)
    if not all(math.isfinite(v) for v in score):
        raise TrainingDivergedError(
            f"The validation loss of epoch {epoch} of {settings.stage} is not finite. "
            f"{loop.kept()}Try a lower learning rate (--lr).")
    state.history.append(row)
    state.elapsed += run.seconds
    if state.best_score is None or score > tuple(state.best_score):
        state.best_score, state.best_epoch, state.stale = score, epoch, 0
        state.best_state = copy.deepcopy(loop.model.state_dict())
    else:
        state.stale += 1
    state.epoch = epoch
    # Under torchrun every rank must stop after the same epoch: the slowest rank's time counts.
    elapsed = state.elapsed if settings.time_budget_s is None else _rank_max(state.elapsed)
    over_budget = settings.time_budget_s is not None and elapsed >= settings.time_budget_s
    _fit_schedule_to_budget(loop, elapsed)
    state.done = bool((has_val and state.stale >= settings.patience) or over_budget
                      or epoch >= state.planned)
    loop.save()
    loop.bar.update()
    key = loop.objective.progress_key
    loop.bar.set_postfix({key: f"{row[key]:.3f}", "best": state.best_epoch})
    if over_budget:
        log.warning("Time budget reached after epoch %d of %s; keeping the best epoch (%d).",
                    epoch, settings.stage, state.best_epoch)


def _fit_schedule_to_budget(loop: "_Loop", elapsed: float) -> None:
    """Under a time budget, plan only the epochs that fit in it (at the mean epoch time so far),
    so that a decaying schedule decays fully instead of being cut off at a high learning
    rate. The plan only ever shrinks, and a checkpoint keeps it (a resumed run follows it)."""
    state, settings = loop.state, loop.settings
    if settings.time_budget_s is None or settings.schedule == "constant" or not state.epoch:
        return
    per_epoch = max(elapsed / state.epoch, 1e-9)
    fits = state.epoch + int(max(settings.time_budget_s - elapsed, 0.0) // per_epoch)
    planned = max(min(state.planned, fits), state.epoch)
    if planned < state.planned:
        if state.planned == settings.epochs:
            log.info("Time budget: %d of %d epochs of %s fit in it (%.0f s each); the schedule "
                     "is fitted to them.", planned, settings.epochs, settings.stage, per_epoch)
        state.planned = planned


def _stop_if_signalled(loop: "_Loop", stop: StopRequest) -> None:
    """A signal during validation or the save: the epoch is saved already; stop."""
    signum = _stop_signal(stop)
    if signum:
        loop.bar.close()
        _synchronize()
        raise TrainingInterrupted(
            f"Interrupted after epoch {loop.state.epoch} of {loop.settings.stage}; saved in "
            f"{loop.hooks.checkpointer.path(loop.settings.stage)}.", signum)


@dataclass
class _Loop:
    """One call of `fit_loop`: the model, its loss and optimizer, the hooks, the progress bar
    and the state a checkpoint holds."""

    model: nn.Module
    settings: LoopSettings
    hooks: LoopHooks
    train_model: nn.Module          # what steps call: `model`, or `hooks.train_model`
    objective: Objective
    params: list[torch.Tensor]
    base_lrs: list[float]           # each group's rate before the schedule
    optimizer: torch.optim.Optimizer
    device: str
    state: "_State"
    bar: tqdm

    @classmethod
    def start(cls, model: nn.Module, settings: LoopSettings, step: StepSettings,
              hooks: LoopHooks, n_classes: int) -> "_Loop":
        """The objective and the optimizer; the state of the checkpoint, when there is one."""
        train_model = model if hooks.train_model is None else hooks.train_model
        objective = step.objective or Classification(n_classes, step.class_weight,
                                                     step.logit_adjustment, step.device)
        groups = step.param_groups
        if groups is None:
            groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                       "lr": settings.lr}]
        params = [p for group in groups for p in group["params"]]
        base_lrs = [group["lr"] for group in groups]
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
        state = _State(planned=settings.epochs)
        if hooks.checkpointer is not None:
            saved = hooks.checkpointer.load(settings.stage)
            if saved is not None:
                state = _State.restore(saved, model, optimizer)
                state.planned = state.planned or settings.epochs
        bar = progress_bar(total=settings.epochs, desc=f"Training ({settings.stage})",
                           unit="epoch", enabled=hooks.progress, initial=state.epoch)
        return cls(model, settings, hooks, train_model, objective, params, base_lrs,
                   optimizer, step.device, state, bar)

    def save(self) -> None:
        """Checkpoint the state (no-op without a checkpointer)."""
        if self.hooks.checkpointer is not None:
            self.hooks.checkpointer.save(self.settings.stage,
                                         self.state.to_dict(self.model, self.optimizer))

    def kept(self) -> str:
        """What a diverged run keeps, for its message."""
        if self.hooks.checkpointer is None or self.state.epoch == 0:
            return ""
        return (f"The checkpoint {self.hooks.checkpointer.path(self.settings.stage)} keeps epoch "
                f"{self.state.epoch} (best so far: {self.state.best_epoch}). ")


@dataclass
class _EpochRun:
    """The epoch in progress: where it is and its running totals (saved on interruption)."""

    epoch: int
    batch: int = 0      # batches taken from the loader so far
    step: int = 0       # optimizer steps before the next one, over the whole stage
    total: float = 0.0  # summed loss of the finite steps
    count: int = 0
    skipped: int = 0
    in_a_row: int = 0   # consecutive non-finite steps (carried over from the epoch before)
    seconds: float = 0.0

    @classmethod
    def resume(cls, partial: dict | None, epoch: int, settings: LoopSettings,
               in_a_row: int = 0) -> "_EpochRun":
        if partial is not None and partial["epoch"] == epoch:
            return cls(**partial)
        return cls(epoch, step=(epoch - 1) * settings.steps_per_epoch, in_a_row=in_a_row)


def _step(train_model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
          params: list[torch.Tensor], inputs: torch.Tensor,
          targets: torch.Tensor) -> float | np.ndarray:
    """One optimizer step; its loss, or, when the loss or a gradient is not finite, no step
    and which rows were at fault (batch-norm statistics are put back as they were)."""
    buffers = [b.clone() for b in train_model.buffers()]
    logits = train_model(inputs)
    loss = objective.loss(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    finite = not _any_rank(not bool(torch.isfinite(loss)))
    if finite:  # under DDP every rank takes part in the gradients' all-reduce, or none does
        loss.backward()
        finite = _finite_gradients(params)
    if finite:
        optimizer.step()
        return float(loss.detach())
    with torch.no_grad():
        for buffer, saved in zip(train_model.buffers(), buffers):
            buffer.copy_(saved)
    return _bad_rows(objective, logits, targets)


def _interrupt(signum: int, loop: _Loop, run: _EpochRun) -> None:
    """Save the epoch in progress and stop (`TrainingInterrupted`)."""
    loop.state.partial = asdict(run)
    loop.save()
    _synchronize()  # no rank reports "saved" before rank 0 has written it
    raise TrainingInterrupted(
        f"Interrupted in epoch {run.epoch} of {loop.settings.stage} after {run.batch} batches; "
        f"saved in {loop.hooks.checkpointer.path(loop.settings.stage)}.", signum)


def _bad_rows(objective: Objective, logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Which rows of a batch have a non-finite loss (none: the gradient was the problem)."""
    with torch.no_grad():
        losses = objective.row_losses(logits, targets)
    return (~torch.isfinite(losses)).cpu().numpy()


def _skip_step(run: _EpochRun, settings: LoopSettings,
               batch_files: Callable[[int, int], Sequence[str]] | None,
               bad_rows: np.ndarray, kept: str) -> None:
    epoch = run.epoch
    run.skipped += 1
    run.in_a_row += 1
    files = list(batch_files(epoch, run.batch - 1)) if batch_files is not None else []
    if len(files) == len(bad_rows) and bad_rows.any():  # the rows at fault first
        files = ([f for f, bad in zip(files, bad_rows) if bad]
                 + [f for f, bad in zip(files, bad_rows) if not bad])
    named = ", ".join(map(str, files[:5])) + (f" and {len(files) - 5} more"
                                              if len(files) > 5 else "")
    where = f"epoch {epoch} of {settings.stage}, batch {run.batch}"
    log.warning("Skipped a step with a non-finite loss or gradient (%s)%s.", where,
                f"; its files: {named}" if named else "")
    if run.in_a_row >= MAX_NONFINITE_IN_A_ROW:
        raise TrainingDivergedError(
            f"The loss or its gradient was not finite in {run.in_a_row} steps in a row "
            f"({where}); stopping. {kept}Try a lower learning rate (--lr)"
            + (f"; the last batch's files: {named}." if named else "."))


def _finite_gradients(params: list[torch.Tensor]) -> bool:
    # Each gradient tested itself: a norm of large finite gradients overflows to inf.
    finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    return not _any_rank(not finite)


def _finite_weights(model: nn.Module) -> bool:
    """Parameters and floating buffers (batch-norm statistics) all finite."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _synchronize() -> None:
    """Wait for every rank under torchrun (no-op otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _any_rank(flag: bool) -> bool:
    """`flag` on any rank (under torchrun every rank must take the same branch), else `flag`."""
    return bool(_rank_max(float(flag)))


def _stop_signal(stop: StopRequest) -> int:
    """The signal any rank received (0: none); under torchrun every rank stops on it."""
    return int(_rank_max(float(stop.signum or 0)))


def _rank_max(value: float) -> float:
    """The largest `value` over the ranks under torchrun, else `value`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value])
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


@dataclass
class _State:
    """What a checkpoint holds besides the model and optimizer."""

    epoch: int = 0          # the last finished epoch
    history: list = field(default_factory=list)
    best_score: tuple | None = None
    best_epoch: int = 0
    best_state: dict | None = None
    stale: int = 0
    elapsed: float = 0.0
    done: bool = False
    partial: dict | None = None  # the epoch in progress when a signal stopped the loop
    planned: int = 0        # the epochs the schedule runs over (fewer under a time budget)

    def to_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "epoch": self.epoch, "history": self.history,
                "best_score": list(self.best_score) if self.best_score else None,
                "best_epoch": self.best_epoch, "best_state": self.best_state,
                "stale": self.stale, "elapsed": self.elapsed, "done": self.done,
                "partial": self.partial, "planned": self.planned}

    @classmethod
    def restore(cls, saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> "_State":
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        score = tuple(saved["best_score"]) if saved["best_score"] is not None else None
        return cls(saved["epoch"], list(saved["history"]), score, saved["best_epoch"],
                   saved["best_state"], saved["stale"], saved["elapsed"], saved["done"],
                   saved.get("partial"), saved.get("planned", 0))


def _val_metrics(model: nn.Module, val_logits: Callable[[], torch.Tensor], y_val: np.ndarray,
                 objective: Objective) -> dict:
    if not len(y_val):
        return objective.val_metrics(torch.zeros(0), y_val)
    model.eval()
    with torch.no_grad():
        return objective.val_metrics(val_logits().float().cpu(), y_val)
