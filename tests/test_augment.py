"""Augmentation, tested the torchvision way: the identity config and p=0 change nothing, p=1 equals
a reference, the geometric warp equals Keras' `apply_affine_transform` (re-implemented here with
`scipy.ndimage.affine_transform` from the draws in `params.keras`), same seed -> same output,
bounds hold over many seeds, rates sit within a stated tolerance; and the config's validation.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from scipy import ndimage

from imagefit.data.augment import (
    PRESETS,
    AugmentConfig,
    Augmenter,
    AugmentParams,
    apply_params,
    resolve_augment,
)
from imagefit.errors import ConfigError

SEEDS = range(500)


def smooth_image(h: int = 40, w: int = 56) -> np.ndarray:
    """Low-frequency RGB content: bilinear implementations agree on it to well under a level."""
    r, c = np.mgrid[0:h, 0:w].astype(float)
    image = np.stack([128 + 100 * np.sin(r / h * 2.1 + 0.3) * np.cos(c / w * 1.7),
                      40 + 180 * (r + c) / (h + w),
                      128 + 90 * np.cos(r / h * 1.3 - c / w * 2.4)], -1)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def noisy_image(h: int = 32, w: int = 32, seed: int = 0, lo: int = 0, hi: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, (h, w, 3), dtype=np.uint8)


def sample(config, seed: int, shape=(32, 32)) -> AugmentParams:
    return Augmenter(config).sample(np.random.default_rng(seed), shape)


# --- the Keras reference ------------------------------------------------------------------------

SCIPY_MODES = {"constant": "constant", "nearest": "nearest", "reflect": "reflect",
               "wrap": "grid-wrap"}  # scipy's old "wrap" is not periodic; Keras means periodic


def keras_matrix(theta, tx, ty, shear, zx, zy, h, w) -> np.ndarray:
    """Keras' `apply_affine_transform` matrix, (row, col) coordinates, output -> input."""
    m = np.eye(3)
    t = np.deg2rad(theta)
    m = m @ np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    m = m @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    s = np.deg2rad(shear)
    m = m @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    m = m @ np.diag([zx, zy, 1.0])
    # transform_matrix_offset_center
    o_r, o_c = h / 2 - 0.5, w / 2 - 0.5
    offset = np.array([[1, 0, o_r], [0, 1, o_c], [0, 0, 1]])
    reset = np.array([[1, 0, -o_r], [0, 1, -o_c], [0, 0, 1]])
    return offset @ m @ reset


def keras_reference(image: np.ndarray, draws: dict, fill_mode: str, cval: float) -> np.ndarray:
    """Keras' warp (order=1) then its flips, as float."""
    h, w = image.shape[:2]
    m = keras_matrix(draws["theta"], draws["tx"], draws["ty"], draws["shear"], draws["zx"],
                     draws["zy"], h, w)
    out = np.stack([ndimage.affine_transform(image[..., k].astype(float), m[:2, :2], m[:2, 2],
                                             order=1, mode=SCIPY_MODES[fill_mode], cval=cval)
                    for k in range(3)], -1)
    if draws["flip_horizontal"]:
        out = out[:, ::-1]
    if draws["flip_vertical"]:
        out = out[::-1]
    return out


def warp_config(fill_mode: str) -> AugmentConfig:
    return AugmentConfig(rotation_range=30, width_shift_range=0.15, height_shift_range=0.1,
                         shear_range=15, zoom_range=(0.8, 1.25), horizontal_flip=True,
                         vertical_flip=True, fill_mode=fill_mode, cval=100)


@pytest.mark.parametrize("fill_mode", ["constant", "nearest", "reflect", "wrap"])
def test_warp_equals_keras_reference(fill_mode):
    # Non-square, so a swapped row/col convention or a wrong centre cannot pass.
    image = smooth_image(40, 56)
    augmenter = Augmenter(warp_config(fill_mode))
    for seed in range(12):
        params = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        got = augmenter.apply(image, params)
        want = keras_reference(image, params.keras, fill_mode, cval=100)
        assert got.shape == image.shape and got.dtype == np.uint8
        error = np.abs(got.astype(float) - want).mean()
        assert error < 1.0, (seed, params.keras, error)


