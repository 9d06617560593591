"""Grad-CAM (Selvaraju et al. 2017): where in the image the last convolutional stage saw evidence
for a class, from the gradient of that class's logit. Computed in PyTorch on `clf.net_`, leaving
the model as it was (eval mode, no hooks, parameters' `requires_grad` untouched); plus `overlay`,
which blends a heatmap over the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagefit.errors import ConfigError
from imagefit.explain.activations import (
    JET,
    Stage,
    apply_colormap,
    eval_modes,
    find_stages,
    input_tensor,
    restore_modes,
)

DEFAULT_ALPHA = 0.45


def gradcam(clf, image: np.ndarray, class_index: int) -> np.ndarray:
    """The Grad-CAM heatmap of one class for one image, at the image's size.

    Channel weights are the spatial means of d(logit)/d(activation) of the last convolutional
    stage; the map is ReLU(weighted sum of channels), upsampled bilinearly to the image size and
    divided by its maximum. The logit is taken before temperature and softmax, as in the paper.

    Args:
        clf: a fitted `ImageClassifier` (or `ImageRegressor`: its value is index 0).
        image: uint8 (S, S, 3) with S = `clf.preprocessing_.image_size`
            (`imagefit.load_image(path, S, background=clf.preprocessing_.background)`).
        class_index: the class, an index into `clf.classes_`.

    Returns:
        float32 (S, S) in [0, 1]; all zeros where no region supports the class.

    Raises:
        ConfigError: a bad image or class index, or a backbone with no convolutional stage.

    Example:
        >>> img = imagefit.load_image("cat.jpg", clf.preprocessing_.image_size)  # doctest: +SKIP
        >>> gradcam(clf, img, clf.classes_.index("cat")).shape                   # doctest: +SKIP
        (224, 224)
    """
    n_classes = clf.net_.n_outputs  # a regression's single output is index 0
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) \
            or not 0 <= class_index < n_classes:
        raise ConfigError(f"The 'class_index' parameter must be an int in [0, {n_classes - 1}]. "
                          f"Got {class_index!r} instead.")
    net = clf.net_
    x = input_tensor(net, image, clf.preprocessing_)
    activation, grad = _last_activation_and_gradient(net, find_stages(net.backbone), x,
                                                     int(class_index))
    weights = grad.mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=0))
    cam = F.interpolate(cam[None, None], size=image.shape[:2], mode="bilinear",
                        align_corners=False)[0, 0]
    return _normalised(cam.numpy())


def _last_activation_and_gradient(net: nn.Module, stages: list[Stage], x: torch.Tensor,
                                  class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last convolutional stage's activation (C, H, W) and d(logit)/d(activation), on the CPU.

    One forward and one backward pass: every stage with a (N, C, H, W) output is hooked, and the
    last of them in stage order is the one explained.

    Raises:
        ConfigError: no stage gives a feature map (a transformer's tokens, say).
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(i):
        def swap(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                return None
            # Swap in a fresh leaf: its gradient is exactly d(logit)/d(activation), needs no
            # requires_grad on parameters or input, and the clone keeps in-place ops off it.
            leaf = output.detach().requires_grad_(True)
            captured[i] = leaf
            return leaf.clone()
        return swap

    handles = [s.module.register_forward_hook(hook(i)) for i, s in enumerate(stages)]
    modes = eval_modes(net)
    try:
        with torch.enable_grad():
            logits = net(x)
            if not captured:
                raise ConfigError(f"Grad-CAM needs a convolutional stage; no stage of the "
                                  f"{type(net.backbone).__name__} backbone gives a feature map.")
            leaf = captured[max(captured)]
            (grad,) = torch.autograd.grad(logits[0, class_index], leaf, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        restore_modes(modes)
    if grad is None:  # the logit does not depend on this stage: no evidence anywhere
        grad = torch.zeros_like(leaf)
    return leaf[0].detach().float().cpu(), grad[0].float().cpu()


def _normalised(cam: np.ndarray) -> np.ndarray:
    cam = np.nan_to_num(cam.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 1e-12:  # nothing supports the class: an all-zero map, not 0/0
        return np.zeros_like(cam, dtype=np.float32)
    return np.clip(cam / peak, 0.0, 1.0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a jet-coloured heatmap over an image: (1 - alpha) * image + alpha * colour.

    Args:
        image: uint8 (H, W, 3).
        heatmap: (H, W) values in [0, 1] (from `gradcam`).
        alpha: the heatmap's weight, in [0, 1].

    Returns:
        uint8 (H, W, 3).

    Raises:
        ConfigError: mismatched shapes or alpha outside [0, 1].

    Example:
        >>> overlay(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2)), alpha=1.0)[0, 0].tolist()
        [128, 0, 0]
    """
    image = np.asarray(image)
    heatmap = np.asarray(heatmap)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"The 'image' parameter must be a uint8 (H, W, 3) array. "
                          f"Got {image.dtype} {image.shape} instead.")
    if heatmap.shape != image.shape[:2]:
        raise ConfigError(f"The heatmap's shape {heatmap.shape} does not match the image's "
                          f"{image.shape[:2]}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError(f"The 'alpha' parameter must be a float in [0, 1]. "
                          f"Got {alpha!r} instead.")
    colour = apply_colormap(heatmap, JET).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
