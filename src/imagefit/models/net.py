"""The classifier network: backbone -> embedding -> head, plus a calibration temperature.
Bottleneck features, head-only training and fine-tuning are three uses of this one module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imagefit.errors import ModelFormatError
from imagefit.models.backbones import build_for_loading


def make_head(in_features: int, n_classes: int, dropout: float) -> nn.Sequential:
    """Dropout then a linear layer: the head trained on bottleneck features."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_classes))


class ImageClassifierNet(nn.Module):
    """`backbone` (images -> features) followed by `head` (features -> logits).

    `temperature` divides the logits before the softmax (1.0 until calibrated).
    """

    def __init__(self, backbone: nn.Module, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(backbone.num_features, n_classes, dropout)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def n_outputs(self) -> int:
        """The head's outputs: one per class (one value for a regression)."""
        return self.head[-1].out_features

    def calibrated_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return calibrated_proba(logits, self.temperature)


def calibrated_proba(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Softmax of the logits divided by the calibration temperature."""
    return torch.softmax(logits / temperature, dim=-1)


class StoredNet:
    """A network, or the saved weights of one built into an `ImageClassifierNet` only when
    first needed: prediction from a cached backbone graph needs the head alone, and so never
    imports timm.

    Args:
        backbone, image_size: the architecture (a registry or timm name, the input side).
        n_classes, dropout: the head's shape.
        state: the whole network's tensors (`ImageClassifierNet.state_dict()`).
        net: the network itself, already built (see `of`).

    Raises:
        ValueError, RuntimeError: the head's weights do not fit `n_classes`.
    """

    def __init__(self, backbone: str | None, image_size: int | None, n_classes: int,
                 dropout: float, state: dict[str, torch.Tensor], *,
                 net: ImageClassifierNet | None = None):
        self.backbone, self.image_size = backbone, image_size
        self.n_classes, self.dropout, self.state = n_classes, dropout, state
        self._net = net
        if net is not None:
            self.in_features = net.head[1].in_features
            self.head, self.temperature = net.head, net.temperature
            return
        weight = state.get("head.1.weight")
        if weight is None or weight.ndim != 2 or weight.shape[0] != n_classes:
            found = None if weight is None else tuple(weight.shape)
            raise ValueError(f"the head's weights {found} do not fit {n_classes} classes")
        self.in_features = int(weight.shape[1])
        self.temperature = state.get("temperature", torch.ones(()))
        self.head = make_head(self.in_features, n_classes, dropout).eval()
        self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()
                                   if k.startswith("head.")})

    @classmethod
    def of(cls, net: ImageClassifierNet) -> "StoredNet":
        """A built network (e.g. one just trained), behind the same interface."""
        return cls(None, None, net.head[1].out_features, net.head[0].p, {}, net=net)

    @property
    def built(self) -> bool:
        return self._net is not None

    @property
    def net(self) -> ImageClassifierNet:
        """The whole network, weights loaded, in eval mode; built on first use.

        Raises:
            ModelFormatError: the backbone's weights do not fit its architecture.
        """
        if self._net is None:
            try:
                net = ImageClassifierNet(build_for_loading(self.backbone, self.image_size),
                                         self.n_classes, self.dropout)
                net.load_state_dict(self.state)
            except Exception as exc:  # timm and torch raise their own types
                raise ModelFormatError(f"The model could not be rebuilt from its metadata: "
                                       f"{type(exc).__name__}: {exc}") from None
            self._net, self.head, self.temperature = net.eval(), net.head, net.temperature
        return self._net

    def calibrated_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return calibrated_proba(logits, self.temperature)

    def outputs(self, features: np.ndarray) -> np.ndarray:
        """The head's raw outputs from backbone features (logits; a regression's value)."""
        with torch.no_grad():
            return self.head.eval()(torch.from_numpy(np.asarray(features, np.float32))).numpy()

    def proba(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from backbone features (the head plus temperature)."""
        with torch.no_grad():
            return self.calibrated_proba(torch.from_numpy(self.outputs(features))).numpy()
