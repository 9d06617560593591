"""Seed handling. Randomness is drawn from generators made from a seed, never from hidden global
state in datasets; this module seeds the global generators once per run for library code
(weight initialisation) that uses them.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy and PyTorch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
