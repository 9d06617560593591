"""The training loop shared by every mode: epochs of mini-batches, weighted cross-entropy,
validation after each epoch, model selection on validation balanced accuracy (ties: lower
validation loss), early stopping, a time budget, the best epoch's weights restored at the end;
optionally a checkpoint after every epoch, from which a killed run continues exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from imagefit.errors import ImagefitError
from imagefit.evaluate.metrics import classification_metrics
from imagefit.progress import progress_bar
from imagefit.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class TrainingDivergedError(ImagefitError):
    """Every step of an epoch produced a non-finite loss."""

    exit_code = 5


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


def lr_factor(step: int, settings: LoopSettings) -> float:
    """The schedule as a pure function of the optimizer step (0-based)."""
    if settings.schedule == "constant":
        return 1.0
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    total = max(settings.epochs * settings.steps_per_epoch - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / total, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def fit_loop(model: nn.Module, train_batches: Callable[[int], Batches],
             val_logits: Callable[[], torch.Tensor], y_val: np.ndarray, n_classes: int,
             settings: LoopSettings, *, class_weight: np.ndarray | None = None,
             logit_adjustment: np.ndarray | None = None, param_groups: list[dict] | None = None,
             checkpointer: Checkpointer | None = None, device: str = "cpu",
             train_model: nn.Module | None = None,
             progress: bool = False) -> tuple[list[dict], int]:
    """Train `model` in place; return (history rows, best epoch).

    Args:
        train_batches: epoch number -> iterable of (inputs, int64 targets), freshly shuffled.
        val_logits: computes validation logits with the model in eval mode.
        y_val: validation targets (may be empty: then the last epoch is kept).
        logit_adjustment: added to the logits inside the loss only (Menon et al. 2021).
        param_groups: optimizer groups, each with its own "lr" (discriminative rates); default
            every trainable parameter at `settings.lr`.
        checkpointer: save the state after every epoch, and continue from a saved state.
        train_model: what training steps call (e.g. `model` wrapped in
            DistributedDataParallel); its parameters must be `model`'s.
    """
    train_model = model if train_model is None else train_model
    weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32,
                                                                device=device)
    adjust = (None if logit_adjustment is None
              else torch.as_tensor(logit_adjustment, dtype=torch.float32, device=device))
    criterion = nn.CrossEntropyLoss(weight=weight)
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                         "lr": settings.lr}]
    base_lrs = [group["lr"] for group in param_groups]
    optimizer = torch.optim.AdamW(param_groups, lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    state = _State()
    if checkpointer is not None:
        saved = checkpointer.load(settings.stage)
        if saved is not None:
            state = _State.restore(saved, model, optimizer)
    bar = progress_bar(total=settings.epochs, desc=f"Training ({settings.stage})", unit="epoch",
                       enabled=progress, initial=state.epoch)
    step = state.epoch * settings.steps_per_epoch
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        if state.done:
            break
        started = time.perf_counter()
        train_model.train()
        total, count, skipped = 0.0, 0, 0
        for inputs, targets in train_batches(epoch):
            if not len(targets):
                continue
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(step, settings)
            step += 1
            inputs, targets = inputs.to(device), targets.to(device)
            logits = train_model(inputs)
            loss = criterion(logits if adjust is None else logits + adjust, targets)
            if not torch.isfinite(loss):
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        if count == 0 and skipped:
            raise TrainingDivergedError(f"The loss was not finite in any step of epoch {epoch}. "
                                        f"Try a lower learning rate (--lr).")
        row = {"epoch": epoch, "stage": settings.stage, "train_loss": total / max(count, 1)}
        row.update(_validate(model, val_logits, y_val, n_classes))
        row.update(lr=optimizer.param_groups[-1]["lr"],
                   seconds=round(time.perf_counter() - started, 4))
        state.history.append(row)
        state.elapsed += time.perf_counter() - started
        # Without validation data, later is better: the last epoch is kept.
        score = (row["val_balanced_accuracy"], -row["val_loss"]) if len(y_val) else (0.0, epoch)
        if state.best_score is None or score > tuple(state.best_score):
            state.best_score, state.best_epoch, state.stale = score, epoch, 0
            state.best_state = copy.deepcopy(model.state_dict())
        else:
            state.stale += 1
        state.epoch = epoch
        over_budget = (settings.time_budget_s is not None
                       and state.elapsed >= settings.time_budget_s)
        state.done = bool((len(y_val) and state.stale >= settings.patience) or over_budget
                          or epoch == settings.epochs)
        if checkpointer is not None:
            checkpointer.save(settings.stage, state.to_dict(model, optimizer))
        bar.update()
        bar.set_postfix(val_bacc=f"{row['val_balanced_accuracy']:.3f}", best=state.best_epoch)
        if over_budget:
            log.warning("Time budget reached after epoch %d of %s; keeping the best epoch (%d).",
                        epoch, settings.stage, state.best_epoch)
    bar.close()
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    return state.history, state.best_epoch


@dataclass
class _State:
    """What a checkpoint holds besides the model and optimizer."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_score: tuple | None = None
    best_epoch: int = 0
    best_state: dict | None = None
    stale: int = 0
    elapsed: float = 0.0
    done: bool = False

    def to_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "epoch": self.epoch, "history": self.history,
                "best_score": list(self.best_score) if self.best_score else None,
                "best_epoch": self.best_epoch, "best_state": self.best_state,
                "stale": self.stale, "elapsed": self.elapsed, "done": self.done}

    @classmethod
    def restore(cls, saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> "_State":
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        score = tuple(saved["best_score"]) if saved["best_score"] is not None else None
        return cls(saved["epoch"], list(saved["history"]), score, saved["best_epoch"],
                   saved["best_state"], saved["stale"], saved["elapsed"], saved["done"])


def _validate(model: nn.Module, val_logits: Callable[[], torch.Tensor], y_val: np.ndarray,
              n_classes: int) -> dict:
    if not len(y_val):
        return {"val_loss": float("nan"), "val_accuracy": float("nan"),
                "val_balanced_accuracy": float("nan")}
    model.eval()
    with torch.no_grad():
        logits = val_logits().float().cpu()
    proba = torch.softmax(logits, dim=1).numpy()
    metrics = classification_metrics(y_val, proba, [str(i) for i in range(n_classes)])
    return {"val_loss": metrics["log_loss"], "val_accuracy": metrics["accuracy"],
            "val_balanced_accuracy": metrics["balanced_accuracy"]}