def test_constant_fill_matches_keras_away_from_the_edge_and_fills_cval():
    """fill_mode='constant' equals Keras wherever the sampled point is not within a pixel of
    the image's edge, and is exactly cval beyond it."""
    image = smooth_image(40, 56)
    augmenter = Augmenter(warp_config("constant"))
    n_outside = 0
    for seed in range(12):
        params = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        got = augmenter.apply(image, params).astype(float)
        d = params.keras
        m = keras_matrix(d["theta"], d["tx"], d["ty"], d["shear"], d["zx"], d["zy"], 40, 56)
        # Source (row, col) of every output pixel, in the flipped output's frame.
        r, c = np.mgrid[0:40, 0:56].astype(float)
        if d["flip_horizontal"]:
            c = 55 - c
        if d["flip_vertical"]:
            r = 39 - r
        src_r = m[0, 0] * r + m[0, 1] * c + m[0, 2]
        src_c = m[1, 0] * r + m[1, 1] * c + m[1, 2]
        near_edge = ((np.abs(src_r + 0.5) < 1.5) | (np.abs(src_r - 39.5) < 1.5)
                     | (np.abs(src_c + 0.5) < 1.5) | (np.abs(src_c - 55.5) < 1.5))
        keras = keras_reference(image, d, "constant", cval=100)
        assert np.abs(got - keras)[~near_edge].max() <= 1.0
        outside = (src_r < -1) | (src_r > 40) | (src_c < -1) | (src_c > 56)
        assert np.all(got[outside] == 100)  # cval, exactly
        n_outside += outside.sum()
    assert n_outside > 1000  # the draws do reach outside the image


def test_keras_preset_warp_equals_reference_on_square_images():
    image = smooth_image(48, 48)
    augmenter = Augmenter("keras")
    for seed in range(8):
        params = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        want = keras_reference(image, params.keras, "nearest", 0.0)
        assert np.abs(augmenter.apply(image, params).astype(float) - want).mean() < 1.0


def test_keras_matrix_matches_reference_matrix():
    from imagefit.data.augment import _keras_matrix

    rng = np.random.default_rng(4)
    for _ in range(50):
        theta, tx, ty, shear = rng.uniform(-40, 40), rng.uniform(-6, 6), rng.uniform(-6, 6), \
            rng.uniform(-20, 20)
        zx, zy = rng.uniform(0.7, 1.3, 2)
        h, w = int(rng.integers(8, 64)), int(rng.integers(8, 64))
        np.testing.assert_allclose(_keras_matrix(theta, tx, ty, shear, zx, zy, h, w),
                                   keras_matrix(theta, tx, ty, shear, zx, zy, h, w), atol=1e-9)


def test_keras_zoom_above_one_zooms_out():
    # A centred white square: zoom factor 2 (Keras: shows more of the scene) halves its side.
    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 10:30] = 255
    params = sample(AugmentConfig(zoom_range=(2.0, 2.0), fill_mode="constant"), 0, (40, 40))
    assert (params.keras["zx"], params.keras["zy"]) == (2.0, 2.0)
    out = Augmenter(AugmentConfig(zoom_range=(2.0, 2.0), fill_mode="constant")).apply(image,
                                                                                      params)
    white = np.argwhere(out[..., 0] > 127)
    assert white.min(axis=0).tolist() == [15, 15] and white.max(axis=0).tolist() == [24, 24]


# --- identity, p=0, p=1 ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["none", AugmentConfig(), AugmentConfig(fill_mode="reflect",
                                                                          cval=9)])
