"""The one image decoder. Training, feature extraction, prediction and serving all call
`load_image`, so a file gives the same pixels everywhere. It decides the format by content
against an allow-list, applies EXIF orientation, normalises every mode explicitly, keeps the first
frame only, caps pixels, and turns every decoder failure into `ImageLoadError(reason)`.
RGB and greyscale JPEGs are decoded by libjpeg-turbo straight into NumPy (simplejpeg): the same
pixels as Pillow's (the same library and settings; tested), about a quarter faster.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import EpsImagePlugin, Image, ImageOps, UnidentifiedImageError

from imagefit.errors import ConfigError, ImageLoadError

try:  # libjpeg-turbo straight into NumPy; without it, Pillow decodes JPEGs as every format
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency
    simplejpeg = None

# Ghostscript is never run on user data, even if a refused EPS somehow reached Pillow.
EpsImagePlugin.gs_binary = False


def _single_threaded_torch() -> None:
    # A process forked after PyTorch used its OpenMP pool hangs in its first parallel region
    # (GNU OpenMP is not fork-safe). Forked decoders (pre-flight pools, DataLoader workers) run
    # one thread each anyway, as DataLoader's own workers do. (PyTorch is imported only where
    # it is used: `imagefit.keras` reads images without it.)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


os.register_at_fork(after_in_child=_single_threaded_torch)

# Every other format `sniff_format` recognises (EPS, PDF, HEIF, AVIF, JPEG 2000, PSD, ICO) is
# refused: they need external programs or plugins we do not ship, or are rarely photos and
# widen the attack surface.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Pillow's own default: about 89.5 megapixels (a 9,460 x 9,460 image).
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 1 << 30
# Transparent pixels are composited over white: the usual intent of cut-out product photos and
# logos, and the convention of browsers showing a PNG on a white page.
DEFAULT_BACKGROUND = (255, 255, 255)
# File name endings that promise an image; a file with one of them that is not a readable image
# is reported as a bad file, any other non-image file is ignored as clutter.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib",
                            ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2", ".eps",
                            ".psd", ".ico"})

PathOrBytes = Union[str, os.PathLike, bytes]

# What Pillow's parsers raise on hostile input besides OSError: the types its own fuzzing
# accepts (Tests/oss-fuzz/test_fuzzers.py), plus those our fuzzing met (tests/test_fuzz.py):
# struct.error and EOFError from short reads, IndexError from a GIF cut inside an extension
# block, TypeError ("Missing dimensions") from a TIFF directory without its size tags. They
# mean "corrupt" only when raised inside Pillow: the same types from our code are bugs.
_PILLOW_DECODER_ERRORS = (SyntaxError, ValueError, EOFError, struct.error, NotImplementedError,
                          OverflowError, IndexError, KeyError, TypeError, ZeroDivisionError)
_PILLOW_DIR = os.path.dirname(Image.__file__) + os.sep


@dataclass(frozen=True)
class ImageInfo:
    """What decoding one file found out, for reports (mode histogram, EXIF and frame counts)."""

    format: str
    mode: str
    width: int
    height: int
    n_frames: int
    exif_rotated: bool
    exif_error: bool


def sniff_format(head: bytes) -> str | None:
    """Name the image format of a file from its first bytes, or None if it is not an image.

    Args:
        head: at least the first 16 bytes of the file.

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8))
        'PNG'
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "EPS"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIF"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\x00\x00\x01\x00") and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ICO"
    return None


