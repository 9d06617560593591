"""What a training loop optimises and how it judges an epoch, one class per task: the loss of
a batch, the loss of each row (to name the files of a non-finite step), the validation row of
the history, and the score that picks the best epoch (higher is better; ties broken by the
second number). `engine.fit_loop` takes one through `StepSettings.objective`.

- `Classification`: one label per image; weighted cross-entropy, optionally with the logit
  adjustment; best epoch by validation balanced accuracy, then lower loss.
- `Regression`: one number per image, trained standardised (`scale` turns errors back into the
  target's unit); MSE, Huber or L1 loss; best epoch by validation MAE, then lower loss.
- `MultiLabel`: any number of labels per image; binary cross-entropy per label with
  per-label positive weights; best epoch by validation mean average precision, then lower loss.

Example:
    >>> objective = Regression("huber", scale=12.5)
    >>> outputs, targets = torch.tensor([[0.0], [1.0]]), torch.tensor([0.0, 0.5])
    >>> round(objective.val_metrics(outputs, targets.numpy())["val_mae"], 4)
    3.125
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imagefit.metrics import classification_metrics, multilabel_metrics, regression_metrics

REGRESSION_LOSSES = ("mse", "huber", "l1")
MAX_POS_WEIGHT = 20.0


@dataclass
class Classification:
    """Cross-entropy over `n_classes`, with optional per-class weights and logit adjustment
    (added to the logits inside the loss only; Menon et al. 2021)."""

    n_classes: int
    class_weight: np.ndarray | None = None
    logit_adjustment: np.ndarray | None = None
    device: str = "cpu"
    progress_key = "val_balanced_accuracy"

    def __post_init__(self):
        as_tensor = (lambda a: None if a is None else
                     torch.as_tensor(a, dtype=torch.float32, device=self.device))
        self._weight, self._adjust = as_tensor(self.class_weight), as_tensor(self.logit_adjustment)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._adjust is not None:
            outputs = outputs + self._adjust
        return nn.functional.cross_entropy(outputs, targets, weight=self._weight)

    def row_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.float(), targets, reduction="none")

    def val_metrics(self, outputs: torch.Tensor, targets: np.ndarray) -> dict:
        if not len(targets):
            return {"val_loss": float("nan"), "val_accuracy": float("nan"),
                    "val_balanced_accuracy": float("nan")}
        proba = torch.softmax(outputs.float(), dim=1).numpy()
        metrics = classification_metrics(targets, proba, [str(i) for i in range(self.n_classes)])
        return {"val_loss": metrics["log_loss"], "val_accuracy": metrics["accuracy"],
                "val_balanced_accuracy": metrics["balanced_accuracy"]}

    @staticmethod
    def score(row: dict) -> tuple[float, float]:
        return row["val_balanced_accuracy"], -row["val_loss"]


@dataclass
class Regression:
    """A linear output trained on standardised targets, (value - `mean`) / `scale`: `loss`
    ("mse", "huber" with delta 1, i.e. one standard deviation of the targets, or "l1");
    validation errors are reported in the target's own unit."""

    loss_name: str = "mse"
    scale: float = 1.0
    mean: float = 0.0
    progress_key = "val_mae"

    def __post_init__(self):
        if self.loss_name not in REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(REGRESSION_LOSSES)}, "
                             f"not {self.loss_name!r}")

    @classmethod
    def fitted(cls, loss_name: str, values: np.ndarray) -> "Regression":
        """Standardised by the training values' mean and standard deviation (1 if constant)."""
        values = np.asarray(values, np.float64)
        scale = float(values.std()) if len(values) else 1.0
        return cls(loss_name, scale if scale > 0 else 1.0,
                   float(values.mean()) if len(values) else 0.0)

    def targets_of(self, index) -> np.ndarray:
        """What the loss compares the outputs with, for an `ImageIndex` with values."""
        return self.encode(index.targets)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Values as the network learns them (float32, standardised)."""
        return ((np.asarray(values, np.float64) - self.mean) / self.scale).astype(np.float32)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Network outputs (n, 1) or (n,) back in the target's unit (float64)."""
        return np.asarray(outputs, np.float64).reshape(-1) * self.scale + self.mean

    @staticmethod
    def start_head(linear: nn.Linear, features: np.ndarray, targets: np.ndarray) -> float:
        """Set `linear` to the ridge regression of the (standardised) `targets` on `features`
        (`ridge_fit`) and return its penalty. Gradient steps from a zero head need hundreds of
        epochs to reach what this solves at once on a small set; training goes on from here."""
        weight, bias, penalty = ridge_fit(features, targets)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.reshape(1, -1)))
            linear.bias.fill_(bias)
        return penalty

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.row_losses(outputs, targets).mean()

    def row_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predicted, targets = outputs.float().reshape(-1), targets.float().reshape(-1)
        if self.loss_name == "mse":
            return nn.functional.mse_loss(predicted, targets, reduction="none")
        if self.loss_name == "huber":
            return nn.functional.huber_loss(predicted, targets, reduction="none")
        return nn.functional.l1_loss(predicted, targets, reduction="none")

    def val_metrics(self, outputs: torch.Tensor, targets: np.ndarray) -> dict:
        if not len(targets):
            return {"val_loss": float("nan"), "val_mae": float("nan"),
                    "val_rmse": float("nan"), "val_r2": float("nan")}
        loss = float(self.loss(outputs, torch.as_tensor(targets)))
        predicted = outputs.float().reshape(-1).numpy().astype(np.float64) * self.scale
        metrics = regression_metrics(np.asarray(targets, np.float64) * self.scale, predicted)
        return {"val_loss": loss, "val_mae": metrics["mae"], "val_rmse": metrics["rmse"],
                "val_r2": metrics["r2"]}

    @staticmethod
    def score(row: dict) -> tuple[float, float]:
        return -row["val_mae"], -row["val_loss"]


