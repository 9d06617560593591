"""Tests of the one image decoder (`imagefit.data.images`): every image is made at test time."""

from __future__ import annotations

import io
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imagefit.data import images
from imagefit.data.images import (
    ALLOWED_FORMATS,
    DEFAULT_BACKGROUND,
    decode_image,
    load_image,
    sniff_format,
)
from imagefit.errors import ConfigError, ImageLoadError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def load_error(source, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kwargs)
    return info.value


def noise_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth_rgb(w: int, h: int) -> Image.Image:
    """A low-frequency picture (gradients and slow waves): resizing methods agree on it."""
    y, x = np.mgrid[0:h, 0:w].astype(float)
    r = 127 + 120 * np.sin(x / w * 2 * np.pi)
    g = 255 * y / (h - 1)
    b = 127 + 120 * np.cos((x + y) / (w + h) * 3 * np.pi)
    return Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8))


# --------------------------------------------------------------------------- EXIF orientation

def _marked_40x20() -> Image.Image:
    """40 wide, 20 high, grey, with a red 6x6 marker in the stored top-left corner."""
    arr = np.full((20, 40, 3), 128, np.uint8)
    arr[:6, :6] = RED
    return Image.fromarray(arr)


def test_exif_orientation_6_rotates_shape_and_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(_marked_40x20(), "JPEG", quality=95, exif=exif.tobytes())
    out, info = decode_image(data)
    assert out.shape == (40, 20, 3)
    assert out.dtype == np.uint8
    assert info.exif_rotated is True
    # Orientation 6 means "rotate 90 degrees clockwise to display": the stored top-left corner
    # ends up top-right.
    top_right = out[1:4, 16:19].reshape(-1, 3).astype(int).mean(0)
    top_left = out[1:4, 1:4].reshape(-1, 3).astype(int).mean(0)
    bottom_left = out[36:39, 1:4].reshape(-1, 3).astype(int).mean(0)
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60
    assert np.abs(top_left - 128).max() < 20
    assert np.abs(bottom_left - 128).max() < 20


def test_no_exif_keeps_stored_orientation():
    out, info = decode_image(encode(_marked_40x20(), "JPEG", quality=95))
    assert out.shape == (20, 40, 3)
    assert info.exif_rotated is False
    assert out[2, 2, 0] > 200 and out[2, 2, 1] < 60


@pytest.mark.parametrize("exif_bytes", [
    b"Exif\x00\x00" + bytes(np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8)),
    b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0",                   # IFD offset far past the end
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\x7f\x12\x01",   # IFD claims 32,767 entries
    b"Exif\x00\x00",                                          # empty block
], ids=["random", "bad-offset", "huge-count", "empty"])
def test_malformed_exif_still_loads_unrotated(exif_bytes):
    data = encode(_marked_40x20(), "JPEG", quality=95, exif=exif_bytes)
    out = load_image(data)
    assert out.shape == (20, 40, 3)
    assert out[2, 2, 0] > 200 and out[2, 2, 1] < 60


