"""imagefit.keras against Keras 3's own legacy implementation as the oracle (Keras is in the dev
extra): the same parameters give the same transforms, the same seeds the same batches, the same
folders and tables the same files, classes and subsets. Then what Keras does not do: bad files,
the extension keywords, class weights, PyTorch loaders."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from keras.src.legacy.preprocessing import image as K  # noqa: E402
from keras.src.utils import image_utils as KU  # noqa: E402

import imagefit.keras as I  # noqa: E402

# Keras' legacy module calls a SciPy namespace SciPy has deprecated; that is Keras' business.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parent.parent
BLOG = dict(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2,
            zoom_range=0.2, horizontal_flip=True, rescale=1 / 255)


def _photo(rng, h, w):
    """A smooth picture with some texture (JPEG-friendly, unlike pure noise)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two classes, nested folders, every kind of file Keras reads."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (root / c / "sub" / "deeper").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(_photo(rng, 48 + 8 * i, 64)).save(
                root / c / ("sub" if i % 2 else "") / f"p{i}.jpg", quality=90)
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype("uint8")).save(root / c / "a.png")
        Image.fromarray((rng.random((30, 40, 4)) * 255).astype("uint8")).save(
            root / c / "sub" / "deeper" / "b.png")
        Image.fromarray((rng.random((30, 40)) * 255).astype("uint8")).save(root / c / "c.png")
        Image.fromarray((rng.random((30, 40)) * 60000).astype("uint16")).save(root / c / "d.png")
        Image.fromarray(_photo(rng, 40, 36)).convert("L").save(root / c / "e.jpg", quality=80)
        (root / c / "notes.txt").write_text("not an image")
    (root / "readme.md").write_text("files at the top are not classes")
    return root


def _both(method, generator_kwargs, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = getattr(K.ImageDataGenerator(**generator_kwargs), method)(*args, **kwargs)
        b = getattr(I.ImageDataGenerator(**generator_kwargs), method)(*args, **kwargs)
    return a, b


def _assert_batches_equal(a, b, atol=1e-4):
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for u, v in zip(a, b):
            _assert_batches_equal(u, v, atol)
    else:
        assert isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=atol)


# --- transforms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fill_mode", ["constant", "nearest", "reflect", "wrap"])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("data_format,shape", [("channels_last", (17, 23, 3)),
                                               ("channels_last", (20, 20, 1)),
                                               ("channels_first", (3, 12, 9))])
def test_apply_transform_equals_keras(fill_mode, order, data_format, shape):
    x = (np.random.default_rng(order).random(shape) * 255).astype("float32")
    kwargs = dict(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                  shear_range=20, zoom_range=0.3, horizontal_flip=True, vertical_flip=True,
                  channel_shift_range=30, fill_mode=fill_mode, cval=17.5,
                  interpolation_order=order, data_format=data_format,
                  # Keras' brightness shift reads channels-last only
                  brightness_range=(0.5, 1.5) if data_format == "channels_last" else None)
    gk, gi = K.ImageDataGenerator(**kwargs), I.ImageDataGenerator(**kwargs)
    for seed in range(3):
        pk = gk.get_random_transform(x.shape, seed=seed)
        pi = gi.get_random_transform(x.shape, seed=seed)
        assert pk.keys() == pi.keys()
        assert all(np.array_equal(pk[k], pi[k]) for k in pk)
        np.testing.assert_allclose(gk.apply_transform(x.copy(), pk),
                                   gi.apply_transform(x.copy(), pi), atol=1e-3)


@pytest.mark.parametrize("shift", [0.2, 3, [1, 2, 3], 0])
def test_random_transform_draws_as_keras(shift):
    kwargs = dict(width_shift_range=shift, height_shift_range=shift, zoom_range=[0.5, 1.2],
                  rotation_range=10, shear_range=5, brightness_range=[0.8, 1.1],
                  channel_shift_range=4)
    gk, gi = K.ImageDataGenerator(**kwargs), I.ImageDataGenerator(**kwargs)
    for seed in range(5):
        a, b = gk.get_random_transform((20, 30, 3), seed), gi.get_random_transform((20, 30, 3),
                                                                                    seed)
        assert {k: repr(v) for k, v in a.items()} == {k: repr(v) for k, v in b.items()}


