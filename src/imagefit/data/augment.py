"""On-the-fly augmentation of uint8 RGB images: the Keras `ImageDataGenerator` argument set with the
same meaning, plus random resized crop, colour jitter, grayscale, blur, random erasing and a policy
(TrivialAugment or RandAugment). Parameters are sampled from a generator the caller gives
(`Augmenter.sample`) and applied by a pure function (`apply_params`): every geometric change,
flips included, is fused into one affine warp; photometric changes run on uint8 through lookup
tables. This module never sees validation data: callers only build an `Augmenter` for training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from imagefit._validation import param_error
from imagefit.errors import ConfigError

# cv2 threads would fight DataLoader workers for the same cores.
cv2.setNumThreads(1)

FILL_MODES = {"constant": cv2.BORDER_CONSTANT, "nearest": cv2.BORDER_REPLICATE,
              "reflect": cv2.BORDER_REFLECT, "wrap": cv2.BORDER_WRAP}
POLICIES = ("trivialaugment", "randaugment")
# Policy operations: name -> largest magnitude (at strength 1.0). Geometric ones join the warp.
_POLICY_OPS = {"identity": 0.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 0.3,
               "translate_y": 0.3, "rotate": 30.0, "brightness": 0.9, "saturation": 0.9,
               "contrast": 0.9, "sharpness": 0.9, "posterize": 4.0, "solarize": 1.0,
               "autocontrast": 0.0, "equalize": 0.0}
_GEOMETRIC_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


# validation ------------------------------------------------------------------------------------
def _preset_name(name: Any) -> str:
    if name not in PRESETS:
        raise param_error("preset", f"one of {list(PRESETS)}", name)
    return name


def _validate(c: AugmentConfig) -> None:
    def fail(name: str, what: str, value: Any) -> None:
        raise param_error(name, what, value)

    for name in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range",
                 "channel_shift_range", "cval", "color_jitter", "hue"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            fail(name, "a number >= 0", value)
    if c.rotation_range > 360:
        fail("rotation_range", "at most 360 (degrees)", c.rotation_range)
    if c.color_jitter > 1:
        fail("color_jitter", "in [0, 1]", c.color_jitter)
    if c.hue > 0.5:
        fail("hue", "in [0, 0.5]", c.hue)
    zoom = c.zoom_range
    if isinstance(zoom, (int, float)) and not isinstance(zoom, bool):
        if not 0 <= zoom < 1:
            fail("zoom_range", "a float in [0, 1) or a pair (lo, hi)", zoom)
    elif not (_is_pair(zoom) and 0 < zoom[0] <= zoom[1]):
        fail("zoom_range", "a float in [0, 1) or a pair 0 < lo <= hi", zoom)
    if c.brightness_range is not None and not (_is_pair(c.brightness_range)
                                               and 0 <= c.brightness_range[0]
                                               <= c.brightness_range[1]):
        fail("brightness_range", "a pair 0 <= lo <= hi, or null", c.brightness_range)
    if c.crop_scale is not None and not (_is_pair(c.crop_scale)
                                         and 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1):
        fail("crop_scale", "a pair 0 < lo <= hi <= 1, or null", c.crop_scale)
    for name in ("horizontal_flip", "vertical_flip"):
        if not isinstance(getattr(c, name), bool):
            fail(name, "true or false", getattr(c, name))
    for name in ("grayscale_p", "blur_p", "erase_p"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            fail(name, "a probability in [0, 1]", value)
    if c.fill_mode not in FILL_MODES:
        fail("fill_mode", f"one of {list(FILL_MODES)}", c.fill_mode)
    if c.policy is not None and c.policy not in POLICIES:
        fail("policy", f"one of {list(POLICIES)} or null", c.policy)
    if not isinstance(c.policy_ops, int) or not 1 <= c.policy_ops <= 5:
        fail("policy_ops", "an int in [1, 5]", c.policy_ops)
    if not isinstance(c.policy_magnitude, int) or not 0 <= c.policy_magnitude <= 10:
        fail("policy_magnitude", "an int in [0, 10]", c.policy_magnitude)


def _is_pair(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise. Keras fields keep Keras' meaning; defaults change nothing.

    Keras `ImageDataGenerator` fields:
        rotation_range: degrees; the angle is uniform in [-r, r].
        width_shift_range, height_shift_range: a fraction of the side if < 1, else pixels;
            uniform in [-r, r].
        shear_range: shear angle in degrees (Keras' unit: the blog's 0.2 is a very small shear).
        zoom_range: float z for [1 - z, 1 + z], or (lo, hi); x and y are drawn independently and,
            as in Keras, a factor above 1 shows more of the scene (zooms out).
        channel_shift_range: one offset in [-r, r] added to every channel, clipped to the
            image's own range.
        brightness_range: (lo, hi); the image is multiplied by a factor uniform in it.
        horizontal_flip, vertical_flip: flip with probability 0.5.
        fill_mode: constant, nearest, reflect or wrap (periodic tiling) for pixels from outside.
        cval: grey level used by fill_mode "constant".
    Beyond Keras:
        crop_scale: (lo, hi) area fraction of a random resized crop (aspect 3/4 to 4/3), or None.
        color_jitter: brightness, contrast and saturation factors uniform in [1 - j, 1 + j].
        hue: hue shift uniform in [-h, h] of a full turn (h <= 0.5).
        grayscale_p, blur_p, erase_p: probabilities of grayscale, Gaussian blur (sigma 0.1-2.0)
            and random erasing (2-33 % of the area, filled with one random colour).
        policy: "trivialaugment" (one op, random strength) or "randaugment" (`policy_ops` ops at
            `policy_magnitude` out of 10), or None.
    """

    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    shear_range: float = 0.0
    zoom_range: float | tuple[float, float] = 0.0
    channel_shift_range: float = 0.0
    brightness_range: tuple[float, float] | None = None
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    cval: float = 0.0
    crop_scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    erase_p: float = 0.0
    policy: str | None = None
    policy_ops: int = 2
    policy_magnitude: int = 9

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "AugmentConfig":
        """Build from a mapping (a YAML file); `preset: NAME` starts from a preset.

        Example:
            >>> AugmentConfig.from_mapping({"preset": "keras", "vertical_flip": True}).vertical_flip
            True
        """
        values = dict(values)
        base = PRESETS[_preset_name(values.pop("preset", "none"))]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown augmentation keys {unknown}. Valid keys are: "
                              f"{sorted(known | {'preset'})}.")
        for key in ("zoom_range", "brightness_range", "crop_scale"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return dataclasses.replace(base, **values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def is_identity(self) -> bool:
        return self == AugmentConfig(fill_mode=self.fill_mode, cval=self.cval)


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "light": AugmentConfig(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
                           zoom_range=0.1, horizontal_flip=True, fill_mode="reflect"),
    # The Keras blog's settings ("Building powerful image classification models using very
    # little data"), with its fill mode.
    "keras": AugmentConfig(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                           shear_range=0.2, zoom_range=0.2, horizontal_flip=True,
                           fill_mode="nearest"),
    "strong": AugmentConfig(crop_scale=(0.35, 1.0), horizontal_flip=True, fill_mode="reflect",
                            policy="trivialaugment", erase_p=0.25),
    # Colour and focus only: nothing moves, so targets that are angles, positions or counts
    # of what is in the frame stay true (the regression default).
    "photometric": AugmentConfig(color_jitter=0.2, blur_p=0.1),
}


def resolve_augment(spec: "str | Mapping | AugmentConfig | None") -> AugmentConfig:
    """A preset name, a YAML file path, a mapping or an `AugmentConfig` -> `AugmentConfig`.

    Example:
        >>> resolve_augment("keras").rotation_range
        40
    """
    if spec is None:
        return PRESETS["none"]
    if isinstance(spec, AugmentConfig):
        return spec
    if isinstance(spec, Mapping):
        return AugmentConfig.from_mapping(spec)
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    if isinstance(spec, str) and spec.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"Cannot read augmentation file {spec}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"Augmentation file {spec} is not valid YAML: {exc}") from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"Augmentation file {spec} must hold a mapping of settings, "
                              f"e.g. 'rotation_range: 20'.")
        return AugmentConfig.from_mapping(values)
    raise ConfigError(f"The 'augment' parameter must be one of {list(PRESETS)} or a .yaml file. "
                      f"Got {spec!r} instead.")


