"""One image file to one batch row, fast: the route the file iterators take.

Keras decodes every file in full with Pillow, resizes it, converts it to float and warps it with
scipy.ndimage, channel by channel. Here:
- a JPEG read in "rgb" mode is decoded by libjpeg-turbo straight into an array (simplejpeg:
  Pillow's pixels exactly, without Pillow's copies). Every other file, and any JPEG the fast
  decoder declines, is read by Pillow as `load_img` reads it. Reduced-size (DCT) decoding of
  large JPEGs is opt-in (`draft=True`): it changes the pixels, by tens of grey levels;
- the resize is OpenCV's exact nearest neighbour (Pillow's NEAREST, pixel for pixel) or, for the
  other filters, Pillow's own;
- the random transform (flips folded in) is one OpenCV warp of the uint8 pixels, with scipy's
  "constant" edge emulated; orders above 1 and the "wrap" fill mode go through scipy as in Keras.
Channel shift, brightness and `standardize` then run as Keras runs them.
"""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
from PIL import Image

from imagefit.data.augment import outside_mask
from imagefit.data.images import DEFAULT_MAX_PIXELS, read_file_bytes, sniff_format
from imagefit.errors import ImageLoadError
from imagefit.keras.affine import (affine_matrix, apply_brightness_shift, apply_channel_shift,
                                   transform_matrix_offset_center)
from imagefit.keras.utils import convert_mode, crop_box, resize_img

try:  # libjpeg-turbo, straight into NumPy; Pillow reads JPEGs without it
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency, but the fallback must work
    simplejpeg = None

cv2.setNumThreads(1)

_BORDERS = {"constant": cv2.BORDER_CONSTANT, "nearest": cv2.BORDER_REPLICATE,
            "reflect": cv2.BORDER_REFLECT}


def read_pixels(path: str, color_mode: str, target_size: tuple[int, int],
                interpolation: str, keep_aspect_ratio: bool, draft: bool = False) -> np.ndarray:
    """The file's pixels at `target_size` (height, width), as `load_img` + `img_to_array` would
    give them, in their own dtype (uint8; uint16 or int32 for deep greyscale): (H, W, C).

    With `draft`, a JPEG at least twice the target size on both sides is decoded at the
    smallest DCT scale (1/2, 1/4 or 1/8) still at least the target size: several times faster
    for large photos, but no longer Keras' pixels.

    Raises ImageLoadError for a file that cannot be read or decoded, or any error Pillow raises.
    """
    data = read_file_bytes(path)
    if not data:
        raise ImageLoadError("empty", "file is empty (0 bytes)")
    if color_mode == "rgb" and simplejpeg is not None and sniff_format(data[:32]) == "JPEG":
        pixels = _decode_jpeg(data, target_size if draft else None)
        if pixels is not None:
            return _resize(pixels, target_size, interpolation, keep_aspect_ratio)
    img = Image.open(io.BytesIO(data))
    img.load()
    img = convert_mode(img, color_mode)
    img = resize_img(img, target_size, interpolation, keep_aspect_ratio)
    pixels = np.asarray(img)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _decode_jpeg(data: bytes, scale_to: tuple[int, int] | None) -> np.ndarray | None:
    """RGB pixels by libjpeg-turbo (Pillow's pixels exactly unless scaled to at least
    `scale_to`), or None where it declines (CMYK, damaged: Pillow decides)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        if height * width > DEFAULT_MAX_PIXELS:
            raise ImageLoadError("too_large", f"{width}x{height} pixels is over the limit of "
                                 f"{DEFAULT_MAX_PIXELS:,}")
        if scale_to is not None and height >= 2 * scale_to[0] and width >= 2 * scale_to[1]:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=scale_to[0],
                                          min_width=scale_to[1])
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None


def _resize(pixels: np.ndarray, target_size: tuple[int, int], interpolation: str,
            keep_aspect_ratio: bool) -> np.ndarray:
    """`load_img`'s resize: OpenCV's exact nearest neighbour is Pillow's NEAREST pixel for
    pixel (a centre crop first, with `keep_aspect_ratio`); other filters are Pillow's own."""
    th, tw = target_size
    h, w = pixels.shape[:2]
    if (h, w) == (th, tw):
        return pixels
    if interpolation != "nearest":
        img = resize_img(Image.fromarray(pixels), target_size, interpolation, keep_aspect_ratio)
        return np.asarray(img)
    if keep_aspect_ratio:
        left, top, right, bottom = crop_box((w, h), (tw, th))
        pixels = pixels[top:bottom, left:right]
    return cv2.resize(pixels, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)