def load_image(source: PathOrBytes, size: int | tuple[int, int] | None = None, *,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> np.ndarray:
    """Decode an image file into an RGB uint8 array of shape (height, width, 3).

    Args:
        source: a file path, or the file's bytes.
        size: resize to this (width, height) or square side; None keeps the original size.
            Large JPEGs are decoded at reduced scale first (DCT scaling), which is faster and
            gives the same result wherever the same size is asked for.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        background: RGB colour that transparent pixels are composited over.

    Raises:
        ImageLoadError: with `reason` one of empty, truncated, unidentified, format_not_allowed,
            too_large, corrupt, io_error. No other exception escapes.

    Example:
        >>> from PIL import Image; import io
        >>> buf = io.BytesIO(); Image.new("L", (8, 4), 7).save(buf, "PNG")
        >>> load_image(buf.getvalue()).shape
        (4, 8, 3)
    """
    return decode_image(source, size, max_pixels=max_pixels, background=background)[0]


def decode_image(source: PathOrBytes, size: int | tuple[int, int] | None = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = DEFAULT_BACKGROUND, resize: bool = True,
                 ) -> tuple[np.ndarray, ImageInfo]:
    """`load_image`, also returning what was found out about the file (`ImageInfo`).

    With `resize=False` the pixels come at the size they were decoded at: the file's, or for
    a JPEG the DCT-scaled one `size` allows (what `resize_uint8` then brings to `size`).
    """
    data = source if isinstance(source, bytes) else read_file_bytes(source)
    fmt = accepted_format(data)
    target = _as_size(size)
    try:
        return _decode(data, fmt, target, max_pixels, background, resize)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # not an OSError subclass
        raise ImageLoadError("too_large", str(exc)) from None
    except MemoryError:
        # A header can ask for a buffer this process cannot have (a memory limit, a full
        # machine) while still under the pixel cap.
        raise ImageLoadError("too_large", f"not enough memory to decode this {fmt} image "
                             f"(file is {len(data):,} bytes)") from None
    except UnidentifiedImageError:
        # The file starts as `fmt` but Pillow cannot parse its header. (Pillow's message names
        # the in-memory file object, whose address would differ from run to run.)
        raise ImageLoadError("corrupt", f"starts like a {fmt} file but its header cannot be "
                             f"read: damaged or cut short (file is {len(data):,} bytes)") from None
    except OSError as exc:  # Pillow's own decoder errors
        text = str(exc)
        reason = "truncated" if "truncat" in text.lower() else "corrupt"
        if len(data) < 100:
            text += f" (file is only {len(data)} bytes)"
        raise ImageLoadError(reason, text) from None
    except _PILLOW_DECODER_ERRORS as exc:
        if not _decoder_failure(exc):
            raise  # a bug of ours (or of NumPy or PyTorch), not a bad file
        raise ImageLoadError("corrupt", f"{type(exc).__name__}: {exc}") from None


def accepted_format(data: bytes) -> str:
    """The image format a file's bytes start with, if it is one imagefit decodes (what can be
    told without decoding: the lazy pre-flight's check).

    Raises:
        ImageLoadError: empty, not an image, or a format that is not accepted.
    """
    if not data:
        raise ImageLoadError("empty", "file is empty (0 bytes)")
    fmt = sniff_format(data[:32])
    if fmt is None:
        raise ImageLoadError("unidentified", f"not a recognised image format (file is "
                             f"{len(data):,} bytes; supported: {', '.join(ALLOWED_FORMATS)})")
    if fmt not in ALLOWED_FORMATS:
        hint = " (install nothing: convert it to JPEG or PNG)" if fmt in ("HEIF", "AVIF") else ""
        raise ImageLoadError("format_not_allowed", f"{fmt} images are not accepted{hint}; "
                             f"supported: {', '.join(ALLOWED_FORMATS)}")
    return fmt


def read_file_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a whole file, turning OS errors into `ImageLoadError('io_error')`."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ImageLoadError("io_error", f"{exc.strerror or exc} ({Path(path).name})") from None
    if len(data) > max_bytes:
        raise ImageLoadError("too_large", f"file is larger than {max_bytes:,} bytes")
    return data


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        target = int(size), int(size)
    else:
        target = int(size[0]), int(size[1])
    if min(target) < 1:
        # Checked here: a resize to nothing would fail for every file, and must not be
        # reported as every file being bad.
        raise ConfigError(f"image size must be positive, got {size!r}")
    return target


def _pixel_counts(found: int, limit: int) -> tuple[str, str]:
    """Two pixel counts for a message: megapixels, or exact counts where those would not show
    the difference (or the limit is under a megapixel)."""
    texts = (f"{found / 1e6:.1f} MP", f"{limit / 1e6:.1f} MP")
    if limit < 1_000_000 or texts[0] == texts[1]:
        texts = (f"{found:,} pixels", f"{limit:,} pixels")
    return texts


def _decode(data: bytes, fmt: str, target: tuple[int, int] | None, max_pixels: int,
            background: tuple[int, int, int], resize: bool = True,
            ) -> tuple[np.ndarray, ImageInfo]:
    with warnings.catch_warnings():
        # We enforce our own pixel cap below; Pillow's warning would only add noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if max_pixels > Image.MAX_IMAGE_PIXELS:
            # Pillow refuses at twice its limit; a user who raised our cap must be able to pass.
            Image.MAX_IMAGE_PIXELS = max_pixels
        im = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = im.size
        if width * height > max_pixels:
            found, limit = _pixel_counts(width * height, max_pixels)
            raise ImageLoadError("too_large", f"{width}x{height} = {found} is over the limit of "
                                 f"{limit} (raise it with --max-pixels)")
        if fmt == "JPEG" and not im.tile:
            # Markers but no scan: Pillow would say "cannot load this image". The file was cut
            # after its header (or holds tables only, which is no image either).
            raise ImageLoadError("truncated", f"the file ends before its image data (a JPEG "
                                 f"header without a scan, {len(data):,} bytes)")
        mode = im.mode
        fast = _decode_jpeg_turbo(data, im, target) if fmt == "JPEG" else None
        if fast is not None:
            array, rotated = fast
            exif_error, n_frames = False, 1
        else:
            if fmt == "JPEG" and target is not None:
                # DCT scaling: decode at the smallest 1/2, 1/4 or 1/8 scale still >= target.
                im.draft(im.mode, (max(target), max(target)))
            im.load()
            im, rotated, exif_error = _apply_exif_orientation(im)
            rgb = _to_rgb(im, background)
            array = np.asarray(rgb, dtype=np.uint8)  # copies the pixels out (Image.tobytes)
            n_frames = _count_frames(im)  # last: counting seeks `im` away from the first frame
        if resize and target is not None and array.shape[1::-1] != target:
            array = resize_uint8(array, target)
    info = ImageInfo(fmt, mode, width, height, n_frames, rotated, exif_error)
    return np.ascontiguousarray(array), info


# EXIF orientation -> the array operation Pillow's exif_transpose performs.
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _decode_jpeg_turbo(data: bytes, im: Image.Image, target: tuple[int, int] | None,
                       ) -> tuple[np.ndarray, bool] | None:
    """An RGB or greyscale JPEG decoded by libjpeg-turbo straight into NumPy (simplejpeg):
    the pixels Pillow gives (the same library, DCT and upsampling; the same DCT scale), without
    Pillow's two copies. Returns (RGB array, whether EXIF turned it), or None where Pillow
    decides: other colour spaces, damaged data, an unreadable EXIF block, no simplejpeg."""
    if simplejpeg is None or im.mode not in ("RGB", "L"):
        return None
    try:
        orientation = im.getexif().get(0x0112, 1)
    except (OSError, *_PILLOW_DECODER_ERRORS):
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    if target is not None:
        # Pillow's choice of DCT scale (the smallest 1/2, 1/4, 1/8 still >= the target), read
        # back from the size it sets; libjpeg-turbo then decodes at exactly that size.
        im.draft(im.mode, (max(target), max(target)))
    width, height = im.size
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height,
                                       min_width=width)
    except ValueError:  # damaged (strict mode: any libjpeg warning) or unsupported
        return None
    if orientation == 1:
        return array, False
    return np.ascontiguousarray(_ORIENT[orientation](array)), True