@dataclass(frozen=True)
class AugmentParams:
    """One image's sampled augmentation, as plain values (JSON-friendly via `to_dict`).

    `matrix` maps output pixel (x, y, 1) to the input pixel it samples (the inverse warp).
    """

    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    channel_shift: float = 0.0
    brightness: float = 1.0
    jitter: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)
    grayscale: bool = False
    blur_sigma: float = 0.0
    ops: tuple[tuple[str, float], ...] = ()
    erase: tuple[int, int, int, int, int, int, int] | None = None  # x, y, w, h, r, g, b
    keras: dict = field(default_factory=dict)  # the Keras-style draws, for manifests

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["matrix"] = [[round(v, 6) for v in row] for row in self.matrix]
        return out


IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


class Augmenter:
    """Samples and applies augmentations for images of one size.

    Example:
        >>> aug = Augmenter("keras")
        >>> image = np.zeros((32, 32, 3), np.uint8)
        >>> params = aug.sample(np.random.default_rng(0), image.shape[:2])
        >>> aug.apply(image, params).shape
        (32, 32, 3)
    """

    def __init__(self, config: "str | Mapping | AugmentConfig | None" = "none"):
        self.config = resolve_augment(config)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.sample(rng, image.shape[:2]))

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"

    def apply(self, image: np.ndarray, params: AugmentParams) -> np.ndarray:
        return apply_params(image, params, fill_mode=self.config.fill_mode, cval=self.config.cval)

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> AugmentParams:
        """Draw one image's parameters from `rng` for an image of (height, width) `shape`."""
        c, (h, w) = self.config, shape
        draws: dict[str, float] = {}
        theta = rng.uniform(-c.rotation_range, c.rotation_range) if c.rotation_range else 0.0
        tx = _shift(rng, c.height_shift_range, h) if c.height_shift_range else 0.0
        ty = _shift(rng, c.width_shift_range, w) if c.width_shift_range else 0.0
        shear = rng.uniform(-c.shear_range, c.shear_range) if c.shear_range else 0.0
        zoom = _zoom_bounds(c.zoom_range)
        zx, zy = rng.uniform(*zoom, 2) if zoom != (1.0, 1.0) else (1.0, 1.0)
        flip_h = bool(c.horizontal_flip and rng.random() < 0.5)
        flip_v = bool(c.vertical_flip and rng.random() < 0.5)
        draws.update(theta=theta, tx=tx, ty=ty, shear=shear, zx=float(zx), zy=float(zy),
                     flip_horizontal=flip_h, flip_vertical=flip_v)
        # Keras composes in (row, col) coordinates about the image centre: rotation, shift,
        # shear, zoom; the product maps output coordinates to input coordinates.
        m = _keras_matrix(theta, tx, ty, shear, float(zx), float(zy), h, w)
        if flip_h:
            m = m @ _flip_matrix(w, axis=1)
        if flip_v:
            m = m @ _flip_matrix(h, axis=0)
        if c.crop_scale is not None:
            m = _crop_matrix(rng, c.crop_scale, h, w) @ m
        ops = _sample_policy(rng, c)
        for name, magnitude in ops:
            if name in _GEOMETRIC_OPS:
                m = m @ _policy_matrix(name, magnitude, h, w)
        ops = tuple((n, v) for n, v in ops if n not in _GEOMETRIC_OPS and n != "identity")
        channel_shift = (rng.uniform(-c.channel_shift_range, c.channel_shift_range)
                         if c.channel_shift_range else 0.0)
        brightness = rng.uniform(*c.brightness_range) if c.brightness_range else 1.0
        jitter = (1.0, 1.0, 1.0, 0.0)
        if c.color_jitter or c.hue:
            j = c.color_jitter
            jitter = (*(float(v) for v in rng.uniform(1 - j, 1 + j, 3)),
                      float(rng.uniform(-c.hue, c.hue)))
        grayscale = bool(c.grayscale_p and rng.random() < c.grayscale_p)
        blur = float(rng.uniform(0.1, 2.0)) if c.blur_p and rng.random() < c.blur_p else 0.0
        erase = _sample_erase(rng, h, w) if c.erase_p and rng.random() < c.erase_p else None
        # Back from (row, col) to OpenCV's (x, y) order.
        xy = m[[1, 0]][:, [1, 0, 2]]
        matrix = tuple(tuple(float(v) for v in row) for row in xy[:2])
        return AugmentParams(matrix, float(channel_shift), float(brightness), jitter, grayscale,
                             blur, ops, erase, draws)