def ridge_fit(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(weight, bias, penalty) of the ridge regression of `targets` on `features`, the penalty
    chosen by generalised cross-validation (Golub, Heath and Wahba 1979) from one SVD of the
    centred features, on a log grid from 1e-6 to 10 times the largest squared singular value:
    bounded below, since with fewer images than features GCV can drift towards interpolating
    them (measured: a grid reaching 1e-9 raised the test MAE of benchmarks/regression_counts.py
    by a fifth).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 3))
        >>> w, b, _ = ridge_fit(x, x @ [1.0, -2.0, 0.5] + 3.0)
        >>> np.round(w, 2).tolist(), round(b, 2)
        ([1.0, -2.0, 0.5], 3.0)
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64).reshape(-1)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    uy = u.T @ (y - y_mean)
    outside = float(((y - y_mean) ** 2).sum() - (uy ** 2).sum())  # beyond u's span
    s2 = s ** 2
    best = None
    for penalty in s2.max(initial=1.0) * np.logspace(-6, 1, 29):
        residual = outside + float(((penalty / (s2 + penalty) * uy) ** 2).sum())
        dof = float((s2 / (s2 + penalty)).sum())
        gcv = residual / max(len(y) - dof, 1e-9) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, float(penalty))
    penalty = best[1]
    weight = vt.T @ (s / (s2 + penalty) * uy)
    return weight, float(y_mean - x_mean @ weight), penalty


@dataclass
class MultiLabel:
    """Binary cross-entropy per label on the logits; `pos_weight` (one per label, e.g.
    negatives / positives) weighs each label's positives against its imbalance."""

    n_labels: int
    pos_weight: np.ndarray | None = None
    device: str = "cpu"
    progress_key = "val_map"

    def __post_init__(self):
        self._pos_weight = (None if self.pos_weight is None else
                            torch.as_tensor(self.pos_weight, dtype=torch.float32,
                                            device=self.device))

    @classmethod
    def fitted(cls, tags: np.ndarray, device: str = "cpu",
               max_weight: float = MAX_POS_WEIGHT) -> "MultiLabel":
        """Positive weights from the training rows' 0/1 matrix `tags`: each label's negatives
        over its positives, within [1, `max_weight`] (a label on a handful of images would
        otherwise weigh hundreds of times a negative and flood the output with it)."""
        tags = np.asarray(tags, bool)
        positives = tags.sum(axis=0)
        weight = (len(tags) - positives) / np.maximum(positives, 1)
        return cls(tags.shape[1], np.clip(weight, 1.0, max_weight), device)

    @staticmethod
    def targets_of(index) -> np.ndarray:
        """Each image's 0/1 row (float32), for an `ImageIndex` with tags."""
        return index.tags.astype(np.float32)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            outputs, targets.float(), pos_weight=self._pos_weight)

    def row_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            outputs.float(), targets.float(), reduction="none").mean(dim=1)

    def val_metrics(self, outputs: torch.Tensor, targets: np.ndarray) -> dict:
        if not len(targets):
            return {"val_loss": float("nan"), "val_map": float("nan"),
                    "val_macro_f1": float("nan")}
        loss = float(self.loss(outputs.float(), torch.as_tensor(targets)))
        proba = torch.sigmoid(outputs.float()).numpy()
        metrics = multilabel_metrics(targets, proba, [str(i) for i in range(self.n_labels)])
        return {"val_loss": loss, "val_map": metrics["map"],
                "val_macro_f1": metrics["macro_f1"]}

    @staticmethod
    def score(row: dict) -> tuple[float, float]:
        return row["val_map"], -row["val_loss"]