def transform_row(pixels: np.ndarray, params: dict | None, generator: Any, out: np.ndarray,
                  data_format: str) -> None:
    """Write one batch row into `out`: (H, W, C) pixels through Keras' `transform_parameters`
    and `standardize` (`generator` None: the pixels as they are), in `data_format`."""
    if generator is None:
        out[...] = _layout(pixels, data_format)
        return
    if generator.interpolation_order not in (0, 1) or generator.fill_mode not in _BORDERS:
        x = _layout(pixels, data_format).astype(out.dtype)
        out[...] = generator.standardize(generator.apply_transform(x, params))
        return
    warped = _layout(_warp(pixels, params, generator), data_format)
    shifted = params.get("channel_shift_intensity") is not None
    brightened = params.get("brightness") is not None
    if not shifted and not brightened and _rescale_only(generator):
        # The common case in one pass: Keras' `x = float(pixels); x *= rescale`, same rounding.
        rescale = out.dtype.type(generator.rescale or 1)
        np.multiply(warped, rescale, out=out, dtype=out.dtype)
        return
    x = warped.astype(out.dtype)
    if shifted or brightened:
        x = _layout(x, data_format, back=True)
        if shifted:
            x = apply_channel_shift(x, params["channel_shift_intensity"])
        if brightened:
            x = apply_brightness_shift(x, params["brightness"], False)
        x = np.ascontiguousarray(_layout(x, data_format), dtype=out.dtype)
    out[...] = generator.standardize(x)


def _layout(x: np.ndarray, data_format: str, back: bool = False) -> np.ndarray:
    """(H, W, C) as `data_format` (or, `back`, from it)."""
    if data_format != "channels_first":
        return x
    return x.transpose(1, 2, 0) if back else x.transpose(2, 0, 1)


def _rescale_only(generator: Any) -> bool:
    return not (generator.preprocessing_function or generator.samplewise_center
                or generator.samplewise_std_normalization or generator.featurewise_center
                or generator.featurewise_std_normalization or generator.zca_whitening)


def _warp(pixels: np.ndarray, params: dict, generator: Any) -> np.ndarray:
    """The geometric part of `apply_transform` (affine, then flips) as one OpenCV warp."""
    h, w = pixels.shape[:2]
    matrix = affine_matrix(params.get("theta", 0), params.get("tx", 0), params.get("ty", 0),
                           params.get("shear", 0), params.get("zx", 1), params.get("zy", 1))
    flip_h = bool(params.get("flip_horizontal", False))
    flip_v = bool(params.get("flip_vertical", False))
    if matrix is None and not flip_h and not flip_v:
        return pixels
    if matrix is None:
        xy = np.eye(3)
    else:
        # Keras 3's (x, y)-ordered matrix about the centre, applied to (row, column) arrays,
        # is (after its swap) this matrix in OpenCV's (x, y) = (column, row) order.
        xy = transform_matrix_offset_center(matrix, h, w)
    if flip_h:
        xy = xy @ np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])
    if flip_v:
        xy = xy @ np.array([[1.0, 0, 0], [0, -1, h - 1], [0, 0, 1]])
    cval = float(generator.cval)
    source = pixels
    if pixels.dtype not in (np.uint8, np.uint16) or (
            generator.fill_mode == "constant" and (pixels.dtype != np.uint8 or cval != round(cval)
                                                   or not 0 <= cval <= 255)):
        # 32-bit greyscale (OpenCV warps no int32), or a fill value uint8 cannot hold
        source = pixels.astype(np.float32)
    flags = (cv2.INTER_NEAREST if generator.interpolation_order == 0 else cv2.INTER_LINEAR)
    channels = source.shape[2]
    out = cv2.warpAffine(source, xy[:2], (w, h), flags=flags | cv2.WARP_INVERSE_MAP,
                         borderMode=_BORDERS[generator.fill_mode],
                         borderValue=(cval,) * min(channels, 4))
    if out.ndim == 2:
        out = out[:, :, None]
    if generator.fill_mode == "constant":
        out[outside_mask(xy, h, w)] = cval
    return out
