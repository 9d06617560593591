"""Images held in arrays: NumPy `(N, H, W)` / `(N, H, W, C)` uint8, `.npz` files and SVHN-style
`.mat` files. Each image is written once, losslessly, as a PNG named by the SHA-256 of its
array bytes in the cache folder (`CACHE/arrays/`): from there on it is an image file like any
other, so the pre-flight, the decoded-image and feature caches, augmentation, the split and
the report's thumbnails work unchanged, and the same pixels are never written twice.
Loading never unpickles (`np.load(allow_pickle=False)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from imagefit._fileio import atomic_write_bytes
from imagefit.data.index import ImageIndex
from imagefit.data.text import concat_text
from imagefit.errors import ConfigError, DatasetError

ARRAY_FOLDER = "arrays"
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def check_image_array(x: Any, name: str = "X") -> np.ndarray:
    """`x` as a uint8 array of shape (N, H, W, C) with C in {1, 3, 4}.

    Raises:
        ConfigError: another dtype, rank or channel count (the message says how to convert).
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        hint = (" If its values are in [0, 1], pass (x * 255).round().astype(np.uint8)."
                if x.dtype.kind == "f" else "")
        raise ConfigError(f"The {name!r} parameter must be a uint8 image array (values 0-255). "
                          f"Got dtype {x.dtype} instead.{hint}")
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        raise ConfigError(f"The {name!r} parameter has shape {x.shape}: one H x W x C image, or "
                          f"N images {x.shape[2]} pixels wide? Pass one image as x[None] "
                          f"(shape (1, H, W, C)); N greyscale images must be over 4 pixels wide.")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in _MODES or 0 in x.shape[1:3]:
        raise ConfigError(f"The {name!r} parameter must have shape (N, H, W) or (N, H, W, C) "
                          f"with C in 1, 3, 4. Got shape {x.shape} instead.")
    return x


def label_names(y: Any, n: int, name: str = "y") -> tuple[list[str], tuple[str, ...]]:
    """(the class name of each row, the classes in order): integer labels in numeric order
    (2 before 10), names in sorted order.

    Raises:
        ConfigError: not one label per image, or labels that are not integers or strings.
    """
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.ravel()  # MATLAB's (N, 1) columns
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"The {name!r} parameter must hold one label per image ({n}). Got "
                          f"shape {y.shape} instead.")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind in "iuUOT":
        names = [str(v) for v in y.tolist()]
        return names, class_order(names)
    raise ConfigError(f"The {name!r} parameter must hold integer or string labels. Got dtype "
                      f"{y.dtype} instead.")