@pytest.mark.parametrize("value", [99, 0])
def test_out_of_range_orientation_value_is_ignored(value):
    exif = Image.Exif()
    exif[0x0112] = value
    out = load_image(encode(_marked_40x20(), "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (20, 40, 3)


def test_orientation_of_wrong_type_is_ignored():
    # One IFD entry: tag 0x0112 (Orientation) typed ASCII with the value "six".
    ifd = b"\x01\x00" + b"\x12\x01\x02\x00\x04\x00\x00\x00six\x00" + bytes(4)
    exif_bytes = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + ifd
    out = load_image(encode(_marked_40x20(), "JPEG", quality=95, exif=exif_bytes))
    assert out.shape == (20, 40, 3)
    assert out[2, 2, 0] > 200 and out[2, 2, 1] < 60


# --------------------------------------------------------------------------- transparency

def _half_transparent_rgba() -> Image.Image:
    arr = np.zeros((10, 20, 4), np.uint8)
    arr[:, :10] = (255, 0, 0, 255)    # opaque red
    arr[:, 10:] = (0, 255, 0, 0)      # fully transparent (green underneath must not show)
    return Image.fromarray(arr, "RGBA")


def test_rgba_transparent_pixels_get_default_background():
    assert DEFAULT_BACKGROUND == (255, 255, 255)
    out = load_image(encode(_half_transparent_rgba(), "PNG"))
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert (out[:, 10:] == (255, 255, 255)).all()
    assert (out[:, :10] == RED).all()


def test_rgba_custom_background_is_honoured():
    out = load_image(encode(_half_transparent_rgba(), "PNG"), background=(0, 0, 255))
    assert (out[:, 10:] == (0, 0, 255)).all()
    assert (out[:, :10] == RED).all()


def test_rgba_half_alpha_is_blended_over_background():
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[:] = (0, 0, 0, 128)
    out = load_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert np.abs(out.astype(int) - 127).max() <= 1


def test_la_mode_transparency():
    arr = np.zeros((6, 8, 2), np.uint8)
    arr[:, :4] = (0, 255)       # opaque black
    arr[:, 4:] = (90, 0)        # transparent
    im = Image.fromarray(arr, "LA")
    out = load_image(encode(im, "PNG"))
    assert out.shape == (6, 8, 3)
    assert (out[:, :4] == 0).all()
    assert (out[:, 4:] == 255).all()
    out_blue = load_image(encode(im, "PNG"), background=(0, 0, 255))
    assert (out_blue[:, 4:] == (0, 0, 255)).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_index(fmt):
    im = Image.new("P", (8, 6), 0)
    im.putpalette([0, 255, 0] + [255, 0, 0] + [0, 0, 0] * 254)   # 0 = green (transparent), 1 = red
    im.paste(1, (0, 0, 4, 6))
    data = encode(im, fmt, transparency=0)
    out = load_image(data)
    assert out.shape == (6, 8, 3)
    assert (out[:, :4] == RED).all()
    assert (out[:, 4:] == (255, 255, 255)).all()
    assert (load_image(data, background=(0, 0, 255))[:, 4:] == (0, 0, 255)).all()


def test_palette_without_transparency():
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 20, 30] + [0, 0, 0] * 254)
    out = load_image(encode(im, "PNG"))
    assert (out == (10, 20, 30)).all()


# --------------------------------------------------------------------------- high bit depth

def test_16bit_ramp_keeps_levels_and_order():
    ramp = np.linspace(0, 65535, 1024).round().astype(np.uint16).reshape(1, 1024)
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    data = encode(im, "PNG")
    out, info = decode_image(data)
    assert info.mode == "I;16"
    assert out.shape == (1, 1024, 3) and out.dtype == np.uint8
    levels = out[0, :, 0]
    assert len(np.unique(levels)) >= 200
    assert (np.diff(levels.astype(int)) >= 0).all()
    assert levels[0] < 5 and levels[-1] > 250
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_narrow_range_is_stretched():
    """A 16-bit image using only 1000..3000 (typical of microscopy) is not a black picture."""
    ramp = np.linspace(1000, 3000, 512).round().astype(np.uint16).reshape(1, 512)
    out = load_image(encode(Image.fromarray(ramp), "PNG"))
    assert len(np.unique(out[0, :, 0])) >= 200
    assert out[0, -1, 0] > 250


def test_16bit_constant_image_does_not_crash():
    im = Image.fromarray(np.full((8, 12), 1234, np.uint16))
    out = load_image(encode(im, "PNG"))
    assert out.shape == (8, 12, 3) and out.dtype == np.uint8
    assert len(np.unique(out)) == 1


def test_mode_I_32bit_ramp():
    ramp = np.linspace(-200_000, 3_000_000, 600).round().astype(np.int32).reshape(1, 600)
    im = Image.fromarray(ramp)
    assert im.mode == "I"
    out, info = decode_image(encode(im, "TIFF"))
    assert info.mode.startswith("I")
    assert out.shape == (1, 600, 3) and out.dtype == np.uint8
    assert len(np.unique(out[0, :, 0])) >= 200
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()


def test_mode_F_float_ramp_and_nan():
    ramp = np.linspace(-1.5, 2.5, 600, dtype=np.float32).reshape(1, 600)
    im = Image.fromarray(ramp)
    assert im.mode == "F"
    out = load_image(encode(im, "TIFF"))
    assert out.shape == (1, 600, 3) and out.dtype == np.uint8
    assert len(np.unique(out[0, :, 0])) >= 200
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()
    with_nan = ramp.copy()
    with_nan[0, 300] = np.nan
    out_nan = load_image(encode(Image.fromarray(with_nan), "TIFF"))
    assert out_nan.shape == (1, 600, 3)
    assert out_nan[0, 0, 0] < 5 and out_nan[0, -1, 0] > 250