def test_identity_config_returns_an_equal_copy_and_leaves_input_alone(config):
    image = noisy_image(24, 40, seed=2)
    before = image.copy()
    augmenter = Augmenter(config)
    assert augmenter.config.is_identity
    for seed in range(20):
        out = augmenter(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, before)
        assert out is not image and not np.shares_memory(out, image)
        out[:] = 0  # the result is the caller's to change
        np.testing.assert_array_equal(image, before)


def test_apply_params_never_modifies_its_input():
    image = noisy_image(24, 40, seed=3)
    before = image.copy()
    config = AugmentConfig(rotation_range=20, channel_shift_range=30, brightness_range=(0.5, 1.5),
                           color_jitter=0.4, hue=0.1, grayscale_p=0.5, blur_p=0.5, erase_p=1.0,
                           policy="randaugment", horizontal_flip=True)
    augmenter = Augmenter(config)
    for seed in range(30):
        augmenter(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(image, before)
    # erasing alone (no warp) must also copy first
    params = sample(AugmentConfig(erase_p=1.0), 0, (24, 40))
    assert params.matrix == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)) and params.erase is not None
    apply_params(image, params)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("name", ["grayscale_p", "blur_p", "erase_p"])
def test_probability_zero_changes_nothing(name):
    image = noisy_image(seed=4)
    augmenter = Augmenter(AugmentConfig(**{name: 0.0}))
    for seed in range(100):
        params = augmenter.sample(np.random.default_rng(seed), (32, 32))
        assert not params.grayscale and params.blur_sigma == 0.0 and params.erase is None
        np.testing.assert_array_equal(augmenter.apply(image, params), image)


def test_probability_zero_keeps_the_other_draws():
    # p=0 must not change what the rest of the pipeline does with the same seed.
    base = AugmentConfig(rotation_range=20, zoom_range=0.2, horizontal_flip=True)
    zero = dataclasses.replace(base, grayscale_p=0.0, blur_p=0.0, erase_p=0.0)
    image = noisy_image(seed=5)
    for seed in range(20):
        a, b = sample(base, seed), sample(zero, seed)
        assert a == b
        np.testing.assert_array_equal(Augmenter(base).apply(image, a),
                                      Augmenter(zero).apply(image, b))


def test_grayscale_p1_gives_equal_channels_equal_to_cv2_grey():
    image = noisy_image(24, 40, seed=6)
    augmenter = Augmenter(AugmentConfig(grayscale_p=1.0))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    for seed in range(50):
        out = augmenter(image, np.random.default_rng(seed))
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        np.testing.assert_array_equal(out[..., 0], grey)


def test_blur_p1_equals_gaussian_blur_reference():
    image = noisy_image(seed=7)
    augmenter = Augmenter(AugmentConfig(blur_p=1.0))
    sigmas = []
    for seed in range(100):
        params = augmenter.sample(np.random.default_rng(seed), (32, 32))
        assert 0.1 <= params.blur_sigma <= 2.0
        sigmas.append(params.blur_sigma)
        np.testing.assert_array_equal(augmenter.apply(image, params),
                                      cv2.GaussianBlur(image, (0, 0), params.blur_sigma))
    assert min(sigmas) < 0.3 and max(sigmas) > 1.8  # the whole documented range is used


def test_erase_p1_paints_one_constant_rectangle_within_area_bounds():
    h, w = 32, 32
    image = noisy_image(h, w, seed=8)
    augmenter = Augmenter(AugmentConfig(erase_p=1.0))
    fractions = []
    for seed in SEEDS:
        params = augmenter.sample(np.random.default_rng(seed), (h, w))
        assert params.erase is not None
        x, y, ew, eh, *colour = params.erase
        assert 0 < ew < w and 0 < eh < h and 0 <= x <= w - ew and 0 <= y <= h - eh
        assert all(0 <= v <= 255 for v in colour)
        # 2-33 % of the area, up to rounding each side to whole pixels
        slack = 0.5 * (ew + eh) + 0.25
        assert 0.02 * h * w - slack <= ew * eh <= 0.33 * h * w + slack
        fractions.append(ew * eh / (h * w))
        out = augmenter.apply(image, params)
        inside = np.zeros((h, w), bool)
        inside[y:y + eh, x:x + ew] = True
        assert (out[inside] == np.array(colour, np.uint8)).all()
        np.testing.assert_array_equal(out[~inside], image[~inside])
    assert min(fractions) < 0.04 and max(fractions) > 0.28


