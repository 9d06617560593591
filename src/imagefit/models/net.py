"""The classifier network: backbone -> embedding -> head, plus a calibration temperature.
Bottleneck features, head-only training and fine-tuning are three uses of this one module.
"""

from __future__ import annotations

import torch
from torch import nn


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

    def calibrated_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)