def class_order(names: Sequence[str]) -> tuple[str, ...]:
    """Distinct names, sorted; all-integer names in numeric order (2 before 10)."""
    distinct = set(names)
    try:
        return tuple(sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def array_image_paths(x: np.ndarray, folder: str | os.PathLike) -> list[str]:
    """The PNG file of each image of `x` (already checked) under `folder/arrays/`, written if
    missing. Each file is named by the SHA-256 of the image's shape and bytes."""
    root = Path(folder) / ARRAY_FOLDER
    paths = []
    for image in x:
        digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
        path = root / digest[:2] / f"{digest}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = image[..., 0] if image.shape[-1] == 1 else image
            buffer = io.BytesIO()
            Image.fromarray(pixels, _MODES[image.shape[-1]]).save(buffer, "PNG", compress_level=1)
            atomic_write_bytes(path, buffer.getvalue(), sync=False)
        paths.append(str(path))
    return paths


def from_arrays(x: Any, y: Any = None, *, folder: str | os.PathLike,
                classes: Sequence[str] | None = None, names: tuple[str, str] = ("X", "y")
                ) -> ImageIndex:
    """An `ImageIndex` of the images in `x` (labels `y`, if given), stored under `folder`.

    Example:
        >>> x = np.zeros((2, 8, 8), np.uint8)
        >>> from_arrays(x, [0, 1], folder=tmp_path).classes      # doctest: +SKIP
        ('0', '1')
    """
    x = check_image_array(x, names[0])
    paths = array_image_paths(x, folder)
    if y is None:
        return ImageIndex.from_paths(paths, classes=classes)
    labels, found = label_names(y, len(x), names[1])
    index = ImageIndex.from_paths(paths, labels, classes or found)
    return _once_per_image(index)


def _once_per_image(index: ImageIndex) -> ImageIndex:
    """Identical images are one file: keep one row per (file, label); a file with two labels
    is a bad file (`conflicting_labels`), as in a table."""
    _, first = np.unique(np.char.add(index.paths, index.labels.astype(str)), return_index=True)
    keep = np.zeros(len(index), bool)
    keep[first] = True
    kept = index.take(keep)
    paths, counts = np.unique(kept.paths, return_counts=True)
    clashing = set(paths[counts > 1].tolist())
    if keep.all() and not clashing:
        return index
    kept.report.add_repeats(int((~keep).sum()), clashing, "images")
    return kept.take(~np.isin(kept.paths, list(clashing))) if clashing else kept


def read_array_file(path: str | os.PathLike, *, folder: str | os.PathLike) -> ImageIndex:
    """Index an `.npz` (arrays `x`/`x_train`, `y`/`y_train`, optional `x_test`, `y_test`) or an
    SVHN-style `.mat` (`X` as H x W x C x N, `y`); test images get subset `test`.

    SVHN's `.mat` files label the digit 0 as 10: the class is named "10", as in the file.

    Raises:
        DatasetError: unreadable file, missing arrays, object arrays (never unpickled), or a
            MATLAB v7.3 (HDF5) file.
    """
    path = Path(path)
    arrays, x, x_test = _images_of(path)
    y = _pick(arrays, ("y", "y_train", "Y", "Y_train", "labels"), path)
    try:
        train = from_arrays(x, y, folder=folder)
        if x_test is None:
            return dataclasses.replace(train, root=str(path.parent))
        test = from_arrays(x_test, _pick(arrays, ("y_test", "Y_test"), path), folder=folder,
                           names=("x_test", "y_test"))
    except ConfigError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    classes = class_order(train.classes + test.classes)
    train, test = train.with_classes(classes), test.with_classes(classes)
    subsets = np.array(["train"] * len(train) + ["test"] * len(test))
    report = train.report
    report.warnings += test.report.warnings
    report.bad_files += test.report.bad_files
    return ImageIndex(concat_text([train.paths, test.paths]),
                      np.concatenate([train.labels, test.labels]), classes, subsets,
                      report=report, root=str(path.parent))


def array_file_images(path: str | os.PathLike, *, folder: str | os.PathLike
                      ) -> tuple[list[str], dict[str, list[str]]]:
    """For prediction: the image file of every image in an array file (its `x`, then its
    `x_test`), labels or not, and the columns that say where each came from (`array`, `row`).

    Raises:
        DatasetError: as `read_array_file`.
    """
    path = Path(path)
    _, x, x_test = _images_of(path)
    parts = [("x", x)] + ([("x_test", x_test)] if x_test is not None else [])
    paths, names, rows = [], [], []
    try:
        for name, images in parts:
            paths += array_image_paths(check_image_array(images, name), folder)
            names += [name] * len(images)
            rows += [str(i) for i in range(len(images))]
    except ConfigError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    return paths, {"array": names, "row": rows}


def _images_of(path: Path) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """(every array in the file, the training images, the test images or None)."""
    if not path.is_file():
        raise DatasetError(f"Array file {str(path)!r} does not exist or is not a file.")
    arrays = _load_mat(path) if path.suffix.lower() == ".mat" else _load_npz(path)
    x = _pick(arrays, ("x", "x_train", "X", "X_train", "images"), path)
    if path.suffix.lower() == ".mat" and x.ndim == 4:
        x = np.moveaxis(x, -1, 0)  # MATLAB's H x W x C x N
    return arrays, x, next((arrays[k] for k in ("x_test", "X_test") if k in arrays), None)


def _pick(arrays: dict, names: tuple[str, ...], path: Path) -> np.ndarray:
    for name in names:
        if name in arrays:
            return arrays[name]
    raise DatasetError(f"{path} has no array named {' or '.join(names)}; it holds "
                       f"{sorted(arrays)}.")


def _load_npz(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is not a readable .npz file (not a zip archive): save it "
                           f"with numpy.savez.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:  # object arrays need pickle: refused
        raise DatasetError(f"{path} holds object arrays, which would need unpickling (refused: "
                           f"a pickle can run code). Save plain numeric arrays. ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable .npz file: {exc}") from None


def _load_mat(path: Path) -> dict:
    from scipy.io import loadmat  # a dependency; imported here only to keep startup light

    try:
        data = loadmat(path)
    except NotImplementedError:
        raise DatasetError(f"{path} is a MATLAB v7.3 (HDF5) file, which is not supported; "
                           f"save it with -v7, or export the arrays to .npz.") from None
    except (ValueError, TypeError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable .mat file: {exc}") from None
    return {k: v for k, v in data.items() if not k.startswith("__")}