# --- flips, determinism, bounds -------------------------------------------------------------------

def test_horizontal_flip_is_identity_or_mirror_at_rate_one_half():
    image = noisy_image(24, 40, seed=9)
    augmenter = Augmenter(AugmentConfig(horizontal_flip=True))
    flipped = 0
    for seed in range(400):
        params = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        out = augmenter.apply(image, params)
        if params.keras["flip_horizontal"]:
            np.testing.assert_array_equal(out, image[:, ::-1])
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image)
    # Binomial(400, 0.5) has sd 10: +-0.1 is four standard deviations.
    assert abs(flipped / 400 - 0.5) < 0.1


def test_vertical_flip_is_identity_or_mirror():
    image = noisy_image(24, 40, seed=10)
    augmenter = Augmenter(AugmentConfig(vertical_flip=True))
    seen = set()
    for seed in range(60):
        params = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        flip = params.keras["flip_vertical"]
        seen.add(flip)
        np.testing.assert_array_equal(augmenter.apply(image, params),
                                      image[::-1] if flip else image)
    assert seen == {True, False}


@pytest.mark.parametrize("preset", ["light", "keras", "strong"])
def test_same_seed_same_params_same_output(preset):
    image = noisy_image(24, 40, seed=11)
    augmenter = Augmenter(preset)
    outputs = []
    for seed in range(10):
        a = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        b = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        assert a == b
        out_a, out_b = augmenter.apply(image, a), augmenter.apply(image, b)
        np.testing.assert_array_equal(out_a, out_b)
        np.testing.assert_array_equal(augmenter(image, np.random.default_rng(seed)), out_a)
        outputs.append((a, out_a))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert outputs[i][0] != outputs[j][0]
            assert not np.array_equal(outputs[i][1], outputs[j][1])


def test_bounds_hold_over_many_seeds():
    h, w = 30, 50
    config = AugmentConfig(rotation_range=25, height_shift_range=0.2, width_shift_range=0.1,
                           shear_range=12, zoom_range=0.3, brightness_range=(0.6, 1.4),
                           channel_shift_range=30)
    augmenter = Augmenter(config)
    d = {k: [] for k in ("theta", "tx", "ty", "shear", "zx", "zy", "brightness", "shift")}
    for seed in SEEDS:
        p = augmenter.sample(np.random.default_rng(seed), (h, w))
        for key in ("theta", "tx", "ty", "shear", "zx", "zy"):
            d[key].append(p.keras[key])
        d["brightness"].append(p.brightness)
        d["shift"].append(p.channel_shift)
    d = {k: np.array(v) for k, v in d.items()}
    assert np.abs(d["theta"]).max() <= 25 and np.abs(d["shear"]).max() <= 12
    assert np.abs(d["tx"]).max() <= 0.2 * h and np.abs(d["ty"]).max() <= 0.1 * w
    assert d["zx"].min() >= 0.7 and d["zx"].max() <= 1.3
    assert d["zy"].min() >= 0.7 and d["zy"].max() <= 1.3
    assert d["brightness"].min() >= 0.6 and d["brightness"].max() <= 1.4
    assert np.abs(d["shift"]).max() <= 30
    # ... and the ranges are used (a draw stuck at 0 or 1 would pass the bounds above)
    assert np.abs(d["theta"]).max() > 24 and np.abs(d["tx"]).max() > 0.19 * h
    assert np.abs(d["ty"]).max() > 0.095 * w and np.abs(d["shear"]).max() > 11.5
    assert d["zx"].min() < 0.72 and d["zy"].max() > 1.28
    assert d["brightness"].min() < 0.62 and d["brightness"].max() > 1.38
    assert np.abs(d["shift"]).max() > 29
    assert not np.allclose(d["zx"], d["zy"])  # x and y are drawn independently, as in Keras