def apply_params(image: np.ndarray, params: AugmentParams, *, fill_mode: str = "nearest",
                 cval: float = 0.0) -> np.ndarray:
    """Apply sampled parameters to a (H, W, 3) uint8 image; pure (the input is not changed).

    Order as in Keras: the warp (flips included), channel shift, brightness; then colour jitter,
    grayscale, policy colour ops, blur, erasing.
    """
    out = image
    if params.matrix != IDENTITY:
        h, w = image.shape[:2]
        matrix = np.asarray(params.matrix, np.float64)
        out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=FILL_MODES[fill_mode], borderValue=(cval, cval, cval))
        if fill_mode == "constant":
            # Keras (scipy "constant") gives pure cval wherever the source point is outside
            # the image; OpenCV would blend the edge pixels with cval over a 1-pixel band.
            out[outside_mask(matrix, h, w)] = np.uint8(np.clip(round(cval), 0, 255))
    if params.channel_shift:
        lo, hi = int(out.min()), int(out.max())
        out = np.clip(out.astype(np.int16) + int(round(params.channel_shift)), lo, hi)
        out = out.astype(np.uint8)
    if params.brightness != 1.0:
        out = _lut(out, np.arange(256) * params.brightness)
    if params.jitter != (1.0, 1.0, 1.0, 0.0):
        out = _jitter(out, *params.jitter)
    if params.grayscale:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    for name, magnitude in params.ops:
        out = _photometric_op(out, name, magnitude)
    if params.blur_sigma:
        out = cv2.GaussianBlur(out, (0, 0), params.blur_sigma)
    if params.erase is not None:
        x, y, ew, eh, *colour = params.erase
        out = out.copy() if out is image else out
        out[y:y + eh, x:x + ew] = colour
    return out if out is not image else image.copy()


