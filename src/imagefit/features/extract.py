"""Running a frozen backbone over image files in streaming fashion. Decoding happens in DataLoader
workers (uint8 batches, small to pass between processes), the backbone in the main process: ONNX
Runtime on CPU (about 2.5x eager PyTorch for EfficientNet-Lite0 on 2 cores, same outputs to 1e-5),
PyTorch on a GPU or where ONNX Runtime is missing. Memory stays bounded by one batch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imagefit._fileio import atomic_write_bytes, remove_orphans, sha256_file
from imagefit.data.images import DEFAULT_MAX_PIXELS, load_image
from imagefit.data.index import BadFile
from imagefit.data.text import as_text
from imagefit.errors import CacheError, ConfigError, ImageLoadError
from imagefit.features.store import FeatureStore
from imagefit.models.backbones import Preprocessing, to_input
from imagefit.models.net import StoredNet
from imagefit.progress import progress_bar

log = logging.getLogger(__name__)
# Largest absolute difference between ONNX Runtime and PyTorch features we accept.
ORT_TOLERANCE = 1e-3
# Bump when `load_image` changes the pixels it returns: it invalidates decoded-image caches.
DECODER_VERSION = 2


class ImageFiles(Dataset):
    """Decodes files to working-size uint8 arrays; a failure becomes a (reason, message) value,
    not a raise (a worker that raises kills the whole DataLoader)."""

    def __init__(self, paths: np.ndarray, prep: Preprocessing,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths = as_text(paths)
        self.prep = prep
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[str, str] | None]:
        size = self.prep.image_size
        try:
            return load_image(str(self.paths[i]), size, max_pixels=self.max_pixels,
                              background=self.prep.background), None
        except ImageLoadError as exc:
            return np.zeros((size, size, 3), np.uint8), (exc.reason, exc.message)


def _collate(items: list) -> tuple[np.ndarray, list[tuple[str, str] | None]]:
    return np.stack([item[0] for item in items]), [item[1] for item in items]


def iter_image_batches(paths: np.ndarray, prep: Preprocessing, *, batch_size: int = 64,
                       workers: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                       ) -> Iterator[tuple[np.ndarray, list[tuple[str, str] | None]]]:
    """Yield (uint8 images (B, S, S, 3), per image None or (reason, message)) batches in input
    order."""
    loader = DataLoader(ImageFiles(paths, prep, max_pixels), batch_size=batch_size,
                        shuffle=False, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False)
    yield from loader


class BackboneRunner:
    """Computes features of preprocessed batches with a frozen backbone.

    Args:
        backbone: the module (its weights define the cache key).
        prep: the preprocessing, for the input shape.
        device: "cpu" or "cuda".
        runtime: "auto" (ONNX Runtime on CPU when available), "onnx" or "torch".
        cache_dir: where exported ONNX graphs are kept between runs.
    """

    def __init__(self, backbone: nn.Module, prep: Preprocessing, *, device: str = "cpu",
                 runtime: str = "auto", cache_dir: str | Path | None = None):
        # A backbone on another device is copied there, never moved: the caller's model (e.g.
        # a fitted classifier, on the CPU) must stay whole for explain, export and save.
        on = next(backbone.parameters(), torch.empty(0)).device
        self.backbone = (backbone if on == torch.device(device)
                         else copy.deepcopy(backbone).to(device)).eval()
        self.prep = prep
        self.device = device
        self.key = model_key(backbone, prep)
        self.dim = int(getattr(backbone, "num_features", 0))  # 0: not a pooled-feature model
        self.session = None
        if runtime in ("auto", "onnx") and device == "cpu" and cache_dir is not None:
            self.session = self._onnx_session(Path(cache_dir), strict=runtime == "onnx")
        self.runtime = "onnx" if self.session is not None else "torch"

    @classmethod
    def from_cached_graph(cls, key: str, dim: int, prep: Preprocessing,
                          cache_dir: str | Path) -> "BackboneRunner | None":
        """A runner from the ONNX graph an earlier run exported and verified for backbone
        `key`, with no PyTorch backbone (so no timm import); None where there is none, ONNX
        Runtime is missing, or the graph no longer matches the checksum recorded when it was
        verified."""
        if not re.fullmatch(r"[0-9a-f]{32}", str(key)):
            return None
        path = Path(cache_dir) / "onnx" / f"{key}.onnx"
        try:
            if sha256_file(path) != path.with_suffix(".sha256").read_text().strip():
                return None
            session = _ort_session(path)
        except (OSError, ImportError):
            return None
        except Exception as exc:  # ONNX Runtime raises its own types for a damaged graph
            log.warning("ONNX Runtime could not load %s (%s); building the backbone", path, exc)
            return None
        runner = cls.__new__(cls)
        runner.backbone, runner.prep, runner.device, runner.key = None, prep, "cpu", key
        runner.dim, runner.session, runner.runtime = dim, session, "onnx"
        return runner

    @classmethod
    def of_model(cls, stored: StoredNet, key: str | None, prep: Preprocessing, *, device: str,
                 cache_dir: str | Path) -> "BackboneRunner":
        """The runner of a classifier's backbone: a loaded model that has not built its
        backbone runs the graph verified for its `key` (as stored in model.json) if the cache
        holds it; any other runs its backbone (exported and verified on first use)."""
        runner = None
        if not stored.built and device == "cpu" and key is not None:
            runner = cls.from_cached_graph(key, stored.in_features, prep, cache_dir)
        return runner or cls(stored.net.backbone, prep, device=device, cache_dir=cache_dir)

    def store(self, cache_dir: str | Path) -> FeatureStore:
        """The feature store of this backbone and preprocessing."""
        return FeatureStore(cache_dir, self.key, self.dim)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = to_input(images, self.prep)
        if self.session is not None:
            return self.session.run(None, {"images": x})[0]
        with torch.inference_mode():
            return self.backbone(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def _onnx_session(self, cache_dir: Path, strict: bool):
        try:
            import onnxruntime  # noqa: F401  (the session is made below, once a graph exists)
        except ImportError:
            if strict:
                raise
            log.warning("onnxruntime is not installed; using PyTorch for feature extraction")
            return None
        path = cache_dir / "onnx" / f"{self.key}.onnx"
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                remove_orphans(path.parent.glob(".tmp-*"))
                atomic_write_bytes(path, export_onnx_bytes(self.backbone, self.prep))
        except Exception as exc:  # the exporter raises many types; the cache may refuse a file
            if strict:
                raise CacheError(f"Could not export the backbone to ONNX: {exc}") from None
            log.warning("Could not export the backbone to ONNX Runtime (%s: %s); using PyTorch",
                        type(exc).__name__, exc)
            return None
        record = path.with_suffix(".sha256")  # written once the graph has been verified
        try:
            session = _ort_session(path)
        except Exception as exc:
            path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            if strict:
                raise CacheError(f"Could not load the exported backbone: {exc}") from None
            log.warning("ONNX Runtime could not load the backbone (%s); using PyTorch", exc)
            return None
        # Never trust a graph we cannot reproduce: compare with PyTorch on a fixed batch.
        probe = np.random.default_rng(0).integers(0, 256, (2, self.prep.image_size,
                                                           self.prep.image_size, 3), np.uint8)
        x = to_input(probe, self.prep)
        with torch.inference_mode():
            expected = self.backbone(torch.from_numpy(x).to(self.device)).numpy()
        got = session.run(None, {"images": x})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, atol=ORT_TOLERANCE):
            path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            log.warning("ONNX Runtime features differ from PyTorch; using PyTorch")
            return None
        try:  # lets a loaded model predict from this graph without building the backbone
            digest = sha256_file(path)
            if not record.exists() or record.read_text().strip() != digest:
                atomic_write_bytes(record, digest.encode())
        except OSError as exc:  # a read-only cache still serves this run
            log.debug("Could not record the verified graph %s: %s", path, exc)
        return session


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class DecodeRunner:
    """The identity "runner": its rows are the decoded uint8 images themselves, so
    `compute_features` with it fills the decoded-image cache (decode once, augment every epoch).
    """

    dtype = np.uint8
    runtime = "decode"
    description = "Decoding images"

    def __init__(self, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.prep = prep
        size = prep.image_size
        self.dim = (size, size, 3)
        settings = {"size": size, "background": list(prep.background), "resize": prep.resize,
                    "interpolation": prep.interpolation, "max_pixels": max_pixels,
                    "decoder": DECODER_VERSION}
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return images

    def store(self, cache_dir: str | Path) -> FeatureStore:
        """The decoded-image cache for these settings."""
        return FeatureStore(cache_dir, self.key, self.dim, dtype=np.uint8, kind="images")


def export_onnx_bytes(module: nn.Module, prep: Preprocessing) -> bytes:
    """Export a module taking (N, 3, S, S) `images` to ONNX, with a dynamic batch axis."""
    size = prep.image_size
    dummy = torch.zeros(1, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval().cpu(), (dummy,), buffer, input_names=["images"],
                          output_names=["output"], dynamic_axes={"images": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return buffer.getvalue()


def model_key(backbone: nn.Module, prep: Preprocessing) -> str:
    """Content key of a backbone's weights plus preprocessing (the feature store's folder)."""
    digest = hashlib.sha256(json.dumps({"prep": prep.to_dict(), "v": 1}, sort_keys=True).encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _gather_stored(store: FeatureStore, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy every stored row into `out`; return the mask of rows still to compute.

    A chunk that fails validation is removed by the store; gathering then starts again, so the
    rows of intact chunks are still copied and only the damaged chunk's rows are recomputed.
    Each retry removes one chunk, so more retries than chunks means a chunk cannot be removed
    (e.g. a read-only cache): that is an error, not a reason to loop.
    """
    attempts = len(list(store.folder.glob("chunk-*.json"))) + 1
    for _ in range(attempts):
        missing = store.missing(keys)
        try:
            for start in range(0, len(keys), 4096):
                rows = np.flatnonzero(~missing[start:start + 4096]) + start
                if len(rows):
                    out[rows] = store.get(keys[rows])
            return missing
        except CacheError as exc:
            log.warning("%s", exc)
    raise CacheError(f"The feature store {store.folder} has damaged chunks that cannot be "
                     f"removed; delete that folder (it is only a cache) or set IMAGEFIT_CACHE.")