def test_shift_ranges_of_one_or_more_are_pixels():
    config = AugmentConfig(height_shift_range=3, width_shift_range=2.5)
    tx = np.array([sample(config, s, (100, 200)).keras["tx"] for s in range(200)])
    ty = np.array([sample(config, s, (100, 200)).keras["ty"] for s in range(200)])
    assert np.abs(tx).max() <= 3 and np.abs(tx).max() > 2.8
    assert np.abs(ty).max() <= 2.5 and np.abs(ty).max() > 2.3


def test_zoom_pair_is_used_as_given():
    zx = [sample(AugmentConfig(zoom_range=(1.1, 1.4)), s).keras["zx"] for s in range(200)]
    assert 1.1 <= min(zx) < 1.12 and 1.38 < max(zx) <= 1.4


def test_brightness_half_halves_pixel_values():
    image = noisy_image(24, 40, seed=12)
    augmenter = Augmenter(AugmentConfig(brightness_range=(0.5, 0.5)))
    out = augmenter(image, np.random.default_rng(0))
    assert augmenter.sample(np.random.default_rng(0), (24, 40)).brightness == 0.5
    assert np.abs(out.astype(float) - image * 0.5).max() <= 0.5  # rounding only


def test_channel_shift_stays_within_the_image_range():
    image = noisy_image(24, 40, seed=13, lo=40, hi=201)  # values in [40, 200]
    lo, hi = int(image.min()), int(image.max())
    augmenter = Augmenter(AugmentConfig(channel_shift_range=100))
    changed = 0
    for seed in range(100):
        params = augmenter.sample(np.random.default_rng(seed), image.shape[:2])
        out = augmenter.apply(image, params)
        assert out.min() >= lo and out.max() <= hi
        expected = np.clip(image.astype(int) + round(params.channel_shift), lo, hi)
        np.testing.assert_array_equal(out, expected)
        changed += not np.array_equal(out, image)
    assert changed >= 95


@pytest.mark.parametrize("config", [*PRESETS, {"policy": "trivialaugment"},
                                    {"policy": "randaugment", "policy_ops": 5},
                                    {"policy": "randaugment", "policy_magnitude": 10,
                                     "crop_scale": [0.2, 0.5], "color_jitter": 0.5, "hue": 0.5,
                                     "fill_mode": "wrap"}],
                         ids=lambda c: c if isinstance(c, str) else "-".join(map(str, c.values())))
def test_presets_and_policies_keep_shape_and_dtype(config):
    augmenter = Augmenter(config)
    changed = 0
    for shape in [(24, 40), (40, 24)]:
        image = noisy_image(*shape, seed=14)
        for seed in range(150):
            out = augmenter(image, np.random.default_rng(seed))
            assert out.shape == image.shape and out.dtype == np.uint8
            changed += not np.array_equal(out, image)
    if config == "none":
        assert changed == 0
    else:
        assert changed > 150  # more than half of the draws change the image


def test_policies_use_many_ops():
    names = set()
    for seed in range(300):
        names.update(n for n, _ in sample({"policy": "trivialaugment"}, seed).ops)
    # The non-geometric ops are kept in params.ops (identity and geometric ones are fused/dropped).
    assert names == {"brightness", "saturation", "contrast", "sharpness", "posterize", "solarize",
                     "autocontrast", "equalize"}


# --- config resolution and validation -----------------------------------------------------------