def test_helper_transforms_equal_keras():
    x = (np.random.default_rng(1).random((3, 16, 12)) * 255).astype("float32")
    for name, args in (("random_rotation", (30,)), ("random_shift", (0.2, 0.1)),
                       ("random_shear", (15,)), ("random_zoom", ((0.7, 1.3),)),
                       ("random_channel_shift", (20,))):
        np.random.seed(3)
        a = getattr(K, name)(x.copy(), *args)
        np.random.seed(3)
        b = getattr(I, name)(x.copy(), *args)
        np.testing.assert_allclose(a, b, atol=1e-3, err_msg=name)
    y = x.transpose(1, 2, 0)
    np.random.seed(4)
    a = K.random_brightness(y.copy(), (0.5, 1.5))
    np.random.seed(4)
    np.testing.assert_allclose(a, I.random_brightness(y.copy(), (0.5, 1.5)))
    m = np.array([[1.0, 0.2, 0], [0.1, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(K.transform_matrix_offset_center(m, 10, 7),
                               I.transform_matrix_offset_center(m, 10, 7))
    np.testing.assert_array_equal(K.flip_axis(x, 1), I.flip_axis(x, 1))
    with pytest.raises(ValueError):
        I.random_zoom(x, (0.5,))
    with pytest.raises(ValueError):
        I.apply_affine_transform(x[0], theta=10)  # rank 2
    with pytest.raises(ValueError):
        I.apply_affine_transform(x, theta=10, row_axis=1, col_axis=1, channel_axis=0)


def test_deterministic_transform_reference_values():
    """A 45 degree turn of a 3x3 block with constant fill: the corners fall outside (Keras 3
    and SciPy >= 1.6; Keras 2's tests expected another pattern from older SciPy)."""
    generator = I.ImageDataGenerator(rotation_range=90, fill_mode="constant")
    x = np.random.random((32, 32, 3))
    np.testing.assert_allclose(generator.apply_transform(x, {"flip_vertical": True}),
                               x[::-1, :, :])
    np.testing.assert_allclose(generator.apply_transform(x, {"flip_horizontal": True}),
                               x[:, ::-1, :])
    expected = np.repeat(np.array([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])[:, :, None], 3, axis=2)
    np.testing.assert_allclose(generator.apply_transform(np.ones((3, 3, 3)), {"theta": 45}),
                               expected, atol=1e-6)


# --- generator settings, fit, standardize -------------------------------------------------------
def test_constructor_errors_and_warnings_as_keras():
    for bad in (dict(validation_split=5), dict(brightness_range=0.1), dict(zoom_range=(1, 2, 3)),
                dict(data_format="channels_middle")):
        with pytest.raises(ValueError):
            K.ImageDataGenerator(**bad)
        with pytest.raises(ValueError):
            I.ImageDataGenerator(**bad)
    with pytest.warns(UserWarning, match="zca_whitening"):
        g = I.ImageDataGenerator(zca_whitening=True, featurewise_std_normalization=True)
    assert g.featurewise_center and not g.featurewise_std_normalization
    assert I.ImageDataGenerator(zoom_range=0.25).zoom_range == [0.75, 1.25]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_fit_and_standardize_equal_keras(data_format):
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 6, 5) if data_format == "channels_first" else (12, 6, 5, 3)) * 255
    kwargs = dict(featurewise_center=True, featurewise_std_normalization=True,
                  samplewise_center=True, samplewise_std_normalization=True, rescale=1 / 255,
                  data_format=data_format)
    gk, gi = _both_generators(kwargs)
    gk.fit(x)
    gi.fit(x)
    np.testing.assert_allclose(gk.mean, gi.mean, rtol=1e-5)
    np.testing.assert_allclose(gk.std, gi.std, rtol=1e-5)
    np.testing.assert_allclose(gk.standardize(x.astype("float32")),
                               gi.standardize(x.astype("float32")), rtol=1e-4, atol=1e-5)
    gk, gi = _both_generators(dict(zca_whitening=True, data_format=data_format))
    gk.fit(x, augment=True, rounds=2, seed=1)
    gi.fit(x, augment=True, rounds=2, seed=1)
    np.testing.assert_allclose(gk.zca_whitening_matrix, gi.zca_whitening_matrix, atol=1e-6)
    with pytest.raises(ValueError, match="rank 4"):
        gi.fit(x[0])


def _both_generators(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return K.ImageDataGenerator(**kwargs), I.ImageDataGenerator(**kwargs)


def test_standardize_warns_when_not_fitted():
    g = I.ImageDataGenerator(featurewise_center=True)
    with pytest.warns(UserWarning, match="hasn't been fit"):
        g.standardize(np.ones((2, 2, 3), "float32"))


# --- flow (arrays) ------------------------------------------------------------------------------
def test_flow_same_batches_as_keras():
    rng = np.random.default_rng(0)
    x = (rng.random((11, 16, 16, 3)) * 255).astype("float32")
    y = np.arange(11)
    w = np.arange(11) + 1.0
    misc = [rng.random(11), rng.random((11, 2, 2))]
    kwargs = dict(BLOG, width_shift_range=[1, 2, 3])
    a, b = _both("flow", kwargs, (x, misc), y, batch_size=4, seed=3, sample_weight=w)
    for _ in range(7):  # through an epoch end (reshuffle)
        _assert_batches_equal(next(a), next(b))
    _assert_batches_equal(a[2], b[2])
    a, b = _both("flow", kwargs, x, None, batch_size=5, shuffle=False, seed=9)
    _assert_batches_equal(a[1], b[1])
    assert len(b) == 3 and b.n == 11


def test_flow_subsets_and_errors_as_keras():
    x = np.zeros((8, 4, 4, 1))
    g = I.ImageDataGenerator(validation_split=0.5)
    with pytest.raises(ValueError, match="different number of classes"):
        g.flow(x, np.repeat([0, 1], 4), subset="validation")
    labels = np.tile([0, 1], 4)
    assert g.flow(x, labels, subset="validation").n == 4
    assert g.flow(x, labels, subset="training", sample_weight=np.ones(8))[0][2].shape == (4,)
    with pytest.raises(ValueError):
        g.flow(x, labels, subset="foo")
    with pytest.raises(ValueError, match="rank 4"):
        g.flow(np.zeros((8, 4, 4)))
    with pytest.raises(ValueError, match="All of the arrays in"):
        g.flow((x, np.zeros(9)), labels)
    with pytest.raises(ValueError, match=r"`x` \(images tensor\) and `y` \(labels\)"):
        g.flow(x, np.zeros(9))


def test_flow_save_to_dir_names_as_keras(tmp_path):
    x = np.random.default_rng(0).random((4, 8, 8, 3)) * 255
    it = I.ImageDataGenerator().flow(x, np.arange(4), batch_size=4, shuffle=False,
                                     save_to_dir=str(tmp_path), save_prefix="aug",
                                     save_format="jpeg", seed=1)
    it[0]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4
    assert all(n.startswith("aug_") and n.endswith(".jpeg") for n in names)
    assert sorted(int(n.split("_")[1]) for n in names) == [0, 1, 2, 3]


# --- flow_from_directory --------------------------------------------------------------------------
@pytest.mark.parametrize("subset,split", [(None, 0), ("training", 0.3), ("validation", 0.3)])
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale", "rgba"])
def test_directory_files_and_pixels_equal_keras(tree, subset, split, color_mode):
    for interpolation, keep in (("nearest", False), ("bilinear", False), ("nearest", True),
                                ("bicubic", True)):
        a, b = _both("flow_from_directory", dict(rescale=1 / 255, validation_split=split),
                     str(tree), target_size=(37, 29), color_mode=color_mode, batch_size=5,
                     seed=1, subset=subset, interpolation=interpolation,
                     keep_aspect_ratio=keep)
        assert b.filenames == a.filenames and b.filepaths == a.filepaths
        assert b.class_indices == a.class_indices and b.samples == a.samples
        np.testing.assert_array_equal(b.classes, a.classes)
        assert b.classes.dtype == a.classes.dtype
        for i in range(len(a)):
            _assert_batches_equal(a[i], b[i], atol=1e-6)


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_directory_augmented_batches_within_one_grey_level(tree, fill_mode):
    a, b = _both("flow_from_directory", dict(BLOG, fill_mode=fill_mode, cval=30),
                 str(tree), target_size=(40, 48), batch_size=8, seed=5, class_mode="sparse")
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        np.testing.assert_array_equal(ya, yb)
        assert np.abs(xa - xb).max() * 255 <= 1.0


def test_deep_greyscale_files_augment_as_keras(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray((rng.random((20, 24)) * 2**20).astype("int32")).save(tmp_path / c / "x.tif")
        Image.fromarray((rng.random((20, 24)) * 60000).astype("uint16")).save(tmp_path / c / "y.png")
    for fill in ("nearest", "constant"):
        a, b = _both("flow_from_directory", dict(BLOG, rescale=None, fill_mode=fill, cval=3),
                     str(tmp_path), target_size=(20, 24), color_mode="grayscale", batch_size=4,
                     seed=3)
        (xa, _), (xb, _) = a[0], b[0]
        assert xa.max() > 60000 and xa.shape == xb.shape == (4, 20, 24, 1)
        scale = np.maximum(np.abs(xa), 1.0)
        assert (np.abs(xa - xb) / scale).max() < 1e-2


@pytest.mark.parametrize("class_mode", ["categorical", "binary", "sparse", "input", None])
def test_directory_class_modes_as_keras(tree, class_mode):
    a, b = _both("flow_from_directory", {}, str(tree), target_size=(8, 8),
                 class_mode=class_mode, batch_size=6, shuffle=False)
    _assert_batches_equal(a[0], b[0])
    if class_mode == "input":
        x, y = b[0]
        y[0, 0, 0, 0] += 1
        assert x[0, 0, 0, 0] != y[0, 0, 0, 0]


def test_directory_channels_first_and_classes_argument(tree):
    a, b = _both("flow_from_directory", dict(data_format="channels_first"), str(tree),
                 target_size=(10, 12), classes=["dogs"], batch_size=4, shuffle=False)
    assert b.class_indices == {"dogs": 0} == a.class_indices
    _assert_batches_equal(a[0], b[0])
    assert b[0][0].shape == (4, 3, 10, 12)


def test_iterator_protocol(tree):
    g = I.ImageDataGenerator()
    with pytest.raises(ValueError):
        g.flow_from_directory(str(tree), color_mode="cmyk")
    with pytest.raises(ValueError):
        g.flow_from_directory(str(tree), class_mode="output")
    with pytest.raises(ValueError):
        g.flow_from_directory(str(tree), subset="foo")
    it = g.flow_from_directory(str(tree), target_size=(8, 8), batch_size=7, seed=0)
    assert len(it) == 3 and it.n == it.samples == 20
    with pytest.raises(ValueError):
        it[3]
    first = it.next()[1]
    assert next(it)[0].shape == (7, 8, 8, 3)
    assert len(next(it)[0]) == 6  # the last, short batch
    assert it.batch_index == 0
    assert next(iter(it))[0].shape[0] == 7
    it.reset()
    assert it.batch_index == 0
    before = it.index_array.copy()
    it.on_epoch_end()
    assert sorted(it.index_array) == list(range(20)) and list(it.index_array) != list(before)
    assert first.shape == (7, 2)
    assert next(it.index_generator).shape == (7,)


def test_follow_links_as_keras_and_without_looping(tree, tmp_path):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    (root / "cats" / "linked").symlink_to(root / "dogs" / "sub")
    a, b = _both("flow_from_directory", {}, str(root), follow_links=True)
    assert b.filenames == a.filenames and any("linked" in f for f in b.filenames)
    a, b = _both("flow_from_directory", {}, str(root))
    assert b.filenames == a.filenames and not any("linked" in f for f in b.filenames)
    (root / "dogs" / "sub" / "loop").symlink_to(root / "dogs")  # a cycle
    it = I.ImageDataGenerator().flow_from_directory(str(root), follow_links=True)
    assert len(it.filenames) == len(set(it.filenames)) < 40


def test_preprocessing_function_gets_each_image(tree):
    seen = []

    def zero(x):
        assert type(x) is np.ndarray and x.shape == (26, 26, 3)
        seen.append(x.dtype)
        return np.zeros_like(x)

    it = I.ImageDataGenerator(preprocessing_function=zero).flow_from_directory(
        str(tree), target_size=(26, 26), batch_size=3)
    x, y = it[5]
    assert x.shape == (3, 26, 26, 3) and y.shape == (3, 2) and (x == 0).all()
    assert seen == [np.dtype("float32")] * 3


def test_save_to_dir_writes_keras_names(tree, tmp_path):
    it = I.ImageDataGenerator(**BLOG).flow_from_directory(
        str(tree), target_size=(16, 16), batch_size=4, save_to_dir=str(tmp_path),
        save_prefix="x", save_format="png", seed=2)
    it[0]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and all(n.startswith("x_") and n.endswith(".png") for n in names)


# --- flow_from_dataframe --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(tree):
    pd = pytest.importorskip("pandas")
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.suffix in
                   (".png", ".jpg"))
    rng = np.random.default_rng(3)
    options = ["a", "b", ["a"], ["b", "c"], ["a", "c"]]
    return pd.DataFrame({
        "filename": files + ["missing.png", "notes.jpp"],
        "class": [str(rng.integers(0, 3)) for _ in range(len(files) + 2)],
        "tags": [options[i % len(options)] for i in range(len(files) + 2)],
        "score": rng.random(len(files) + 2),
        "other": rng.random(len(files) + 2),
        "weight": rng.integers(1, 4, len(files) + 2),
    })


@pytest.mark.parametrize("kwargs", [
    dict(class_mode="categorical"), dict(class_mode="sparse"), dict(y_col="tags"),
    dict(class_mode="raw", y_col="score"), dict(class_mode="raw", y_col=["score", "other"]),
    dict(class_mode="multi_output", y_col=["score", "other"]), dict(class_mode="input"),
    dict(class_mode=None), dict(weight_col="weight"), dict(classes=["0", "2"]),
    dict(y_col="tags", classes=["c", "a"]), dict(validate_filenames=False, class_mode=None),
])
def test_dataframe_equals_keras(tree, table, kwargs):
    for subset in (None, "training", "validation"):
        a, b = _both("flow_from_dataframe", dict(validation_split=0.25, rescale=1 / 255),
                     table, str(tree), target_size=(9, 11), batch_size=4, shuffle=False,
                     subset=subset, **kwargs)
        assert b.filenames == a.filenames and b.filepaths == a.filepaths
        assert getattr(b, "class_indices", None) == getattr(a, "class_indices", None)
        if kwargs.get("validate_filenames") is False:
            continue  # both would fail on the missing file (Keras raises; imagefit skips)
        for i in range(len(a)):
            _assert_batches_equal(a[i], b[i])


def test_dataframe_errors_as_keras(tree, table):
    g = I.ImageDataGenerator()
    with pytest.raises(TypeError):
        g.flow_from_dataframe(table, str(tree), y_col="score", class_mode="multi_output")
    with pytest.raises(TypeError):
        g.flow_from_dataframe(table.assign(weight="x"), str(tree), weight_col="weight")
    with pytest.raises(ValueError, match="2 classes"):
        g.flow_from_dataframe(table, str(tree), class_mode="binary")
    with pytest.raises(TypeError):
        g.flow_from_dataframe(table.assign(filename=1), str(tree))
    with pytest.raises(ValueError):
        g.flow_from_dataframe(table, str(tree), color_mode="cmyk")
    with pytest.warns(DeprecationWarning):
        g.flow_from_dataframe(table, str(tree), has_ext=True)
    with pytest.warns(DeprecationWarning):
        it = g.flow_from_dataframe(table, str(tree), y_col="score", class_mode="other")
    assert it.class_mode == "raw"
    with pytest.warns(UserWarning, match="invalid image filename"):
        g.flow_from_dataframe(table, str(tree))
    direct = I.DataFrameIterator(table, str(tree))  # no generator: pixels as they are
    x, y = next(direct)
    assert isinstance(x, np.ndarray) and x.shape[1:] == (256, 256, 3)


# --- helpers ---------------------------------------------------------------------------------------
def test_load_img_as_keras(tree, tmp_path):
    sources = [tree / "cats" / "a.png", tree / "cats" / "d.png", tree / "cats" / "p0.jpg",
               tree / "dogs" / "sub" / "deeper" / "b.png", tree / "cats" / "e.jpg"]
    for path in sources:
        for mode in ("rgb", "rgba", "grayscale"):
            for size, interp, keep in ((None, "nearest", False), ((20, 25), "bilinear", False),
                                       ((20, 25), "lanczos", True), ((31, 7), "nearest", True)):
                a = KU.img_to_array(KU.load_img(str(path), mode, size, interp, keep))
                for source in (str(path), path, str(path).encode(),
                               io.BytesIO(path.read_bytes())):
                    b = I.img_to_array(I.load_img(source, mode, size, interp, keep))
                    np.testing.assert_array_equal(a, b)
    with pytest.warns(DeprecationWarning):  # Keras 2's argument
        assert I.load_img(sources[0], grayscale=True).mode == "L"
    grey16 = I.load_img(tree / "cats" / "d.png", color_mode="grayscale")
    assert grey16.mode in ("I;16", "I") and I.img_to_array(grey16).max() > 255
    with pytest.raises(ValueError):
        I.load_img(sources[0], target_size=(5, 5), interpolation="unsupported")
    I.load_img(sources[0], interpolation="unsupported")  # nothing to resize: no error
    with pytest.raises(ValueError):
        I.load_img(sources[0], color_mode="cmyk")
    with pytest.raises(TypeError):
        I.load_img(12)


def test_load_img_leaves_no_file_open(tree):
    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc")
    before = len(os.listdir("/proc/self/fd"))
    images = [I.load_img(tree / "cats" / "p0.jpg") for _ in range(50)]
    assert len(os.listdir("/proc/self/fd")) <= before + 1 and len(images) == 50


def test_array_conversions_as_keras(tmp_path):
    rng = np.random.default_rng(0)
    for shape, fmt in (((10, 8, 3), "channels_last"), ((4, 10, 8), "channels_first"),
                       ((10, 8, 1), "channels_last")):
        x = rng.random(shape)
        a, b = KU.array_to_img(x, fmt), I.array_to_img(x, fmt)
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(KU.img_to_array(a, fmt), I.img_to_array(b, fmt))
    deep = rng.integers(-2**31, 2**31 - 1, (10, 8, 1)).astype("int32")
    assert I.array_to_img(deep, scale=False, dtype="int32").mode == "I"
    for bad in (rng.random((10, 8)), rng.random((10, 8, 5))):
        with pytest.raises(ValueError):
            I.array_to_img(bad)
    with pytest.raises(ValueError):
        I.array_to_img(rng.random((10, 8, 3)), data_format="channels")
    with pytest.raises(ValueError):
        I.img_to_array(rng.random((10, 8, 3)), data_format="channels")
    with pytest.raises(ValueError):
        I.img_to_array(rng.random((10, 8, 5, 3)))
    x = (rng.random((6, 7, 4)) * 255).astype("uint8")
    with pytest.warns(UserWarning, match="JPEG"):
        I.save_img(tmp_path / "a.jpg", x, scale=False)
    I.save_img(tmp_path / "b.png", x, scale=False)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), x)
    buffer = io.BytesIO()
    I.save_img(buffer, x[:, :, :3], file_format="png", scale=False)
    assert buffer.getvalue()[:4] == b"\x89PNG"


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("shape,dtype", [((37, 53, 3), "float32"), ((5, 40, 29, 1), "float32"),
                                         ((30, 40, 3), "uint8")])