def test_mode_F_constant_does_not_crash():
    out = load_image(encode(Image.fromarray(np.full((5, 7), 0.25, np.float32)), "TIFF"))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8


# --------------------------------------------------------------------------- other modes

@pytest.mark.parametrize("cmyk, rgb", [((0, 0, 0, 0), (255, 255, 255)),
                                       ((255, 0, 0, 0), (0, 255, 255)),
                                       ((0, 0, 0, 255), (0, 0, 0))])
def test_cmyk_jpeg(cmyk, rgb):
    data = encode(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)
    out, info = decode_image(data)
    assert info.mode == "CMYK"
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= 12


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_greyscale_L(fmt):
    arr = np.tile(np.array([0, 100, 200, 255], np.uint8).repeat(4), (8, 1))
    out = load_image(encode(Image.fromarray(arr, "L"), fmt, **({"quality": 100} if fmt == "JPEG"
                                                              else {})))
    assert out.shape == (8, 16, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    tol = 6 if fmt == "JPEG" else 0
    assert np.abs(out[..., 0].astype(int) - arr).max() <= tol


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
def test_one_bit(fmt):
    im = Image.new("1", (10, 4), 0)
    im.paste(1, (0, 0, 5, 4))
    out = load_image(encode(im, fmt))
    assert out.shape == (4, 10, 3) and out.dtype == np.uint8
    assert (out[:, :5] == (255, 255, 255)).all()
    assert (out[:, 5:] == (0, 0, 0)).all()


def test_animated_gif_gives_first_frame_and_frame_count():
    frames = [Image.new("RGB", (12, 8), c) for c in (RED, GREEN, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out, info = decode_image(buf.getvalue())
    assert info.n_frames == 3
    assert info.format == "GIF"
    assert out.shape == (8, 12, 3)
    assert (out == RED).all()


def test_image_info_fields():
    data = encode(Image.new("L", (30, 20), 9), "PNG")
    _, info = decode_image(data)
    assert (info.format, info.mode, info.width, info.height, info.n_frames) == \
        ("PNG", "L", 30, 20, 1)


# --------------------------------------------------------------------------- broken files

def test_truncated_jpeg():
    data = encode(noise_rgb(400, 300), "JPEG", quality=90)
    assert load_error(data[: int(len(data) * 0.6)]).reason == "truncated"


def test_truncated_png():
    data = encode(noise_rgb(400, 300), "PNG")
    assert load_error(data[: len(data) // 2]).reason == "truncated"


def test_header_only_jpeg():
    data = encode(noise_rgb(64, 48), "JPEG", quality=90)
    sos = data.index(b"\xff\xda")
    err = load_error(data[:sos])
    assert err.reason == "truncated"        # reliability.md A1 (Pillow: "cannot load this image")
    assert "JPEG header without a scan" in err.message


def test_empty_bytes_and_empty_file(tmp_path):
    assert load_error(b"").reason == "empty"
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert load_error(path).reason == "empty"
    assert load_error(str(path)).reason == "empty"


def test_text_is_unidentified(tmp_path):
    assert load_error(b"hello, this is not an image at all\n" * 3).reason == "unidentified"
    path = tmp_path / "t.png"
    path.write_text("name,label\na,b\n")
    assert load_error(path).reason == "unidentified"


def test_missing_file_is_io_error(tmp_path):
    err = load_error(tmp_path / "nope" / "missing.jpg")
    assert err.reason == "io_error"
    assert "missing.jpg" in str(err)


def test_directory_path_is_io_error(tmp_path):
    assert load_error(tmp_path).reason == "io_error"


def test_error_reason_is_in_message():
    err = load_error(b"")
    assert str(err).startswith("empty:")
    assert isinstance(err, Exception)


# --------------------------------------------------------------------------- format by content

@pytest.mark.parametrize("fmt, name", [("WEBP", "x.jpg"), ("PNG", "y.jpg"), ("JPEG", "z.png"),
                                       ("BMP", "w.gif")])
def test_extension_lies_are_decoded_by_content(tmp_path, fmt, name):
    arr = np.zeros((10, 14, 3), np.uint8)
    arr[:, :7] = (200, 30, 30)
    arr[:, 7:] = (30, 30, 200)
    kwargs = {"lossless": True} if fmt == "WEBP" else {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    path = tmp_path / name
    path.write_bytes(encode(Image.fromarray(arr), fmt, **kwargs))
    out, info = decode_image(path)
    assert info.format == fmt
    assert out.shape == (10, 14, 3)
    assert np.abs(out.astype(int)[:, 1:6] - (200, 30, 30)).max() <= 10
    assert np.abs(out.astype(int)[:, 9:] - (30, 30, 200)).max() <= 10


EPS_BYTES = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
             b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize("data", [
    EPS_BYTES,
    b"\xc5\xd0\xd3\xc6" + bytes(26) + EPS_BYTES,                  # DOS EPS binary header
], ids=["eps", "dos-eps"])
def test_eps_refused_without_running_ghostscript(monkeypatch, tmp_path, data):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert load_error(data).reason == "format_not_allowed"
    path = tmp_path / "e.jpg"
    path.write_bytes(data)
    assert load_error(path).reason == "format_not_allowed"
    assert calls == []


@pytest.mark.parametrize("data", [
    b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40),
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(40),
    b"8BPS\x00\x01" + bytes(40),
], ids=["pdf", "heic", "avif", "psd"])
def test_refused_formats(data):
    err = load_error(data)
    assert err.reason == "format_not_allowed"


def test_heif_message_suggests_converting():
    err = load_error(b"\x00\x00\x00\x18ftypheic" + bytes(40))
    assert "HEIF" in err.message and "JPEG or PNG" in err.message


# --------------------------------------------------------------------------- pixel cap

def test_max_pixels_refuses_large_image():
    data = encode(noise_rgb(200, 200), "PNG")
    assert load_error(data, max_pixels=10_000).reason == "too_large"
    assert load_error(data, max_pixels=39_999).reason == "too_large"
    assert load_image(data, max_pixels=40_000).shape == (200, 200, 3)
    assert load_image(data).shape == (200, 200, 3)


def test_max_pixels_checked_before_resizing():
    data = encode(noise_rgb(200, 200), "JPEG")
    assert load_error(data, size=16, max_pixels=10_000).reason == "too_large"


# --------------------------------------------------------------------------- resizing

def test_size_gives_square_output():
    out = load_image(encode(noise_rgb(64, 40), "PNG"), size=24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_size_tuple_is_width_height():
    out = load_image(encode(noise_rgb(64, 40), "PNG"), size=(50, 30))
    assert out.shape == (30, 50, 3)
    out = load_image(encode(noise_rgb(64, 40), "JPEG"), size=(20, 36))
    assert out.shape == (36, 20, 3)


def test_size_equal_to_original_keeps_pixels():
    im = noise_rgb(32, 32)
    out = load_image(encode(im, "PNG"), size=32)
    assert (out == np.asarray(im)).all()


def test_large_jpeg_reduced_decode_matches_full_decode():
    data = encode(smooth_rgb(1600, 1200), "JPEG", quality=90)
    out = load_image(data, size=100)
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")
                           .resize((100, 100), Image.BILINEAR)).astype(int)
    assert np.abs(out.astype(int) - reference).mean() < 6


def test_resize_after_exif_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(_marked_40x20(), "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(data, size=(10, 20))
    assert out.shape == (20, 10, 3)
    assert out[0, 9, 0] > 180 and out[0, 9, 1] < 90     # marker still top-right


# --------------------------------------------------------------------------- fuzzing finds
# Defects the fuzzing (tests/test_fuzz.py) found, each as a minimal input made here.

def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (12, 8), c) for c in (RED, GREEN, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def test_gif_cut_inside_a_later_frame_gives_its_first_frame():
    """Fuzz case 419 (seed 0): a GIF cut inside the extension block of its second frame. Pillow
    decodes the first frame, then its frame count fails (IndexError), which escaped."""
    gif = _animated_gif()
    second_frame = gif.index(b"!\xf9", gif.index(b"!\xf9") + 1)    # graphic control extension
    out, info = decode_image(gif[:second_frame + 1])
    assert out.shape == (8, 12, 3)
    assert (out == RED).all()
    assert info.n_frames >= 2


def _two_page_tiff(drop_width_of_page_2: bool) -> bytes:
    data = bytearray(encode(Image.new("RGB", (10, 6), RED), "TIFF", save_all=True,
                            append_images=[Image.new("RGB", (10, 6), GREEN)]))
    assert data[:2] == b"II"
    ifd0 = struct.unpack_from("<I", data, 4)[0]
    n0 = struct.unpack_from("<H", data, ifd0)[0]
    ifd1 = struct.unpack_from("<I", data, ifd0 + 2 + 12 * n0)[0]
    for k in range(struct.unpack_from("<H", data, ifd1)[0]):
        entry = ifd1 + 2 + 12 * k
        if drop_width_of_page_2 and struct.unpack_from("<H", data, entry)[0] == 256:
            struct.pack_into("<H", data, entry, 0xFDE8)     # ImageWidth becomes a private tag
    return bytes(data)


def test_tiff_whose_second_page_has_no_size_gives_its_first_page():
    """Fuzz case 33 (seed 0): counting the pages of a TIFF whose later page lacks its size
    tags raised TypeError ("Missing dimensions") from Pillow, which escaped."""
    out, info = decode_image(_two_page_tiff(drop_width_of_page_2=True))
    assert (out == RED).all()
    assert info.n_frames >= 2
    assert decode_image(_two_page_tiff(drop_width_of_page_2=False))[1].n_frames == 2


@pytest.mark.parametrize("size", [0, -3, (0, 5), (5, -1)])
def test_a_size_of_nothing_is_a_config_error_not_a_bad_file(size):
    """The catch-all that mapped every exception to "corrupt" reported each file as bad when
    the size was 0 (PyTorch's RuntimeError on resizing to nothing)."""
    with pytest.raises(ConfigError, match="image size must be positive"):
        load_image(encode(Image.new("RGB", (8, 8)), "PNG"), size=size)


@pytest.mark.parametrize("target, exc_type", [("_to_rgb", IndexError),
                                              ("resize_uint8", ValueError),
                                              ("_apply_exif_orientation", KeyError)])
def test_a_bug_in_our_code_is_not_reported_as_a_bad_file(monkeypatch, target, exc_type):
    """Exception types that Pillow raises on hostile input mean "corrupt" only when raised
    inside Pillow; raised by our own code they are bugs and must surface."""
    def broken(*args, **kwargs):
        raise exc_type("a bug")

    monkeypatch.setattr(images, target, broken)
    with pytest.raises(exc_type, match="a bug"):
        load_image(encode(noise_rgb(16, 12), "PNG"), size=8)


def test_memory_error_while_decoding_is_too_large(monkeypatch):
    def no_memory(self):
        raise MemoryError()

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_memory)
    err = load_error(encode(noise_rgb(16, 12), "PNG"))
    assert err.reason == "too_large"
    assert err.message.startswith("not enough memory to decode this PNG image")


def test_header_cut_messages_are_the_same_every_time():
    """Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" named a memory
    address: reports of the same file differed between runs."""
    png = encode(noise_rgb(16, 12), "PNG")
    cut = png[: png.index(b"IDAT") - 4]
    first, second = load_error(cut), load_error(cut)
    assert first.reason == "corrupt"
    assert first.message == second.message
    assert "0x" not in first.message and "PNG" in first.message


def test_pixel_cap_message_gives_exact_counts_under_a_megapixel():
    err = load_error(encode(noise_rgb(200, 200), "PNG"), max_pixels=10_000)
    assert err.message == ("200x200 = 40,000 pixels is over the limit of 10,000 pixels "
                           "(raise it with --max-pixels)")
    assert images._pixel_counts(400_000_000, 89_478_485) == ("400.0 MP", "89.5 MP")
    assert images._pixel_counts(89_478_490, 89_478_485) == ("89,478,490 pixels",
                                                            "89,478,485 pixels")


def _stretch_reference(values: np.ndarray) -> np.ndarray:
    """The high-bit-depth stretch as first written (float64 temporaries), kept as the
    reference for the in-place version."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = np.zeros(values.shape) if hi <= lo else (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def test_high_bit_depth_stretch_equals_the_reference_exactly():
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 65536, (7, 9), dtype=np.uint16),
              rng.integers(-2**31, 2**31 - 1, (7, 9), dtype=np.int32),
              np.full((3, 4), 5, np.uint16),
              np.full((3, 4), np.nan, np.float32),
              np.array([[np.inf, -np.inf, 2.0, np.nan]], np.float32)]
    for _ in range(20):
        noisy = rng.normal(0, 1e3, (7, 9)).astype(np.float32)
        noisy[rng.random(noisy.shape) < 0.2] = np.nan
        noisy[0, 0], noisy[1, 1] = np.inf, -np.inf
        arrays.append(noisy)
    for array in arrays:
        got = np.asarray(images._to_rgb(Image.fromarray(array), DEFAULT_BACKGROUND))
        expected = _stretch_reference(np.asarray(Image.fromarray(array)))
        assert (got == expected[..., None]).all(), array.dtype


def test_rgba_compositing_unchanged_by_dropping_the_copy():
    rng = np.random.default_rng(6)
    rgba = Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), "RGBA")
    base = Image.new("RGBA", rgba.size, (10, 20, 30, 255))
    expected = np.asarray(Image.alpha_composite(base, rgba.convert("RGBA")).convert("RGB"))
    assert (np.asarray(images._to_rgb(rgba, (10, 20, 30))) == expected).all()


# --------------------------------------------------------------------------- sniff_format

@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_sniff_format_allowed(fmt):
    im = Image.new("RGB", (8, 8), (1, 2, 3))
    assert sniff_format(encode(im, fmt)[:32]) == fmt


def test_sniff_format_tiff_big_endian_and_bmp_length():
    assert sniff_format(b"MM\x00*\x00\x00\x00\x08" + bytes(8)) == "TIFF"
    assert sniff_format(b"II*\x00\x08\x00\x00\x00" + bytes(8)) == "TIFF"
    assert sniff_format(b"BM" + bytes(14)) == "BMP"
    assert sniff_format(b"BM short") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None


@pytest.mark.parametrize("head, fmt", [
    (b"%!PS-Adobe-3.0 EPSF-3.0", "EPS"), (b"%PDF-1.4\n", "PDF"),
    (b"\x00\x00\x00\x18ftypheic", "HEIF"), (b"\x00\x00\x00\x1cftypavif", "AVIF"),
    (b"8BPS\x00\x01", "PSD"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
])
def test_sniff_format_refused(head, fmt):
    assert sniff_format(head + bytes(16)) == fmt


def test_sniff_format_none_on_text():
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz ,.\n"))
    for _ in range(50):
        text = "".join(rng.choice(letters, 32)).encode()
        assert sniff_format(text) is None
    assert sniff_format(b"") is None
    assert sniff_format(b"path,label\nimg.jpg,cat\n") is None


# --- JPEGs by libjpeg-turbo straight into NumPy: Pillow's pixels, exactly ----------------------
def _pillow_only(monkeypatch, data, size):
    with monkeypatch.context() as m:
        m.setattr(images, "simplejpeg", None)
        return images.decode_image(data, size)


@pytest.mark.parametrize("mode,options", [("RGB", {}), ("RGB", {"progressive": True}),
                                          ("RGB", {"subsampling": 0}), ("L", {}),
                                          ("CMYK", {})])
@pytest.mark.parametrize("orientation", [1, 3, 6, 7, 8])
def test_fast_jpeg_path_gives_pillows_pixels(monkeypatch, mode, options, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(smooth_rgb(410, 300).convert(mode), "JPEG", quality=88, exif=exif, **options)
    for size in (None, 200, 100, 64, (90, 40)):
        fast, fast_info = images.decode_image(data, size)
        slow, slow_info = _pillow_only(monkeypatch, data, size)
        np.testing.assert_array_equal(fast, slow)
        assert fast_info == slow_info


def test_fast_jpeg_path_leaves_damaged_files_to_pillow(monkeypatch):
    data = encode(noise_rgb(300, 200), "JPEG", quality=90)
    cut = data[: len(data) // 2]
    for size in (None, 64):
        fast = load_error(cut, size=size)
        with monkeypatch.context() as m:
            m.setattr(images, "simplejpeg", None)
            slow = load_error(cut, size=size)
        assert (fast.reason, fast.message) == (slow.reason, slow.message)


def test_decode_without_resize_gives_the_dct_scaled_pixels_load_image_resizes():
    data = encode(smooth_rgb(400, 300), "JPEG", quality=90)
    pixels, info = images.decode_image(data, 64, resize=False)
    assert pixels.shape == (75, 100, 3) and (info.width, info.height) == (400, 300)
    np.testing.assert_array_equal(images.resize_uint8(pixels, (64, 64)), load_image(data, 64))
    png = encode(smooth_rgb(40, 30), "PNG")
    assert images.decode_image(png, 16, resize=False)[0].shape == (30, 40, 3)
