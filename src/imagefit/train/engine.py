"""The training loop shared by every mode: epochs of mini-batches, weighted cross-entropy,
validation after each epoch, model selection on validation balanced accuracy (ties: lower
validation loss), early stopping, the best epoch's weights restored at the end.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from imagefit.errors import ImagefitError
from imagefit.evaluate.metrics import classification_metrics
from imagefit.progress import progress_bar

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class TrainingDivergedError(ImagefitError):
    """Every step of an epoch produced a non-finite loss."""

    exit_code = 5


@dataclass
class LoopSettings:
    epochs: int
    lr: float
    patience: int
    stage: str
    weight_decay: float = 0.0


def fit_loop(model: nn.Module, train_batches: Callable[[int], Batches],
             val_logits: Callable[[], torch.Tensor], y_val: np.ndarray, n_classes: int,
             settings: LoopSettings, *, class_weight: np.ndarray | None = None,
             device: str = "cpu", progress: bool = False) -> tuple[list[dict], int]:
    """Train `model` in place; return (history rows, best epoch).

    Args:
        train_batches: epoch number -> iterable of (inputs, int64 targets), freshly shuffled.
        val_logits: computes validation logits with the model in eval mode.
        y_val: validation targets (may be empty: then the last epoch is kept).
    """
    weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32,
                                                                device=device)
    criterion = nn.CrossEntropyLoss(weight=weight)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict] = []
    best_score: tuple[float, float] | None = None
    best_state, best_epoch, stale = None, 0, 0
    bar = progress_bar(total=settings.epochs, desc=f"Training ({settings.stage})", unit="epoch",
                       enabled=progress)
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        total, count, skipped = 0.0, 0, 0
        for inputs, targets in train_batches(epoch):
            inputs, targets = inputs.to(device), targets.to(device)
            loss = criterion(model(inputs), targets)
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
        row.update(lr=settings.lr, seconds=round(time.perf_counter() - started, 4))
        history.append(row)
        # Without validation data, later is better: the last epoch is kept.
        score = (row["val_balanced_accuracy"], -row["val_loss"]) if len(y_val) else (0.0, epoch)
        if best_score is None or score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        bar.update()
        bar.set_postfix(val_bacc=f"{row['val_balanced_accuracy']:.3f}", best=best_epoch)
        if len(y_val) and stale >= settings.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


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


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches for one epoch; the order is a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))
