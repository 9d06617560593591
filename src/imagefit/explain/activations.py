"""Intermediate activations: which modules of a backbone count as its stages, capturing their
outputs with forward hooks (removed again before returning), and drawing each stage's channels as
a PNG-ready grid. Also the small numpy colormaps that `explain` draws with (no matplotlib).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imagefit.errors import ConfigError
from imagefit.models.backbones import SimpleCNN, to_input

# At most this many channels per grid: enough to see what a stage responds to, small enough
# to stay a glanceable image even for 1280-channel stages.
MAX_CHANNELS = 32
# Every tile is upscaled (nearest neighbour, so pixels stay honest) to at least this many pixels.
MIN_TILE = 48
SEPARATOR = 255  # white 1-px lines between tiles

# Colormap anchors, evenly spaced on [0, 1] and interpolated linearly in between.
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
JET = ((0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0))


@dataclass(frozen=True)
class Stage:
    """One stage of a backbone: a file-friendly name and the module whose output is the stage's."""

    name: str
    module: nn.Module


def find_stages(backbone: nn.Module) -> list[Stage]:
    """The stages of a backbone, input to output; empty when none can be recognised.

    timm EfficientNets give the stem (`bn1`), each of `blocks[i]` and the 1x1 head conv (`bn2`);
    imagefit's `SimpleCNN` gives its three conv blocks; other timm models their `feature_info`
    modules, else the items of their top-level `nn.Sequential` / `nn.ModuleList` children.

    Example:
        >>> [s.name for s in find_stages(SimpleCNN(32))]
        ['block_0', 'block_1', 'block_2']
    """
    if isinstance(backbone, SimpleCNN):
        return _simple_cnn_stages(backbone)
    if all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks")):
        return _efficientnet_stages(backbone)
    return _feature_info_stages(backbone) or _container_stages(backbone)


def _simple_cnn_stages(backbone: SimpleCNN) -> list[Stage]:
    # A block ends at its pooling layer; hooking the conv would see ReLU(inplace) rewrite it.
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    return [Stage(f"block_{i}", m) for i, m in enumerate(pools)]


def _efficientnet_stages(backbone: nn.Module) -> list[Stage]:
    stages = [Stage("stem", backbone.bn1)]
    stages += [Stage(f"block_{i}", block) for i, block in enumerate(backbone.blocks)]
    # The 1x1 head conv is the last convolutional layer, Grad-CAM's usual target.
    if isinstance(getattr(backbone, "conv_head", None), nn.Conv2d) and hasattr(backbone, "bn2"):
        stages.append(Stage("head", backbone.bn2))
    return stages


def _feature_info_stages(backbone: nn.Module) -> list[Stage]:
    info = getattr(backbone, "feature_info", None)
    if not isinstance(info, (list, tuple)):
        return []
    stages = []
    for entry in info:
        name = entry.get("module") if isinstance(entry, dict) else None
        try:
            module = backbone.get_submodule(name) if name else None
        except AttributeError:  # feature_info naming a module this build does not have
            module = None
        if module is not None:
            stages.append(Stage(name.replace(".", "_"), module))
    return stages


def _container_stages(backbone: nn.Module) -> list[Stage]:
    stages = []
    for parent, child in backbone.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages += [Stage(f"{parent}_{i}", item) for i, item in enumerate(child)]
    return stages


