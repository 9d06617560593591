"""Keras' image helpers (`keras.utils.load_img` and friends), on Pillow and NumPy only.

Each behaves as Keras 3 documents it: `load_img` returns a Pillow image, converted to the asked
colour mode (16- and 32-bit greyscale kept as they are in "grayscale" mode) and resized with the
asked filter; `img_to_array` / `array_to_img` convert between Pillow images and arrays in either
data format; `save_img` writes one. The file is read whole before decoding, so no handle stays
open, however many images a program keeps.
"""

from __future__ import annotations

import io
import os
import pathlib
import warnings
from typing import Any

import cv2
import numpy as np
from PIL import Image

from imagefit.keras._config import data_format_or_default, floatx

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
COLOR_MODES = ("grayscale", "rgb", "rgba")
PICTURE_EXTENSIONS = ("jpg", "jpeg", "bmp", "png", "ppm", "tif", "tiff")
_GREY_MODES = ("L", "I;16", "I")


def load_img(path: Any, color_mode: str = "rgb", target_size: tuple[int, int] | None = None,
             interpolation: str = "nearest", keep_aspect_ratio: bool = False, *,
             grayscale: bool = False) -> Image.Image:
    """Load an image file into a Pillow image.

    Args:
        path: a path (str, bytes or `pathlib.Path`) or a binary file object (`io.BytesIO`).
        color_mode: "grayscale", "rgb" or "rgba".
        target_size: None (the file's size) or (height, width).
        interpolation: the resize filter: nearest, bilinear, bicubic, hamming, box, lanczos.
        keep_aspect_ratio: crop the centre to the target's aspect ratio before resizing.
        grayscale: Keras 2's spelling of `color_mode="grayscale"` (deprecated there too).
    """
    if grayscale:
        warnings.warn('grayscale is deprecated. Please use color_mode = "grayscale"',
                      DeprecationWarning, stacklevel=2)
        color_mode = "grayscale"
    if color_mode not in COLOR_MODES:
        raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
    img = _open(path)
    img = convert_mode(img, color_mode)
    if target_size is not None:
        img = resize_img(img, target_size, interpolation, keep_aspect_ratio)
    return img


def _open(path: Any) -> Image.Image:
    if isinstance(path, (str, bytes, pathlib.Path, os.PathLike)):
        if isinstance(path, pathlib.Path):
            path = str(path.resolve())
        with open(path, "rb") as f:
            data = f.read()
    elif hasattr(path, "read"):
        data = path.read()
    else:
        raise TypeError(f"path should be path-like or io.BytesIO, not {type(path)}")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def convert_mode(img: Image.Image, color_mode: str) -> Image.Image:
    """Keras' colour conversion: greyscale keeps 8-, 16- and 32-bit images as they are."""
    if color_mode == "grayscale":
        return img if img.mode in _GREY_MODES else img.convert("L")
    wanted = "RGBA" if color_mode == "rgba" else "RGB"
    return img if img.mode == wanted else img.convert(wanted)


def resize_img(img: Image.Image, target_size: tuple[int, int], interpolation: str = "nearest",
               keep_aspect_ratio: bool = False) -> Image.Image:
    """Resize to (height, width), as `load_img` does; an unknown filter is a ValueError."""
    size = (int(target_size[1]), int(target_size[0]))
    if img.size == size:
        return img
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"Invalid interpolation method {interpolation} specified. Supported "
                         f"methods are {', '.join(INTERPOLATIONS)}")
    box = crop_box(img.size, size) if keep_aspect_ratio else None
    return img.resize(size, INTERPOLATIONS[interpolation], box=box)


def crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred (left, top, right, bottom) box of `size` (w, h) with `target`'s aspect."""
    width, height = size
    target_width, target_height = target
    crop_height = min(height, (width * target_height) // target_width)
    crop_width = min(width, (height * target_width) // target_height)
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return left, top, left + crop_width, top + crop_height


def img_to_array(img: Any, data_format: str | None = None, dtype: Any = None) -> np.ndarray:
    """A Pillow image (or array-like) as a rank-3 array: (H, W, C) or (C, H, W)."""
    data_format = data_format_or_default(data_format)
    x = np.asarray(img, dtype=dtype or floatx())
    if x.ndim == 2:
        x = x.reshape((1, *x.shape) if data_format == "channels_first" else (*x.shape, 1))
    elif x.ndim == 3:
        if data_format == "channels_first":
            x = x.transpose(2, 0, 1)
    else:
        raise ValueError(f"Unsupported image shape: {x.shape}")
    return x


def array_to_img(x: Any, data_format: str | None = None, scale: bool = True,
                 dtype: Any = None) -> Image.Image:
    """A rank-3 array as a Pillow image (RGB, RGBA, L, or I for greyscale values above 255).

    With `scale`, values are stretched to 0..255 first (minimum to 0, maximum to 255).
    """
    data_format = data_format_or_default(data_format)
    x = np.asarray(x, dtype=dtype or floatx())
    if x.ndim != 3:
        raise ValueError(f"Expected image array to have rank 3 (single image). Got array with "
                         f"shape: {x.shape}")
    if data_format == "channels_first":
        x = x.transpose(1, 2, 0)
    if scale:
        x = x - np.min(x)
        top = np.max(x)
        if top != 0:
            x = x / top
        x = x * 255
    channels = x.shape[2]
    if channels == 4:
        return Image.fromarray(x.astype("uint8"), "RGBA")
    if channels == 3:
        return Image.fromarray(x.astype("uint8"), "RGB")
    if channels == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"), "I")
        return Image.fromarray(x[:, :, 0].astype("uint8"), "L")
    raise ValueError(f"Unsupported channel number: {channels}")


def save_img(path: Any, x: Any, data_format: str | None = None, file_format: str | None = None,
             scale: bool = True, **kwargs: Any) -> None:
    """Save an array as an image file; the format comes from the name unless `file_format`."""
    data_format = data_format_or_default(data_format)
    if file_format is None and isinstance(path, (str, pathlib.Path)):
        file_format = pathlib.Path(path).suffix[1:].lower()
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn("The JPEG format does not support RGBA images, converting to RGB.",
                      stacklevel=2)
        img = img.convert("RGB")
    img.save(path, format=file_format or None, **kwargs)


def list_pictures(directory: str | os.PathLike,
                  ext: str | tuple[str, ...] = PICTURE_EXTENSIONS) -> list[str]:
    """Paths of the files under `directory` (recursively) whose name ends with `ext`."""
    ends = (ext,) if isinstance(ext, str) else tuple(ext)
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(ends)]
    return found


def validate_filename(filename: str, white_list_formats: Any) -> bool:
    """Whether `filename` has one of the extensions and is an existing file."""
    ends = (white_list_formats,) if isinstance(white_list_formats, str) \
        else tuple(white_list_formats)
    return str(filename).lower().endswith(ends) and os.path.isfile(filename)


# The filters of Keras' PyTorch backend, computed by OpenCV ("nearest", PyTorch's
# "nearest-exact", by index arithmetic: OpenCV rounds some half-way cases the other way).
_SMART_RESIZE = {"bilinear": cv2.INTER_LINEAR, "nearest": None, "bicubic": cv2.INTER_CUBIC}


def smart_resize(x: Any, size: tuple[int, int], interpolation: str = "bilinear",
                 data_format: str = "channels_last") -> np.ndarray:
    """Resize an image (H, W, C) or a batch (N, H, W, C) to `size` (height, width) without
    distorting it: the largest centred crop with the target's aspect ratio, then a resize
    (half-pixel bilinear, nearest or bicubic, as Keras on PyTorch computes them)."""
    if len(size) != 2:
        raise ValueError(f"Expected `size` to be a tuple of 2 integers, but got: {size}.")
    if interpolation not in _SMART_RESIZE:
        raise ValueError(f"smart_resize here supports interpolation {sorted(_SMART_RESIZE)}; "
                         f"got {interpolation!r}")
    img = np.asarray(x)
    if img.ndim not in (3, 4):
        raise ValueError(f"Expected an image array with shape `(height, width, channels)`, or "
                         f"`(batch_size, height, width, channels)`, but got input with "
                         f"incorrect rank, of shape {img.shape}.")
    if data_format == "channels_first":
        img = np.moveaxis(img, -3, -1)
    height, width = img.shape[-3], img.shape[-2]
    target_height, target_width = int(size[0]), int(size[1])
    crop_height = max(min(height, int(float(width * target_height) / target_width)), 1)
    crop_width = max(min(width, int(float(height * target_width) / target_height)), 1)
    top = int(float(height - crop_height) / 2)
    left = int(float(width - crop_width) / 2)
    img = img[..., top:top + crop_height, left:left + crop_width, :]
    dtype = img.dtype if img.dtype.kind == "f" else np.float32
    flat = img.reshape(-1, crop_height, crop_width, img.shape[-1]).astype(dtype, copy=False)
    out = np.stack([_resize_channels(im, (target_width, target_height),
                                     _SMART_RESIZE[interpolation]) for im in flat])
    out = out.reshape(*img.shape[:-3], target_height, target_width, img.shape[-1])
    if img.dtype.kind in "iub":  # integer images come back as they went in, rounded
        info = np.iinfo(img.dtype) if img.dtype.kind != "b" else None
        out = np.rint(out)
        if info is not None:
            out = np.clip(out, info.min, info.max)
        out = out.astype(img.dtype)
    if data_format == "channels_first":
        out = np.moveaxis(out, -1, -3)
    return out


def _resize_channels(image: np.ndarray, size: tuple[int, int], flag: int | None) -> np.ndarray:
    """Resize (H, W, C) to `size` (width, height); `flag` None: nearest-exact."""
    if flag is None:
        rows = _nearest_exact(image.shape[0], size[1])
        cols = _nearest_exact(image.shape[1], size[0])
        return image[rows][:, cols]
    out = cv2.resize(np.ascontiguousarray(image), size, interpolation=flag)
    return out[:, :, None] if out.ndim == 2 else out


def _nearest_exact(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index: floor((i + 0.5) * n_in / n_out), as PyTorch."""
    scale = np.float32(n_in) / np.float32(n_out)
    index = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.minimum(index.astype(np.int64), n_in - 1)