@dataclass
class FeatureResult:
    """Features of an index's rows; `failures[i]` is the `BadFile` of a row whose file failed
    at run time (None otherwise)."""

    features: np.ndarray
    n_computed: int
    failures: list[BadFile | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([f is None for f in self.failures], dtype=bool)

    @property
    def failed(self) -> list[BadFile]:
        return [f for f in self.failures if f is not None]


@dataclass
class Predictions:
    """Predictions over files: calibrated probabilities, NaN rows where a file failed
    (`failures[i]` says why; `errors[i]` is the same as "reason: message", "" when fine)."""

    paths: np.ndarray
    proba: np.ndarray
    classes: tuple[str, ...]
    failures: list[BadFile | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([f is None for f in self.failures], dtype=bool)

    @property
    def errors(self) -> list[str]:
        return error_texts(self.failures)


def error_texts(failures: list[BadFile | None]) -> list[str]:
    """'reason: message' of each failed file, '' for the others (a CSV's error column)."""
    return ["" if f is None else f"{f.reason}: {f.message}" for f in failures]


class FlipViews:
    """Wraps a backbone runner: features of each image and of its flips, side by side."""

    def __init__(self, runner: BackboneRunner, flips: tuple[str, ...]):
        self.runner, self.prep, self.runtime = runner, runner.prep, runner.runtime
        self.n_views = 1 + len(flips)
        self.flips = flips
        self.dim = runner.dim * self.n_views

    @classmethod
    def trained(cls, runner: BackboneRunner, augment) -> "FlipViews":
        """The flips a model was trained with (test-time augmentation); none is an error."""
        flips = tuple(name for name, used in (("horizontal", augment.horizontal_flip),
                                              ("vertical", augment.vertical_flip)) if used)
        if not flips:
            raise ConfigError("Test-time augmentation averages over the flips the model was "
                              "trained with, and this model was trained without flips; predict "
                              "without --tta.")
        return cls(runner, flips)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        views = [images] + [np.ascontiguousarray(images[:, :, ::-1] if flip == "horizontal"
                                                 else images[:, ::-1]) for flip in self.flips]
        return np.concatenate([self.runner(v) for v in views], axis=1)


class StoreFiller:
    """Fills a runner's feature store from images decoded elsewhere (the pre-flight decodes
    every file anyway): call it with (key, uint8 image) per file; rows are batched through the
    runner and stored, rows already stored are skipped, leaving the block commits the rest.
    `compute_features` then finds them stored and decodes nothing: a cold run decodes each
    file once. A row that could not be stored (non-finite, a cache that refuses writes) is
    simply computed there, from its file.

    The runner is made on first use (`make_runner`), so that the pre-flight's decoding
    processes are forked before the backbone and its runtime exist (lean, fork-safe workers),
    and the backbone is built while they decode.

    Example:
        >>> with StoreFiller(make_runner, cache_dir) as fill:     # doctest: +SKIP
        ...     checked = preflight(index, image_size=size, on_decoded=fill)
        >>> runner, store = fill.runner, fill.store               # doctest: +SKIP
    """

    def __init__(self, make_runner: Callable[[], BackboneRunner], cache_dir: str | Path,
                 batch_size: int = 64):
        self.make_runner, self.cache_dir, self.batch_size = make_runner, cache_dir, batch_size
        self.keys: list[str] = []
        self.images: list[np.ndarray] = []
        self._runner = self.store = self.writer = None
        self.refused = False
        self.n_computed = 0

    @property
    def runner(self) -> BackboneRunner:
        """The runner (made now if no image came), its `store` and a writer beside it."""
        if self._runner is None:
            self._runner = self.make_runner()
            self.store = self._runner.store(self.cache_dir)
            self.writer = self.store.writer()
        return self._runner

    def __call__(self, key: str, image: np.ndarray) -> None:
        self.keys.append(key)
        self.images.append(image)
        if len(self.keys) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Compute and buffer the rows of the images held (committed in store chunks)."""
        keys, images = self.keys, self.images
        self.keys, self.images = [], []
        if not keys or self.refused:
            return
        runner = self.runner
        unique, first = np.unique(np.array(keys), return_index=True)
        with self._unless_the_cache_refuses():
            todo = first[self.store.missing(unique)]
            if len(todo):
                feats = runner(np.stack([images[i] for i in todo]))
                finite = np.isfinite(feats).reshape(len(feats), -1).all(axis=1)
                self.writer.add([keys[i] for i in todo[finite]], feats[finite])
                self.n_computed += len(todo)

    @contextlib.contextmanager
    def _unless_the_cache_refuses(self):
        try:
            yield
        except (CacheError, OSError) as exc:  # the rows are computed later, from the files
            log.warning("Could not store features while checking the images (%s); they are "
                        "computed afterwards", exc)
            self.refused = True

    def __enter__(self) -> "StoreFiller":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:  # rows computed before an error are still good: keep them
            if self.writer is not None and not self.refused:
                with self._unless_the_cache_refuses():
                    self.writer.flush()


def compute_features(paths: np.ndarray, runner: BackboneRunner, *, keys: np.ndarray | None = None,
                     store: FeatureStore | None = None, batch_size: int = 64, workers: int = 0,
                     max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
                     out: np.ndarray | None = None, bar=None) -> FeatureResult:
    """Features for every path, reusing stored rows and storing new ones.

    Args:
        paths: image files.
        runner: the frozen backbone.
        keys: content hashes of the files (required with `store`).
        store: a `FeatureStore`; rows found there are not recomputed.
        out: an (N, D) float32 array (e.g. a memory map) to write into; default in memory.
        bar: a progress bar to advance instead of making one (for callers that chunk).

    Returns:
        `FeatureResult`; failed rows hold zeros and are listed with their reason.
    """
    n = len(paths)
    row_shape = (runner.dim,) if isinstance(runner.dim, int) else tuple(runner.dim)
    out = np.zeros((n, *row_shape), getattr(runner, "dtype", np.float32)) if out is None else out
    failures: list[BadFile | None] = [None] * n
    todo = np.arange(n)
    if store is not None:
        if keys is None:
            raise ValueError("keys are required with a store")
        todo = np.flatnonzero(_gather_stored(store, keys, out))
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(total=len(todo), desc=getattr(runner, "description",
                                                         f"Extracting features ({runner.runtime})"),
                           unit="img", enabled=progress and len(todo) > 0)
    writer = store.writer() if store is not None else None
    position = 0
    try:
        batches = iter_image_batches(paths[todo], runner.prep, batch_size=batch_size,
                                     workers=workers, max_pixels=max_pixels) if len(todo) else ()
        for images, batch_errors in batches:
            rows = todo[position:position + len(images)]
            position += len(images)
            good = np.array([e is None for e in batch_errors])
            for row, error in zip(rows, batch_errors):
                if error is not None:
                    failures[row] = BadFile(str(paths[row]), *error)
            if good.any():
                feats = runner(images[good])
                finite = np.isfinite(feats).reshape(len(feats), -1).all(axis=1)
                for row in rows[good][~finite]:
                    failures[row] = BadFile(str(paths[row]), "corrupt", "non-finite features")
                if not finite.all():
                    feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
                out[rows[good]] = feats
                if writer is not None:
                    writer.add(list(keys[rows[good]][finite]), feats[finite])
            bar.update(len(images))
    finally:
        if writer is not None:
            writer.flush()
        if own_bar:
            bar.close()
    return FeatureResult(out, len(todo), failures)


def raise_first_failure(failures: list[BadFile | None], paths: np.ndarray) -> None:
    """Raise the `ImageLoadError` of the first failed file, naming it (no-op if none)."""
    for path, failure in zip(paths, failures):
        if failure is not None:
            raise failure.error(f"[{path}]")