def is_decoder_failure(exc: BaseException) -> bool:
    """Whether `exc`, raised while reading or decoding an image file, means a bad file (an
    `ImageLoadError`, an OS error, Pillow refusing or failing on the content) rather than a bug
    of the calling code."""
    return isinstance(exc, (ImageLoadError, Image.DecompressionBombError, MemoryError)) \
        or _decoder_failure(exc)


def _decoder_failure(exc: BaseException) -> bool:
    """Whether `exc` is Pillow failing on bad input rather than a bug: an OSError (Pillow's own
    error type), or one of `_PILLOW_DECODER_ERRORS` raised inside Pillow's code."""
    return isinstance(exc, OSError) or (isinstance(exc, _PILLOW_DECODER_ERRORS)
                                        and _raised_by_pillow(exc))


def _raised_by_pillow(exc: BaseException) -> bool:
    """Whether the innermost Python frame of `exc`'s traceback is in Pillow's package."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_PILLOW_DIR)


def _count_frames(im: Image.Image) -> int:
    """Frames in an animated file, counted after the first frame's pixels were taken (counting
    seeks through the file). Only the first frame is used, so a later frame that cannot be read
    does not make the file unusable: the count is then "at least two", as a frame was begun."""
    try:
        return int(getattr(im, "n_frames", 1))
    except (OSError, *_PILLOW_DECODER_ERRORS) as exc:
        if not _decoder_failure(exc):
            raise
        return max(2, im.tell() + 1)


def resize_uint8(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (width, height) `size`: bilinear, antialiased when
    shrinking (the same filter as Pillow's BILINEAR resize, to within one grey level), computed
    on uint8 channels-last, which is about 5x faster than Pillow."""
    import torch

    x = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)[None]
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.interpolate(x, size=(size[1], size[0]), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def _apply_exif_orientation(im: Image.Image) -> tuple[Image.Image, bool, bool]:
    try:
        orientation = im.getexif().get(0x0112, 1)
    except (OSError, *_PILLOW_DECODER_ERRORS) as exc:  # malformed EXIF: pixels as stored
        if not _decoder_failure(exc):
            raise
        return im, False, True
    if orientation in (None, 1) or not isinstance(orientation, int) or not 2 <= orientation <= 8:
        return im, False, False
    try:
        return ImageOps.exif_transpose(im), True, False
    except (OSError, *_PILLOW_DECODER_ERRORS) as exc:
        if not _decoder_failure(exc):
            raise
        return im, False, True


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB, explicitly (Pillow's convert clamps 16-bit)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer and float images: stretch the image's own range to 0-255, as
        # microscopy viewers do. Pillow would clamp them, collapsing a 16-bit ramp to 2 levels.
        # One float64 array, updated in place: at the pixel cap every temporary costs 0.7 GB.
        values = np.asarray(im).astype(np.float64)
        finite = np.isfinite(values)
        if finite.all():
            lo, hi = float(values.min()), float(values.max())
        elif finite.any():
            lo = float(values.min(where=finite, initial=np.inf))
            hi = float(values.max(where=finite, initial=-np.inf))
        else:
            lo = hi = 0.0
        del finite
        if hi <= lo:
            values[...] = 0.0
        else:
            values -= lo
            values *= 255.0 / (hi - lo)
        np.nan_to_num(values, copy=False)
        np.clip(values, 0, 255, out=values)
        np.round(values, out=values)
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")  # convert would copy an RGBA
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        composite = Image.alpha_composite(base, rgba)
        del im, rgba, base  # before the RGB copy: at the pixel cap each is 0.36 GB
        return composite.convert("RGB")
    if im.mode == "RGB":
        return im
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
