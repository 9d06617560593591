"""Exporting a fitted model to a file that runs without imagefit: ONNX (for ONNX Runtime) or
TorchScript. The exported graph takes uint8 RGB images already resized to the model's size and
returns calibrated probabilities (a classifier; per label for a multi-label one) or the value
and its prediction interval (a regression); the export verifies itself against PyTorch before
it is kept.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from imagefit._fileio import atomic_write_bytes
from imagefit._validation import check_choice, check_is_fitted
from imagefit._version import __version__
from imagefit.data.images import load_image
from imagefit.errors import ExportError, ImageLoadError
from imagefit.estimator import ImageClassifier
from imagefit.export import FORMATS, TOLERANCE

INPUT_DESCRIPTION = ("uint8 RGB images, shape (batch, {s}, {s}, 3), each decoded with EXIF "
                     "orientation applied, transparency composited over {bg}, and resized to "
                     "{s}x{s} ignoring aspect ratio (bilinear); the resize is not in the graph")


class DeployableClassifier(nn.Module):
    """uint8 (N, S, S, 3) RGB -> calibrated probabilities (N, K): normalisation, backbone,
    head and temperature in one module."""

    def __init__(self, clf: ImageClassifier):
        super().__init__()
        prep = clf.preprocessing_
        self.net = clf.net_
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std)
        self.register_buffer("offset", torch.tensor(prep.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale", torch.tensor(prep.std).view(1, 3, 1, 1) * 255)

    def outputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.permute(0, 3, 1, 2).float() - self.offset) / self.scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.outputs(images) / self.net.temperature, dim=-1)


class DeployableRegressor(DeployableClassifier):
    """uint8 (N, S, S, 3) RGB -> (N, 3): the value, then the lower and upper bounds of its
    prediction interval, in the target's unit (infinite bounds where unbounded)."""

    def __init__(self, reg):
        super().__init__(reg)
        target = reg.objective_
        self.register_buffer("target", torch.tensor([target.scale, target.mean,
                                                     reg.halfwidth_], dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        value = self.outputs(images)[:, 0] * self.target[0] + self.target[1]
        return torch.stack([value, value - self.target[2], value + self.target[2]], dim=1)


class DeployableTagger(DeployableClassifier):
    """uint8 (N, S, S, 3) RGB -> (N, K): each label's calibrated probability (per-label Platt
    scaling of the sigmoid head's logits)."""

    def __init__(self, clf: ImageClassifier):
        super().__init__(clf)
        a, b = clf.platt_
        self.register_buffer("platt_a", torch.tensor(a, dtype=torch.float32).view(1, -1))
        self.register_buffer("platt_b", torch.tensor(b, dtype=torch.float32).view(1, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.outputs(images) * self.platt_a + self.platt_b)


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    n_verified: int
    verified_on: str  # "validation images", "given images" or "random images"


def export_model(clf: ImageClassifier, out: str | os.PathLike, *, format: str = "onnx",
                 verify_images: Sequence[str | os.PathLike] = (), max_verify: int = 32
                 ) -> ExportResult:
    """Export `clf` and verify the file reproduces PyTorch's probabilities within `TOLERANCE`.

    Args:
        clf: a fitted classifier.
        out: the file to write (written only if verification passes).
        format: "onnx" or "torchscript".
        verify_images: real images to verify on (e.g. the validation set); random images are
            used only when none is given or none decodes.

    Raises:
        ExportError: the export fails, or its outputs differ from PyTorch's.

    Example:
        >>> export_model(load_model("runs/x"), "model.onnx", verify_images=paths)  # doctest: +SKIP
        ExportResult(path=PosixPath('model.onnx'), format='onnx', max_abs_diff=2.9e-07, ...)
    """
    check_choice("format", format, FORMATS)
    regression = hasattr(clf, "halfwidth_")
    check_is_fitted(clf, "halfwidth_" if regression else "classes_")
    multilabel = not regression and clf.multilabel_
    deployable = (DeployableRegressor if regression else DeployableTagger if multilabel
                  else DeployableClassifier)
    module = deployable(clf).eval().cpu()
    images, source = _verification_batch(clf, verify_images, max_verify)
    with torch.no_grad():
        expected = module(torch.from_numpy(images)).numpy()
    try:
        data = (_export_onnx(module, clf) if format == "onnx"
                else _export_torchscript(module, images))
        got = _run_onnx(data, images) if format == "onnx" else _run_torchscript(data, images)
    except Exception as exc:  # exporters and runtimes raise many types
        raise ExportError(f"{format} export failed: {type(exc).__name__}: {exc}") from None
    # A regression's values compare in units of the targets' standard deviation, less a few
    # float32 steps at their size (values of 2,000 with a scale of 1 differ by 1e-4 per step).
    unit = clf.objective_.scale if regression else 1.0
    finite = np.abs(expected[np.isfinite(expected)])
    slack = 4 * float(np.spacing(np.float32(finite.max(initial=0.0)))) if regression else 0.0
    diff = max(_largest_difference(got, expected) - slack, 0.0) / unit
    if not diff <= TOLERANCE:
        what = "value difference (in standard deviations)" if regression else "probability " \
            "difference"
        raise ExportError(f"The {format} export does not reproduce the PyTorch model: largest "
                          f"{what} {diff:.2e} > {TOLERANCE:.0e} on {len(images)} {source}. "
                          f"Nothing was written.")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return ExportResult(path, format, diff, len(images), source)


def _largest_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected|, equal infinities counting as equal; inf for another shape."""
    if got.shape != expected.shape:
        return float("inf")
    return float(np.where(got == expected, 0.0, np.abs(got - expected)).max(initial=0.0))


def _verification_batch(clf: ImageClassifier, paths, limit: int) -> tuple[np.ndarray, str]:
    prep = clf.preprocessing_
    decoded = []
    for path in list(paths)[:limit * 2]:
        try:
            decoded.append(load_image(path, prep.image_size, background=prep.background))
        except ImageLoadError:
            continue
        if len(decoded) == limit:
            break
    if decoded:
        return np.stack(decoded), "given images"
    rng = np.random.default_rng(0)
    size = prep.image_size
    return rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), "random images"


def _export_onnx(module: nn.Module, clf: ImageClassifier) -> bytes:
    import onnx

    size = clf.preprocessing_.image_size
    regression = isinstance(module, DeployableRegressor)
    output = "prediction" if regression else "probabilities"
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, size, size, 3, dtype=torch.uint8),), buffer,
                          input_names=["images"], output_names=[output],
                          dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}},
                          opset_version=17, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    bg = clf.preprocessing_.background
    multilabel = isinstance(module, DeployableTagger)
    meta = {
        "imagefit.task": ("regress" if regression else "multilabel" if multilabel
                          else "classify"),
        "imagefit.image_size": str(size),
        "imagefit.preprocessing": json.dumps(clf.preprocessing_.to_dict()),
        "imagefit.backbone": clf.backbone_name_,
        "imagefit.version": __version__,
        "imagefit.input": INPUT_DESCRIPTION.format(s=size, bg=f"RGB{tuple(bg)}"),
    }
    if regression:
        meta["imagefit.interval"] = repr(float(clf.interval))
        meta["imagefit.interval_halfwidth"] = repr(float(clf.halfwidth_))
        meta["imagefit.output"] = ("prediction, shape (batch, 3): the value, then the lower and "
                                   "upper bounds of its imagefit.interval prediction interval "
                                   "(split conformal), in the target's unit")
    elif multilabel:
        meta["imagefit.classes"] = json.dumps(list(clf.classes_), ensure_ascii=True)
        meta["imagefit.thresholds"] = json.dumps([float(t) for t in clf.thresholds_])
        meta["imagefit.output"] = ("probabilities, shape (batch, n_labels): each label's own "
                                   "calibrated probability (they need not sum to 1), in the "
                                   "order of imagefit.classes; a label is predicted where it "
                                   "reaches its entry of imagefit.thresholds")
    else:
        meta["imagefit.classes"] = json.dumps(list(clf.classes_), ensure_ascii=True)
        meta["imagefit.temperature"] = repr(float(clf.temperature_))
        meta["imagefit.output"] = ("probabilities, shape (batch, n_classes), calibrated, in the "
                                   "order of imagefit.classes")
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    kind = "regressor" if regression else "classifier"
    model.doc_string = f"imagefit {__version__} image {kind} ({clf.backbone_name_})"
    return model.SerializeToString()


def _run_onnx(data: bytes, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def _export_torchscript(module: nn.Module, images: np.ndarray) -> bytes:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.from_numpy(images[:1]))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _run_torchscript(data: bytes, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data))  # our own bytes, just written
        return loaded(torch.from_numpy(images)).numpy()
