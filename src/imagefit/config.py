"""The training configuration: one frozen dataclass with commented defaults. `from_mapping`
(used for `--config FILE.yaml`) rejects unknown keys, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""                    # dataset folder (class sub-folders, or train/ + val/) or CSV
    out: str | None = None            # run folder; default runs/<timestamp>
    val: str | None = None            # a separate validation folder (same class names)
    val_fraction: float = 0.2         # share of each class held out when there is no val folder
    mode: str = "probe"               # probe: head on frozen pretrained features; scratch: whole net
    backbone: str | None = None       # default efficientnet_lite0 (probe) / simple_cnn (scratch)
    weights: str | None = None        # .safetensors backbone weights (timm models offline)
    image_size: int | None = None     # default: the backbone's own (224 for efficientnet_lite0)
    balance: str = "auto"             # auto | weights | none  (class weights for imbalance)
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

    def estimator_params(self) -> dict:
        """The subset of settings that are `ImageClassifier` parameters."""
        skip = {"data", "out", "val", "strict", "report"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}
