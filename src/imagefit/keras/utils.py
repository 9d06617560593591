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
             interpolation: str = "nearest", keep_aspect_ratio: bool = False) -> Image.Image:
    """Load an image file into a Pillow image.

    Args:
        path: a path (str, bytes or `pathlib.Path`) or a binary file object (`io.BytesIO`).
        color_mode: "grayscale", "rgb" or "rgba".
        target_size: None (the file's size) or (height, width).
        interpolation: the resize filter: nearest, bilinear, bicubic, hamming, box, lanczos.
        keep_aspect_ratio: crop the centre to the target's aspect ratio before resizing.
    """
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