def capture_activations(net: nn.Module, stages: list[Stage], image: np.ndarray,
                        prep) -> list[torch.Tensor | None]:
    """Run `net` on one image and return each stage's output (first batch item, on the CPU).

    A stage that did not run, or whose output is not a tensor, gives None. Hooks are removed and
    the modules' train/eval modes restored before returning, whatever happens.

    Args:
        net: the module to run (`clf.net_`); its stages must be among its submodules.
        stages: from `find_stages`.
        image: uint8 (S, S, 3), already at the model's input size.
        prep: the model's `Preprocessing`.

    Example:
        >>> acts = capture_activations(clf.net_, find_stages(clf.net_.backbone), img,
        ...                            clf.preprocessing_)            # doctest: +SKIP
        >>> acts[0].shape                                             # doctest: +SKIP
        torch.Size([32, 16, 16])
    """
    outputs: list[torch.Tensor | None] = [None] * len(stages)

    def keep(i):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                outputs[i] = output[0].detach().float().cpu().clone()
        return hook

    handles = [s.module.register_forward_hook(keep(i)) for i, s in enumerate(stages)]
    modes = eval_modes(net)
    try:
        with torch.no_grad():
            net(input_tensor(net, image, prep))
    finally:
        for handle in handles:
            handle.remove()
        restore_modes(modes)
    return outputs


def input_tensor(net: nn.Module, image: np.ndarray, prep) -> torch.Tensor:
    """One uint8 (S, S, 3) image as the (1, 3, S, S) input of `net`, on `net`'s device."""
    check_image(image, prep.image_size)
    device = next(net.parameters(), torch.zeros(())).device
    return torch.from_numpy(to_input(image[None], prep)).to(device)


def check_image(image: np.ndarray, size: int) -> None:
    """Refuse anything but a uint8 (size, size, 3) array (the model's input size is fixed)."""
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8
            or image.shape != (size, size, 3)):
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ConfigError(f"The 'image' parameter must be a uint8 array of shape "
                          f"({size}, {size}, 3) (load it with imagefit.load_image(path, {size})). "
                          f"Got {got} instead.")


def eval_modes(net: nn.Module) -> dict[nn.Module, bool]:
    """Put `net` in eval mode (dropout off, BatchNorm frozen); returns the modes to restore."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    return modes


def restore_modes(modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training


def activation_grid(activation: torch.Tensor | np.ndarray, *,
                    max_channels: int = MAX_CHANNELS, colormap=VIRIDIS) -> np.ndarray:
    """Tile the first `max_channels` channels of a (C, H, W) activation into an RGB uint8 grid.

    Each channel is min-max normalised to 0-255 on its own (a constant channel is black), upscaled
    with nearest neighbour so every tile is at least `MIN_TILE` pixels, coloured with `colormap`
    (None: greyscale), and separated from its neighbours by a 1-px white line.

    Raises:
        ConfigError: the activation is not 3-D (C, H, W).

    Example:
        >>> activation_grid(np.random.rand(4, 2, 2).astype(np.float32)).shape
        (97, 97, 3)
    """
    act = activation.numpy() if isinstance(activation, torch.Tensor) else np.asarray(activation)
    if act.ndim != 3 or 0 in act.shape:
        raise ConfigError(f"An activation grid needs a (channels, height, width) array. "
                          f"Got shape {act.shape} instead.")
    act = act[:max_channels].astype(np.float64)
    lo = act.min(axis=(1, 2), keepdims=True)
    span = act.max(axis=(1, 2), keepdims=True) - lo
    # Where a channel is constant, divide by 1 instead of 0: it comes out all zeros, not NaN.
    tiles = (act - lo) / np.where(span > 0, span, 1.0)
    scale = max(1, math.ceil(MIN_TILE / min(act.shape[1:])))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = tiles.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), SEPARATOR, np.uint8)
    coloured = apply_colormap(tiles, colormap)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = coloured[i]
    return grid


def apply_colormap(values: np.ndarray, anchors=JET) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (shape + (3,)); None anchors: greyscale.

    Example:
        >>> apply_colormap(np.array([0.0, 1.0]), JET).tolist()
        [[0, 0, 128], [128, 0, 0]]
    """
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, 1.0)
    if anchors is None:
        return np.repeat(np.rint(v * 255)[..., None], 3, axis=-1).astype(np.uint8)
    table = np.asarray(anchors, np.float64)
    points = np.linspace(0.0, 1.0, len(table))
    rgb = [np.interp(v, points, table[:, ch]) for ch in range(3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)