def test_smart_resize_equals_keras(shape, dtype, interpolation):
    x = (np.random.default_rng(0).random(shape) * 255).astype(dtype)
    for size in ((20, 20), (30, 17), (80, 90)):
        a = np.asarray(KU.smart_resize(x, size, interpolation=interpolation))
        b = I.smart_resize(x, size, interpolation=interpolation)
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a.astype(float), b.astype(float), atol=1.0 if dtype == "uint8"
                                   else 0.01)
    with pytest.raises(ValueError):
        I.smart_resize(x, (10,))
    with pytest.raises(ValueError):
        I.smart_resize(x[0, 0], (10, 10))


def test_list_pictures_and_validate_filename(tmp_path):
    names = ["test.png", "test0.jpg", "test-1.jpeg", "2test.bmp", "2-test.ppm", "3.png",
             "1.JPEG", "test.bmp", "test0.ppm", "test4.tiff", "5-test.tif", "test.txt",
             "foo.csv", "face.gif", "bar.txt"]
    for sub in ("", "s1", "s2"):
        (tmp_path / sub).mkdir(exist_ok=True)
        for n in names:
            (tmp_path / sub / n).touch()
    assert len(I.list_pictures(str(tmp_path))) == 33
    assert len(I.list_pictures(tmp_path, ext="png")) == 6
    assert I.validate_filename(str(tmp_path / "test.png"), ("png", "jpg"))
    assert not I.validate_filename(str(tmp_path / "test.txt"), ("png", "jpg"))
    assert not I.validate_filename("absent.png", ("png",))