def outside_mask(matrix: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mask of output pixels whose source point (x, y) lies outside [0, w-1] x [0, h-1]."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    sy = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    eps = 1e-6
    return (sx < -eps) | (sx > w - 1 + eps) | (sy < -eps) | (sy > h - 1 + eps)


# sampling helpers ------------------------------------------------------------------------------
def _shift(rng: np.random.Generator, shift_range: float, side: int) -> float:
    value = rng.uniform(-shift_range, shift_range)
    return value * side if shift_range < 1 else value


def _zoom_bounds(zoom: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(zoom, (int, float)):
        return 1.0 - zoom, 1.0 + zoom
    return float(zoom[0]), float(zoom[1])


def _keras_matrix(theta: float, tx: float, ty: float, shear: float, zx: float, zy: float,
                  h: int, w: int) -> np.ndarray:
    m = np.eye(3)
    if theta:
        t = np.deg2rad(theta)
        m = m @ np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    if tx or ty:
        m = m @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    if shear:
        s = np.deg2rad(shear)
        m = m @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    if zx != 1 or zy != 1:
        m = m @ np.diag([zx, zy, 1.0])
    if np.allclose(m, np.eye(3)):
        return np.eye(3)
    return _about_centre(m, h, w)


def _about_centre(m: np.ndarray, h: int, w: int) -> np.ndarray:
    # Keras' transform_matrix_offset_center: centre at (h / 2 - 0.5, w / 2 - 0.5) in (row, col).
    oy, ox = h / 2 - 0.5, w / 2 - 0.5
    to_centre = np.array([[1, 0, oy], [0, 1, ox], [0, 0, 1]])
    back = np.array([[1, 0, -oy], [0, 1, -ox], [0, 0, 1]])
    return to_centre @ m @ back


def _flip_matrix(side: int, axis: int) -> np.ndarray:
    m = np.eye(3)
    m[axis, axis] = -1
    m[axis, 2] = side - 1
    return m


def _crop_matrix(rng: np.random.Generator, scale: tuple[float, float], h: int,
                 w: int) -> np.ndarray:
    """A random crop (area fraction in `scale`, aspect 3/4-4/3) stretched to the full frame."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = min(w, h), min(w, h)
    y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
    sy, sx = ch / h, cw / w
    # Output pixel centre (r + 0.5) maps to the crop pixel centre y0 + (r + 0.5) * sy.
    return np.array([[sy, 0, y0 + 0.5 * sy - 0.5], [0, sx, x0 + 0.5 * sx - 0.5], [0, 0, 1]])


def _sample_policy(rng: np.random.Generator, c: AugmentConfig) -> list[tuple[str, float]]:
    if c.policy is None:
        return []
    names = list(_POLICY_OPS)
    if c.policy == "trivialaugment":
        chosen, strengths = [names[rng.integers(len(names))]], [rng.uniform(0, 1)]
    else:
        chosen = [names[i] for i in rng.integers(len(names), size=c.policy_ops)]
        strengths = [c.policy_magnitude / 10] * c.policy_ops
    ops = []
    for name, strength in zip(chosen, strengths):
        magnitude = _POLICY_OPS[name] * strength
        if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
                    "saturation", "contrast", "sharpness") and rng.random() < 0.5:
            magnitude = -magnitude
        ops.append((name, float(magnitude)))
    return ops


def _policy_matrix(name: str, v: float, h: int, w: int) -> np.ndarray:
    if name == "rotate":
        return _keras_matrix(v, 0, 0, 0, 1, 1, h, w)
    m = np.eye(3)
    if name == "shear_x":
        m[1, 0] = v
    elif name == "shear_y":
        m[0, 1] = v
    elif name == "translate_x":
        m[1, 2] = v * w
    elif name == "translate_y":
        m[0, 2] = v * h
    return _about_centre(m, h, w)


def _sample_erase(rng: np.random.Generator, h: int, w: int) -> tuple[int, ...] | None:
    for _ in range(10):
        area = h * w * rng.uniform(0.02, 0.33)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            colour = rng.integers(0, 256, 3)
            return (x, y, ew, eh, *(int(v) for v in colour))
    return None


# photometric helpers ---------------------------------------------------------------------------
def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return cv2.LUT(image, np.clip(np.round(table), 0, 255).astype(np.uint8))


def _blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """PIL ImageEnhance: other + factor * (image - other), clipped to uint8."""
    out = cv2.addWeighted(image.astype(np.float32), factor,
                          np.broadcast_to(np.float32(other), image.shape).astype(np.float32)
                          if np.isscalar(other) else other.astype(np.float32), 1 - factor, 0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float,
            hue: float) -> np.ndarray:
    out = _lut(image, np.arange(256) * brightness) if brightness != 1 else image
    if contrast != 1:
        mean = float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean())
        out = _lut(out, mean + contrast * (np.arange(256) - mean))
    if saturation != 1:
        out = _blend(out, _grey(out), saturation)
    if hue:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(hue * 180))) % 180)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def _photometric_op(image: np.ndarray, name: str, v: float) -> np.ndarray:
    if name == "brightness":
        return _lut(image, np.arange(256) * (1 + v))
    if name == "contrast":
        mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
        return _lut(image, mean + (1 + v) * (np.arange(256) - mean))
    if name == "saturation":
        return _blend(image, _grey(image), 1 + v)
    if name == "sharpness":
        kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
        return _blend(image, cv2.filter2D(image, -1, kernel), 1 + v)
    if name == "posterize":
        bits = 8 - int(round(v))
        return image & np.uint8((0xFF << (8 - bits)) & 0xFF)
    if name == "solarize":
        threshold = 256 * (1 - v)
        table = np.arange(256)
        return _lut(image, np.where(table >= threshold, 255 - table, table))
    if name == "autocontrast":
        channels = []
        for ch in cv2.split(image):
            lo, hi = int(ch.min()), int(ch.max())
            table = np.arange(256) if hi <= lo else (np.arange(256) - lo) * (255 / (hi - lo))
            channels.append(_lut(ch, table))
        return cv2.merge(channels)
    if name == "equalize":
        return cv2.merge([cv2.equalizeHist(ch) for ch in cv2.split(image)])
    raise ValueError(f"unknown policy op {name!r}")
