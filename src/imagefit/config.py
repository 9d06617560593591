"""The training configuration: one frozen dataclass with commented defaults. `from_mapping`
(used for `--config FILE.yaml`) rejects unknown keys, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.sources import SourceOptions
from imagefit.errors import ConfigError

# How `train` fits: `auto` chooses one of the others from the data (train/settings.py).
MODES = ("auto", "probe", "finetune", "scratch")


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""                    # dataset folder (class sub-folders, or train/ + val/) or
                                      # table (CSV, TSV, Parquet)
    out: str | None = None            # run folder; default runs/<timestamp>
    val: str | None = None            # a separate validation folder or table (same classes)
    # How labels, splits and groups are read (data.sources.SourceOptions; all optional):
    root: str | None = None           # tables: folder relative paths start from
    path_col: str | None = None       # tables: path column (default: recognised by name)
    label_col: str | None = None      # tables: label column (default: recognised by name)
    split_col: str | None = None      # tables: train/val/test column (default: 'split' if any)
    group_col: str | None = None      # tables: group column (patient, specimen...)
    label_regex: str | None = None    # label = first group of this pattern in the file name
    label_depth: Any = None           # folders: class = first N folder levels, or "leaf"
    group_regex: str | None = None    # group = first group of this pattern in the file name
    task: str = "auto"                # tables: auto | classify | regress | multilabel (auto:
                                      # multilabel for labels joined by | or ; or several 0/1
                                      # label columns; regress when every label is a number
                                      # and some are not whole)
    label_sep: str | None = None      # tables, multilabel: separator of labels (default | or ;)
    threshold: Any = "auto"           # multilabel: auto (per label, max F1 on validation) | p
    loss: str = "mse"                 # regression: mse | huber | l1
    interval: float = 0.9             # regression: coverage of the prediction intervals
    val_fraction: float = 0.2         # share of each class held out when there is no val folder
    mode: str = "auto"                # auto | probe | finetune | scratch (auto: finetune a
                                      # pretrained backbone on GPU or <= 20k images, else probe)
    backbone: str | None = None       # default efficientnet_lite0 (probe) / simple_cnn (scratch)
    weights: str | None = None        # .safetensors backbone weights (timm models offline)
    image_size: int | None = None     # default: the backbone's own (224 for efficientnet_lite0)
    augment: Any = "auto"             # auto | none | light | keras | strong | FILE.yaml | mapping
    balance: str = "auto"             # auto | weights | sampler | none (auto: by imbalance ratio)
    class_weight: Any = None          # balanced (default) | effective_number | {class: weight}
    max_per_class: int | None = None  # sampler: at most this many draws per class and epoch
    epoch_size: int | None = None     # draws per epoch (default: sampler's, or the training set)
    max_val: Any = "auto"             # validation images used in training: auto | all | N
    preflight: str = "auto"           # auto | full | lazy | sample:N (auto: full up to 50k)
    logit_adjustment: Any = False     # false, or tau (float) for logit-adjusted loss
    unfreeze: int | None = None       # finetune: top stages to train; default by dataset size
    epochs: int | None = None         # maximum epochs; early stopping on val balanced accuracy
    batch_size: int = 64
    lr: float | None = None           # Adam learning rate; default 1e-3
    dropout: float | None = None      # before the linear head; default 0.2 (probe), 0.5 (scratch)
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    workers: int | None = None        # decoding processes; default by dataset size
    strict: bool = False              # stop (exit 3) before training if any file is bad
    report: bool = True               # build RUN/report/index.html after training
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit per image
    cache_dir: str | None = None      # feature store; default $IMAGEFIT_CACHE or ~/.cache/imagefit
    time_budget: Any = "auto"         # minutes | auto (by data size on a CPU) | none; the
                                      # schedule is fitted to it, the best epoch kept
    resume: bool = False              # continue the run in `out` from RUN/checkpoints/

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (e.g. parsed YAML), rejecting unknown keys with the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown configuration keys {unknown}. Valid keys are: "
                              f"{sorted(known)}.")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def source(self) -> SourceOptions:
        """How `data` (and `val`) are read."""
        names = {f.name for f in fields(SourceOptions)} - {"check_files"}
        return SourceOptions(**{k: getattr(self, k) for k in names})

    def estimator_params(self) -> dict:
        """The subset of settings that are `ImageClassifier` parameters."""
        skip = ({"data", "out", "val", "strict", "report", "preflight"} | _REGRESSION_ONLY
                | {f.name for f in fields(SourceOptions)})
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def regressor_params(self) -> dict:
        """The subset of settings that are `ImageRegressor` parameters.

        Raises:
            ConfigError: a setting only classes have (balance, class weights, per-class
                draws, logit adjustment) was given.
        """
        defaults = TrainConfig()
        given = [name for name in _CLASSIFICATION_ONLY
                 if getattr(self, name) != getattr(defaults, name)]
        if given:
            options = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            raise ConfigError(f"{options} balance classes; a regression has none. Leave "
                              f"{'it' if len(given) == 1 else 'them'} out.")
        if self.threshold != defaults.threshold:
            raise ConfigError("--threshold applies to multi-label models; a regression "
                              "predicts a number.")
        params = self.estimator_params()
        for name in (*_CLASSIFICATION_ONLY, "threshold"):
            params.pop(name)
        return {**params, "loss": self.loss, "interval": self.interval}


_REGRESSION_ONLY = {"loss", "interval"}
_CLASSIFICATION_ONLY = ("balance", "class_weight", "max_per_class", "logit_adjustment")