# --- beyond Keras -----------------------------------------------------------------------------------
def test_bad_files_are_skipped_listed_and_strict_raises(tree, tmp_path, caplog):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    good = (root / "cats" / "p0.jpg").read_bytes()
    (root / "cats" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (root / "cats" / "zero.png").write_bytes(b"")
    (root / "dogs" / "fake.jpg").write_bytes(b"not a jpeg at all" * 10)
    it = I.ImageDataGenerator(**BLOG).flow_from_directory(str(root), target_size=(16, 16),
                                                          batch_size=64, class_mode="sparse")
    assert it.samples == 23
    with caplog.at_level(logging.WARNING, logger="imagefit.keras"):
        x, y = it[0]
    assert len(x) == len(y) == 20
    assert sorted(Path(p).name for p, _ in it.bad_files) == ["cut.jpg", "fake.jpg", "zero.png"]
    assert caplog.text.count("bad image file") == 3
    x, y = it[0]  # a second pass neither retries nor warns again
    assert len(x) == 20 and len(it.bad_files) == 3
    strict = I.ImageDataGenerator().flow_from_directory(str(root), target_size=(16, 16),
                                                        batch_size=64, strict=True)
    from imagefit.errors import ImageLoadError
    with pytest.raises((ImageLoadError, OSError)):  # what the bad file raised, as Keras would
        strict[0]


def test_class_weight_is_balanced(tree):
    it = I.ImageDataGenerator().flow_from_directory(str(tree), classes=["cats", "dogs"])
    assert I.class_weight(it) == {0: 1.0, 1: 1.0}
    it.classes = np.array([0] * 15 + [1] * 5, dtype="int32")
    weights = I.class_weight(it)
    assert weights == pytest.approx({0: 20 / 30, 1: 20 / 10})
    sklearn = pytest.importorskip("sklearn.utils.class_weight")
    expected = sklearn.compute_class_weight("balanced", classes=np.array([0, 1]), y=it.classes)
    assert list(weights.values()) == pytest.approx(list(expected))


def test_max_per_class_and_balanced_sampler(tree):
    g = I.ImageDataGenerator()
    it = g.flow_from_directory(str(tree), target_size=(8, 8), batch_size=4, max_per_class=3,
                               class_mode="sparse", seed=0)
    assert it.samples == 20 and len(it) == 2  # 3 + 3 draws an epoch
    seen = set()
    for epoch in range(6):
        ys = np.concatenate([it[i][1] for i in range(len(it))])
        assert sorted(ys) == [0, 0, 0, 1, 1, 1]
        seen |= set(map(int, it.index_array))
        it.on_epoch_end()
    assert len(seen) > 10  # different draws from epoch to epoch
    it = g.flow_from_directory(str(tree), target_size=(8, 8), batch_size=5, balance="sampler",
                               classes=["cats", "dogs"], class_mode="sparse", seed=0)
    it.classes = np.array([0] * 18 + [1] * 2, dtype="int32")  # as if very imbalanced
    ys = np.concatenate([it[i][1] for i in range(len(it))])
    assert len(ys) == 20 and (ys == 1).sum() == 10
    with pytest.raises(ValueError, match="balance"):
        g.flow_from_directory(str(tree), balance="oversample")
    with pytest.raises(ValueError, match="max_per_class"):
        g.flow_from_directory(str(tree), max_per_class=0)


def test_random_split_is_stratified_disjoint_and_repeatable(tree):
    g = I.ImageDataGenerator(validation_split=0.4)
    runs = [{s: g.flow_from_directory(str(tree), subset=s, split="random", seed=7)
             for s in ("training", "validation")} for _ in range(2)]
    train, val = runs[0]["training"], runs[0]["validation"]
    assert set(train.filenames).isdisjoint(val.filenames)
    assert len(train.filenames) + len(val.filenames) == 20
    assert np.bincount(val.classes).tolist() == [4, 4]
    assert runs[1]["validation"].filenames == val.filenames
    first = g.flow_from_directory(str(tree), subset="validation")
    assert first.filenames != val.filenames  # Keras' default: the first files by name
    with pytest.raises(ValueError, match="split"):
        g.flow_from_directory(str(tree), split="last")


def test_cache_keeps_decoded_images(tree, monkeypatch):
    it = I.ImageDataGenerator().flow_from_directory(str(tree), target_size=(8, 8),
                                                    batch_size=20, shuffle=False, cache=True)
    first = it[0][0]
    import imagefit.keras.iterators as iterators

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(iterators, "read_pixels", fail)
    np.testing.assert_array_equal(it[0][0], first)


def test_draft_decodes_large_jpegs_at_reduced_scale(tmp_path):
    from imagefit.keras import _files
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jpg"
    Image.fromarray(_photo(rng, 300, 400)).save(path, quality=92)
    exact = _files.read_pixels(str(path), "rgb", (60, 70), "nearest", False)
    drafted = _files.read_pixels(str(path), "rgb", (60, 70), "nearest", False, draft=True)
    assert drafted.shape == exact.shape == (60, 70, 3)
    with Image.open(path) as im:  # Pillow's own draft mode: the same 1/4-scale decode
        im.draft("RGB", (70, 60))
        assert im.size == (100, 75)
        reference = np.asarray(im.convert("RGB").resize((70, 60), Image.Resampling.NEAREST))
    assert np.abs(drafted.astype(int) - reference).max() <= 1
    assert np.abs(drafted.astype(int) - exact).mean() < 12  # the same picture, smoother
    small = _files.read_pixels(str(path), "rgb", (200, 250), "nearest", False, draft=True)
    full = _files.read_pixels(str(path), "rgb", (200, 250), "nearest", False)
    np.testing.assert_array_equal(small, full)  # under 2x the target: decoded in full


def test_iterators_are_keras_pydatasets_and_train(tree):
    it = I.ImageDataGenerator(**BLOG).flow_from_directory(
        str(tree), target_size=(16, 16), batch_size=8, class_mode="binary", seed=0)
    assert isinstance(it, keras.utils.PyDataset)
    assert isinstance(I.ImageDataGenerator().flow(np.zeros((4, 4, 4, 3))),
                      keras.utils.PyDataset)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy", optimizer="sgd")
    history = model.fit(it, epochs=2, validation_data=it, class_weight=I.class_weight(it),
                        verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["val_loss"]).all()


def test_module_path_as_keras():
    from imagefit.keras.preprocessing import image

    assert image.ImageDataGenerator is I.ImageDataGenerator and image.load_img is I.load_img
    assert set(image.__all__) == set(I.__all__)


def test_import_needs_neither_keras_nor_torch():
    code = ("import sys, imagefit.keras as k; "
            "print(any(m in sys.modules for m in ('keras', 'torch', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
    code = ("import numpy as np, imagefit.keras as k; it = k.ImageDataGenerator().flow("
            "np.zeros((2, 4, 4, 3))); print(type(it).__mro__[1].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "Iterator"


def test_iterators_pickle(tree):
    import pickle
    it = I.ImageDataGenerator(**BLOG).flow_from_directory(str(tree), target_size=(8, 8),
                                                          batch_size=4, seed=1)
    it[0]
    copy = pickle.loads(pickle.dumps(it))
    assert type(copy) is type(it) and isinstance(copy, keras.utils.PyDataset)
    _assert_batches_equal(it[1], copy[1])
    assert next(copy)[0].shape == (4, 8, 8, 3)


@pytest.mark.parametrize("workers,start", [(0, None), (2, None), (1, "spawn")])
def test_as_torch_loader(tree, workers, start):
    torch = pytest.importorskip("torch")
    it = I.ImageDataGenerator(**BLOG).flow_from_directory(
        str(tree), target_size=(12, 12), batch_size=6, class_mode="sparse", seed=4)
    loader = it.as_torch(num_workers=workers, multiprocessing_context=start)
    epochs = [[(x.clone(), y.clone()) for x, y in loader] for _ in range(2)]
    assert len(epochs[0]) == len(it) == 4
    x, y = epochs[0][0]
    assert isinstance(x, torch.Tensor) and x.shape == (6, 12, 12, 3)
    assert sum(len(b[1]) for b in epochs[0]) == 20
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])  # a new order and new draws
    reference = [(x, y) for x, y in it.as_torch(num_workers=0)]  # same seed, fresh loader
    for (xa, ya), (xb, yb) in zip(epochs[0], reference):
        assert torch.equal(ya, yb) and torch.allclose(xa, xb)
    # transforms differ from image to image within a batch (no worker repeats another's draws)
    same = [torch.equal(epochs[0][b][0][0], epochs[0][b][0][1]) for b in range(4)]
    assert not any(same)


@pytest.mark.slow
def test_keras_blog_script_runs_with_one_changed_import():
    script = ROOT / "examples" / "keras_blog_small_convnet.py"
    assert "from imagefit.keras import ImageDataGenerator" in script.read_text()
    out = subprocess.run([sys.executable, str(script), "--epochs", "1"], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert out.returncode == 0, out.stderr[-2000:]
    accuracy = float(out.stdout.rsplit("validation accuracy:", 1)[1].split()[0])
    assert 0.0 <= accuracy <= 1.0
