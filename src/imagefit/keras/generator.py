"""`ImageDataGenerator`: Keras' augmentation and normalisation settings, and the `flow*`
methods that make batch iterators from arrays, a folder of class folders, or a DataFrame.

Every argument, default, warning and error is Keras 3's (`keras.src.legacy.preprocessing.image`);
`get_random_transform` draws from NumPy's global generator in Keras' order, so a seed gives
Keras' transforms. The file iterators are faster and skip bad files: see `iterators.py`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

from imagefit.keras._config import data_format_or_default, floatx
from imagefit.keras.affine import (apply_affine_transform, apply_brightness_shift,
                                   apply_channel_shift, flip_axis)
from imagefit.keras.iterators import DataFrameIterator, DirectoryIterator, NumpyArrayIterator


class ImageDataGenerator:
    """Real-time augmentation and normalisation of image batches, as Keras'.

    See Keras' documentation of `ImageDataGenerator` for every argument; they mean the same.
    """

    def __init__(self, featurewise_center: bool = False, samplewise_center: bool = False,
                 featurewise_std_normalization: bool = False,
                 samplewise_std_normalization: bool = False, zca_whitening: bool = False,
                 zca_epsilon: float = 1e-6, rotation_range: float = 0,
                 width_shift_range: Any = 0.0, height_shift_range: Any = 0.0,
                 brightness_range: Any = None, shear_range: float = 0.0, zoom_range: Any = 0.0,
                 channel_shift_range: float = 0.0, fill_mode: str = "nearest",
                 cval: float = 0.0, horizontal_flip: bool = False, vertical_flip: bool = False,
                 rescale: float | None = None,
                 preprocessing_function: Callable[[np.ndarray], np.ndarray] | None = None,
                 data_format: str | None = None, validation_split: float = 0.0,
                 interpolation_order: int = 1, dtype: Any = None):
        data_format = data_format_or_default(data_format)
        self.featurewise_center = featurewise_center
        self.samplewise_center = samplewise_center
        self.featurewise_std_normalization = featurewise_std_normalization
        self.samplewise_std_normalization = samplewise_std_normalization
        self.zca_whitening = zca_whitening
        self.zca_epsilon = zca_epsilon
        self.rotation_range = rotation_range
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.shear_range = shear_range
        self.zoom_range = zoom_range
        self.channel_shift_range = channel_shift_range
        self.fill_mode = fill_mode
        self.cval = cval
        self.horizontal_flip = horizontal_flip
        self.vertical_flip = vertical_flip
        self.rescale = rescale
        self.preprocessing_function = preprocessing_function
        self.dtype = dtype or floatx()
        self.interpolation_order = interpolation_order
        self.data_format = data_format
        if data_format == "channels_first":
            self.channel_axis, self.row_axis, self.col_axis = 1, 2, 3
        else:
            self.channel_axis, self.row_axis, self.col_axis = 3, 1, 2
        if validation_split and not 0 < validation_split < 1:
            raise ValueError(f"`validation_split` must be strictly between 0 and 1.  Received: "
                             f"{validation_split}")
        self._validation_split = validation_split
        self.mean = None
        self.std = None
        self.zca_whitening_matrix = None
        if isinstance(zoom_range, (float, int)):
            self.zoom_range = [1 - zoom_range, 1 + zoom_range]
        elif len(zoom_range) == 2 and all(isinstance(v, (float, int)) for v in zoom_range):
            self.zoom_range = [zoom_range[0], zoom_range[1]]
        else:
            raise ValueError(f"`zoom_range` should be a float or a tuple or list of two floats. "
                             f"Received: {zoom_range}")
        if zca_whitening:
            if not featurewise_center:
                self.featurewise_center = True
                warnings.warn("This ImageDataGenerator specifies `zca_whitening`, which "
                              "overrides setting of `featurewise_center`.", stacklevel=2)
            if featurewise_std_normalization:
                self.featurewise_std_normalization = False
                warnings.warn("This ImageDataGenerator specifies `zca_whitening` which "
                              "overrides setting of`featurewise_std_normalization`.",
                              stacklevel=2)
        if featurewise_std_normalization and not featurewise_center:
            self.featurewise_center = True
            warnings.warn("This ImageDataGenerator specifies `featurewise_std_normalization`, "
                          "which overrides setting of `featurewise_center`.", stacklevel=2)
        if samplewise_std_normalization and not samplewise_center:
            self.samplewise_center = True
            warnings.warn("This ImageDataGenerator specifies `samplewise_std_normalization`, "
                          "which overrides setting of `samplewise_center`.", stacklevel=2)
        if brightness_range is not None and (not isinstance(brightness_range, (tuple, list))
                                             or len(brightness_range) != 2):
            raise ValueError(f"`brightness_range should be tuple or list of two floats. "
                             f"Received: {brightness_range}")
        self.brightness_range = brightness_range

    @property
    def validation_split(self) -> float:
        """The fraction of each class (files) or of the arrays set aside by `subset`."""
        return self._validation_split

    # --- iterators ---
    def flow(self, x: Any, y: Any = None, batch_size: int = 32, shuffle: bool = True,
             sample_weight: Any = None, seed: int | None = None, save_to_dir: str | None = None,
             save_prefix: str = "", save_format: str = "png", ignore_class_split: bool = False,
             subset: str | None = None) -> NumpyArrayIterator:
        """Batches of augmented images (and targets) from arrays."""
        return NumpyArrayIterator(x, y, self, batch_size=batch_size, shuffle=shuffle,
                                  sample_weight=sample_weight, seed=seed,
                                  data_format=self.data_format, save_to_dir=save_to_dir,
                                  save_prefix=save_prefix, save_format=save_format,
                                  ignore_class_split=ignore_class_split, subset=subset,
                                  dtype=self.dtype)

    def flow_from_directory(self, directory: str, target_size: tuple[int, int] = (256, 256),
                            color_mode: str = "rgb", classes: list[str] | None = None,
                            class_mode: str | None = "categorical", batch_size: int = 32,
                            shuffle: bool = True, seed: int | None = None,
                            save_to_dir: str | None = None, save_prefix: str = "",
                            save_format: str = "png", follow_links: bool = False,
                            subset: str | None = None, interpolation: str = "nearest",
                            keep_aspect_ratio: bool = False, **extensions: Any
                            ) -> DirectoryIterator:
        """Batches from a folder holding one subfolder of images per class.

        Beyond Keras (keyword-only): `strict`, `cache`, `draft`, `balance`, `max_per_class`,
        `split`; see `imagefit.keras.iterators`.
        """
        return DirectoryIterator(directory, self, target_size=target_size,
                                 color_mode=color_mode, keep_aspect_ratio=keep_aspect_ratio,
                                 classes=classes, class_mode=class_mode,
                                 data_format=self.data_format, batch_size=batch_size,
                                 shuffle=shuffle, seed=seed, save_to_dir=save_to_dir,
                                 save_prefix=save_prefix, save_format=save_format,
                                 follow_links=follow_links, subset=subset,
                                 interpolation=interpolation, dtype=self.dtype, **extensions)

    def flow_from_dataframe(self, dataframe: Any, directory: str | None = None,
                            x_col: str = "filename", y_col: Any = "class",
                            weight_col: str | None = None,
                            target_size: tuple[int, int] = (256, 256), color_mode: str = "rgb",
                            classes: list[str] | None = None,
                            class_mode: str | None = "categorical", batch_size: int = 32,
                            shuffle: bool = True, seed: int | None = None,
                            save_to_dir: str | None = None, save_prefix: str = "",
                            save_format: str = "png", subset: str | None = None,
                            interpolation: str = "nearest", validate_filenames: bool = True,
                            **kwargs: Any) -> DataFrameIterator:
        """Batches from a pandas DataFrame of file paths (`x_col`) and targets (`y_col`)."""
        for name, text in (("has_ext", "has_ext is deprecated, filenames in the dataframe have "
                            "to match the exact filenames in disk."),
                           ("sort", "sort is deprecated, batches will be created in thesame "
                            "order than the filenames provided if `shuffle`is set to `False`."),
                           ("drop_duplicates", "drop_duplicates is deprecated, you can drop "
                            "duplicates by using the pandas.DataFrame.drop_duplicates method.")):
            if name in kwargs:
                kwargs.pop(name)
                warnings.warn(text, DeprecationWarning, stacklevel=2)
        if class_mode == "other":
            warnings.warn('`class_mode="other"` is deprecated, please use `class_mode="raw"`.',
                          DeprecationWarning, stacklevel=2)
            class_mode = "raw"
        return DataFrameIterator(dataframe, directory, self, x_col=x_col, y_col=y_col,
                                 weight_col=weight_col, target_size=target_size,
                                 color_mode=color_mode, classes=classes, class_mode=class_mode,
                                 data_format=self.data_format, batch_size=batch_size,
                                 shuffle=shuffle, seed=seed, save_to_dir=save_to_dir,
                                 save_prefix=save_prefix, save_format=save_format,
                                 subset=subset, interpolation=interpolation,
                                 validate_filenames=validate_filenames, dtype=self.dtype,
                                 **kwargs)

    # --- normalisation ---
    def standardize(self, x: np.ndarray) -> np.ndarray:
        """Apply the normalisation settings to an image or a batch, in place where possible
        (as Keras: pass `np.copy(x)` to keep `x`)."""
        if self.preprocessing_function:
            x = self.preprocessing_function(x)
        if self.rescale:
            x *= self.rescale
        if self.samplewise_center:
            x -= np.mean(x, keepdims=True)
        if self.samplewise_std_normalization:
            x /= np.std(x, keepdims=True) + 1e-6
        if self.featurewise_center:
            if self.mean is not None:
                x -= self.mean
            else:
                _not_fitted("featurewise_center")
        if self.featurewise_std_normalization:
            if self.std is not None:
                x /= self.std + 1e-6
            else:
                _not_fitted("featurewise_std_normalization")
        if self.zca_whitening:
            if self.zca_whitening_matrix is not None:
                flat = x.reshape(-1, math.prod(x.shape[-3:]))
                x = np.reshape(flat @ self.zca_whitening_matrix, x.shape)
            else:
                _not_fitted("zca_whitening")
        return x

    # --- augmentation ---
    def get_random_transform(self, img_shape: tuple[int, ...], seed: int | None = None) -> dict:
        """Random transform parameters for one image of `img_shape` (theta, tx, ty, shear, zx,
        zy, flip_horizontal, flip_vertical, channel_shift_intensity, brightness)."""
        img_row_axis = self.row_axis - 1
        img_col_axis = self.col_axis - 1
        if seed is not None:
            np.random.seed(seed)
        theta = (np.random.uniform(-self.rotation_range, self.rotation_range)
                 if self.rotation_range else 0)
        tx = _shift(self.height_shift_range, img_shape[img_row_axis])
        ty = _shift(self.width_shift_range, img_shape[img_col_axis])
        shear = np.random.uniform(-self.shear_range, self.shear_range) if self.shear_range else 0
        if self.zoom_range[0] == 1 and self.zoom_range[1] == 1:
            zx, zy = 1, 1
        else:
            zx, zy = np.random.uniform(self.zoom_range[0], self.zoom_range[1], 2)
        flip_horizontal = (np.random.random() < 0.5) * self.horizontal_flip
        flip_vertical = (np.random.random() < 0.5) * self.vertical_flip
        channel_shift_intensity = None
        if self.channel_shift_range != 0:
            channel_shift_intensity = np.random.uniform(-self.channel_shift_range,
                                                        self.channel_shift_range)
        brightness = None
        if self.brightness_range is not None:
            brightness = np.random.uniform(self.brightness_range[0], self.brightness_range[1])
        return {"theta": theta, "tx": tx, "ty": ty, "shear": shear, "zx": zx, "zy": zy,
                "flip_horizontal": flip_horizontal, "flip_vertical": flip_vertical,
                "channel_shift_intensity": channel_shift_intensity, "brightness": brightness}

    def apply_transform(self, x: np.ndarray, transform_parameters: dict) -> np.ndarray:
        """Apply `get_random_transform`'s parameters to one rank-3 image (a new array)."""
        img_row_axis = self.row_axis - 1
        img_col_axis = self.col_axis - 1
        img_channel_axis = self.channel_axis - 1
        p = transform_parameters
        x = apply_affine_transform(x, p.get("theta", 0), p.get("tx", 0), p.get("ty", 0),
                                   p.get("shear", 0), p.get("zx", 1), p.get("zy", 1),
                                   row_axis=img_row_axis, col_axis=img_col_axis,
                                   channel_axis=img_channel_axis, fill_mode=self.fill_mode,
                                   cval=self.cval, order=self.interpolation_order)
        if p.get("channel_shift_intensity") is not None:
            x = apply_channel_shift(x, p["channel_shift_intensity"], img_channel_axis)
        if p.get("flip_horizontal", False):
            x = flip_axis(x, img_col_axis)
        if p.get("flip_vertical", False):
            x = flip_axis(x, img_row_axis)
        if p.get("brightness") is not None:
            x = apply_brightness_shift(x, p["brightness"], False)
        return x

    def random_transform(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """One random transform of a rank-3 image."""
        return self.apply_transform(x, self.get_random_transform(x.shape, seed))

    def fit(self, x: Any, augment: bool = False, rounds: int = 1,
            seed: int | None = None) -> None:
        """Compute the featurewise mean, std and ZCA matrix from sample images (rank 4), after
        `rescale` and, with `augment`, over `rounds` random transforms of each."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 4:
            raise ValueError(f"Input to `.fit()` should have rank 4. Got array with shape: "
                             f"{x.shape}")
        if x.shape[self.channel_axis] not in {1, 3, 4}:
            warnings.warn(f'Expected input to be images (as Numpy array) following the data '
                          f'format convention "{self.data_format}" (channels on axis '
                          f'{self.channel_axis}), i.e. expected either 1, 3 or 4 channels on '
                          f'axis {self.channel_axis}. However, it was passed an array with shape '
                          f'{x.shape} ({x.shape[self.channel_axis]} channels).', stacklevel=2)
        if seed is not None:
            np.random.seed(seed)
        x = np.copy(x)
        if self.rescale:
            x *= self.rescale
        if augment:
            ax = np.zeros((rounds * x.shape[0], *x.shape[1:]), dtype=self.dtype)
            for r in range(rounds):
                for i in range(x.shape[0]):
                    ax[i + r * x.shape[0]] = self.random_transform(x[i])
            x = ax
        broadcast = [1, 1, 1]
        broadcast[self.channel_axis - 1] = x.shape[self.channel_axis]
        if self.featurewise_center:
            self.mean = np.mean(x, axis=(0, self.row_axis, self.col_axis)).reshape(broadcast)
            x -= self.mean
        if self.featurewise_std_normalization:
            self.std = np.std(x, axis=(0, self.row_axis, self.col_axis)).reshape(broadcast)
            x /= self.std + 1e-6
        if self.zca_whitening:
            n = len(x)
            flat = np.reshape(x, (n, -1))
            u, s, _ = np.linalg.svd(flat.T, full_matrices=False)
            s_inv = np.sqrt(n) / (s + self.zca_epsilon)
            self.zca_whitening_matrix = (u * s_inv).dot(u.T)


def _shift(shift_range: Any, side: int) -> float:
    """Keras' shift draw: a float range is uniform in [-r, r], a list or int picks one value
    with a random sign; fractions (< 1) are of the side."""
    if not shift_range:
        return 0
    try:  # 1-D array-like or int
        value = np.random.choice(shift_range)
        value *= np.random.choice([-1, 1])
    except ValueError:  # a float
        value = np.random.uniform(-shift_range, shift_range)
    if np.max(shift_range) < 1:
        value *= side
    return value


def _not_fitted(setting: str) -> None:
    warnings.warn(f"This ImageDataGenerator specifies `{setting}`, but it hasn't been fit on any "
                  f"training data. Fit it first by calling `.fit(numpy_data)`.", stacklevel=3)