def test_resolve_augment_accepts_every_spec(tmp_path):
    assert resolve_augment(None) == PRESETS["none"]
    assert resolve_augment("keras") is PRESETS["keras"]
    config = AugmentConfig(rotation_range=5)
    assert resolve_augment(config) is config
    assert resolve_augment({"rotation_range": 5}) == config
    assert resolve_augment({"preset": "light"}) == PRESETS["light"]


def test_yaml_preset_with_override(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("preset: keras\nrotation_range: 10\nvertical_flip: true\n"
                    "zoom_range: [0.9, 1.2]\n", encoding="utf-8")
    config = resolve_augment(str(path))
    keras = PRESETS["keras"]
    assert config.rotation_range == 10 and config.vertical_flip is True
    assert config.zoom_range == (0.9, 1.2)  # lists become tuples
    assert config == dataclasses.replace(keras, rotation_range=10, vertical_flip=True,
                                         zoom_range=(0.9, 1.2))
    # and it is used: the zoom draws lie in the pair
    zx = [Augmenter(str(path)).sample(np.random.default_rng(s), (32, 32)).keras["zx"]
          for s in range(50)]
    assert 0.9 <= min(zx) and max(zx) <= 1.2


@pytest.mark.parametrize("text, key", [
    ("preset: keras\nrotaton_range: 10\n", "rotaton_range"),
    ("rotation_range: 400\n", "rotation_range"),
    ("rotation_range: -1\n", "rotation_range"),
    ("width_shift_range: abc\n", "width_shift_range"),
    ("zoom_range: 1.5\n", "zoom_range"),
    ("zoom_range: [1.2, 0.8]\n", "zoom_range"),
    ("brightness_range: [1.5, 0.5]\n", "brightness_range"),
    ("crop_scale: [0.5, 1.5]\n", "crop_scale"),
    ("horizontal_flip: 1\n", "horizontal_flip"),
    ("erase_p: 1.5\n", "erase_p"),
    ("grayscale_p: true\n", "grayscale_p"),
    ("color_jitter: 2\n", "color_jitter"),
    ("hue: 0.7\n", "hue"),
    ("fill_mode: mirror\n", "fill_mode"),
    ("policy: autoaugment\n", "policy"),
    ("policy_ops: 0\n", "policy_ops"),
    ("policy_magnitude: 11\n", "policy_magnitude"),
    ("preset: heavy\n", "preset"),
])
def test_yaml_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "aug.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=key):
        resolve_augment(str(path))


@pytest.mark.parametrize("spec, match", [
    ("missing.yaml", "Cannot read"),
    ("heavy", "'augment' parameter"),
    (42, "'augment' parameter"),
])
def test_bad_specs_raise_config_error(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=match):
        resolve_augment(spec)


def test_yaml_that_is_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_augment(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_augment(str(tmp_path / "bad.yaml"))


def test_mapping_unknown_key_lists_it():
    with pytest.raises(ConfigError, match=r"Unknown augmentation keys \['flip'\]"):
        resolve_augment({"preset": "light", "flip": True})


@pytest.mark.parametrize("config", ["keras", "strong", {"policy": "randaugment", "erase_p": 1.0,
                                                         "color_jitter": 0.3, "hue": 0.1,
                                                         "grayscale_p": 1.0, "blur_p": 1.0,
                                                         "channel_shift_range": 10,
                                                         "brightness_range": [0.8, 1.2]}])
def test_params_to_dict_is_json_serialisable(config):
    augmenter = Augmenter(config)
    for seed in range(20):
        params = augmenter.sample(np.random.default_rng(seed), (24, 40))
        data = json.loads(json.dumps(params.to_dict()))
        assert data["keras"] == {k: v for k, v in params.keras.items()}
        np.testing.assert_allclose(data["matrix"], params.matrix, atol=1e-6)
        assert data["brightness"] == params.brightness
        assert data["channel_shift"] == params.channel_shift
