"""Keras' batch iterators: `Iterator`, `NumpyArrayIterator`, `DirectoryIterator`,
`DataFrameIterator`, with Keras 3's signatures, attributes and batch order.

Randomness follows Keras exactly: before each batch NumPy's global generator is seeded with
`seed + total_batches_seen` (when a seed is given), the epoch's order is `np.random.permutation`
and every image draws its transform with `get_random_transform`, so a seed gives the batches
Keras gives. When the program has imported Keras, every iterator is also a
`keras.utils.PyDataset`, so `model.fit(iterator, ...)` takes it as Keras' own; without Keras they
are plain Python objects.

Beyond Keras (keyword-only, each documented in README's "Coming from Keras"): a file that
cannot be read is skipped and listed in `bad_files` (`strict=True` raises instead);
`cache=True` keeps decoded images in memory; `draft=True` decodes large JPEGs at reduced
scale; `max_per_class` and `balance="sampler"` draw a bounded, balanced epoch;
`split="random"` takes a stratified random validation subset.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any

import numpy as np

from imagefit.data.images import is_decoder_failure
from imagefit.keras._config import data_format_or_default, floatx
from imagefit.keras._files import read_pixels, transform_row
from imagefit.keras.utils import COLOR_MODES, array_to_img, validate_filename

log = logging.getLogger("imagefit.keras")

SPLITS = ("first", "random")
BALANCES = (None, "sampler")


def _pydataset_class() -> type | None:
    """keras.utils.PyDataset when the program has imported Keras 3, else None."""
    if "keras" not in sys.modules:
        return None
    try:
        from keras.utils import PyDataset
    except ImportError:
        return None
    return PyDataset


_KERAS_VARIANTS: dict[type, type] = {}


class Iterator:
    """Base class of the batch iterators: `n` samples in batches of `batch_size`, reshuffled
    each epoch when `shuffle`. Subclasses implement `_get_batches_of_transformed_samples`.

    `len(it)` is the number of batches; `it[i]` is batch i (a ValueError past the end);
    `next(it)` / `it.next()` loop over the batches forever, reshuffling at each pass.
    Keyword arguments (`workers`, `use_multiprocessing`, `max_queue_size`) go to Keras'
    PyDataset when Keras is imported.
    """

    white_list_formats = ("png", "jpg", "jpeg", "bmp", "ppm", "tif", "tiff")

    def __new__(cls, *args: Any, **kwargs: Any):
        base = _pydataset_class()
        if base is not None and not issubclass(cls, base):
            if cls not in _KERAS_VARIANTS:
                _KERAS_VARIANTS[cls] = type(cls.__name__, (cls, base),
                                            {"__module__": cls.__module__,
                                             "__qualname__": cls.__qualname__,
                                             "_plain_class": cls})
            cls = _KERAS_VARIANTS[cls]
        return object.__new__(cls)

    _plain_class: type | None = None

    def __reduce__(self):
        """Picklable (spawned DataLoader workers, Keras' multiprocessing): the lock and the
        batch generator are made anew; the PyDataset variant is chosen again on arrival."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("lock", "index_generator")}
        return _new_iterator, (self._plain_class or type(self),), state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()
        self.index_generator = self._flow_index()

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int | None,
                 **kwargs: Any):
        base = _pydataset_class()
        if base is not None and isinstance(self, base):
            base.__init__(self, **kwargs)
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.batch_index = 0
        self.total_batches_seen = 0
        self.lock = threading.Lock()
        self.index_array = None
        self.index_generator = self._flow_index()

    # the epoch's draws: all samples, or a sampler's (DirectoryIterator, DataFrameIterator)
    def _epoch_size(self) -> int:
        return self.n

    def epoch_order(self) -> np.ndarray:
        """The sample indices of a new epoch, drawn from NumPy's global generator: every
        sample, shuffled when `shuffle` (or the sampler's draws, see `max_per_class`)."""
        if self.shuffle:
            return np.random.permutation(self.n)
        return np.arange(self.n)

    def _set_index_array(self) -> None:
        self.index_array = self.epoch_order()

    def __getitem__(self, idx: int):
        if idx >= len(self):
            raise ValueError(f"Asked to retrieve element {idx}, but the Sequence has length "
                             f"{len(self)}")
        if self.seed is not None:
            np.random.seed(self.seed + self.total_batches_seen)
        self.total_batches_seen += 1
        if self.index_array is None:
            self._set_index_array()
        index_array = self.index_array[self.batch_size * idx:self.batch_size * (idx + 1)]
        return self._get_batches_of_transformed_samples(index_array)

    def __len__(self) -> int:
        return (self._epoch_size() + self.batch_size - 1) // self.batch_size

    def on_epoch_end(self) -> None:
        self._set_index_array()

    def reset(self) -> None:
        self.batch_index = 0

    def _flow_index(self):
        self.reset()
        while True:
            if self.seed is not None:
                np.random.seed(self.seed + self.total_batches_seen)
            if self.batch_index == 0:
                self._set_index_array()
            size = self._epoch_size()
            current = 0 if size == 0 else (self.batch_index * self.batch_size) % size
            if size > current + self.batch_size:
                self.batch_index += 1
            else:
                self.batch_index = 0
            self.total_batches_seen += 1
            yield self.index_array[current:current + self.batch_size]

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            index_array = next(self.index_generator)
        # Transforming is not under the lock, so threads can share the work.
        return self._get_batches_of_transformed_samples(index_array)

    def next(self):
        """The next batch (Keras 2's spelling of `next(iterator)`)."""
        return self.__next__()

    def _get_batches_of_transformed_samples(self, index_array: np.ndarray):
        raise NotImplementedError

    def as_torch(self, num_workers: int = 0, **loader_kwargs: Any):
        """A `torch.utils.data.DataLoader` over this iterator's batches (tensors), each epoch in
        a new order; with workers, each batch's random transforms are seeded from (seed, epoch,
        batch), so results do not depend on the number of workers. See `imagefit.keras.torch`.
        """
        from imagefit.keras.torch import as_torch
        return as_torch(self, num_workers=num_workers, **loader_kwargs)


def _new_iterator(cls: type) -> Iterator:
    return cls.__new__(cls)


def _save_batch(batch_x: np.ndarray, index_array: np.ndarray, data_format: str, save_to_dir: str,
                save_prefix: str, save_format: str, hash_high: int) -> None:
    """Keras' `save_to_dir`: `{prefix}_{index}_{random}.{format}`, one file per image."""
    for i, j in enumerate(index_array):
        img = array_to_img(batch_x[i], data_format, scale=True)
        fname = f"{save_prefix}_{j}_{np.random.randint(hash_high)}.{save_format}"
        img.save(os.path.join(save_to_dir, fname))


class NumpyArrayIterator(Iterator):
    """Batches from arrays: `x` (rank 4; or a tuple (images, other inputs)), optional `y` and
    `sample_weight`, transformed by `image_data_generator`."""

    def __init__(self, x: Any, y: Any, image_data_generator: Any, batch_size: int = 32,
                 shuffle: bool = False, sample_weight: Any = None, seed: int | None = None,
                 data_format: str | None = None, save_to_dir: str | None = None,
                 save_prefix: str = "", save_format: str = "png", subset: str | None = None,
                 ignore_class_split: bool = False, dtype: Any = None, **kwargs: Any):
        data_format = data_format_or_default(data_format)
        self.dtype = dtype or floatx()
        x, x_misc = _split_inputs(x)
        if y is not None and len(x) != len(y):
            raise ValueError(f"`x` (images tensor) and `y` (labels) should have the same length. "
                             f"Found: x.shape = {np.asarray(x).shape}, "
                             f"y.shape = {np.asarray(y).shape}")
        if sample_weight is not None and len(x) != len(sample_weight):
            raise ValueError(f"`x` (images tensor) and `sample_weight` should have the same "
                             f"length. Found: x.shape = {np.asarray(x).shape}, "
                             f"sample_weight.shape = {np.asarray(sample_weight).shape}")
        if subset is not None:
            if subset not in {"training", "validation"}:
                raise ValueError(f'Invalid subset name: {subset}; expected "training" or '
                                 f'"validation".')
            split_idx = int(len(x) * image_data_generator.validation_split)
            if (y is not None and not ignore_class_split
                    and not np.array_equal(np.unique(y[:split_idx]), np.unique(y[split_idx:]))):
                raise ValueError("Training and validation subsets have different number of "
                                 "classes after the split. If your numpy arrays are sorted by "
                                 "the label, you might want to shuffle them.")
            part = slice(None, split_idx) if subset == "validation" else slice(split_idx, None)
            x = x[part]
            x_misc = [np.asarray(xx[part]) for xx in x_misc]
            if y is not None:
                y = y[part]
            if sample_weight is not None:
                sample_weight = sample_weight[part]
        self.x = np.asarray(x, dtype=self.dtype)
        self.x_misc = x_misc
        if self.x.ndim != 4:
            raise ValueError(f"Input data in `NumpyArrayIterator` should have rank 4. You passed "
                             f"an array with shape {self.x.shape}")
        channels_axis = 3 if data_format == "channels_last" else 1
        if self.x.shape[channels_axis] not in {1, 3, 4}:
            warnings.warn(f'NumpyArrayIterator is set to use the data format convention '
                          f'"{data_format}" (channels on axis {channels_axis}), i.e. expected '
                          f'either 1, 3, or 4 channels on axis {channels_axis}. However, it was '
                          f'passed an array with shape {self.x.shape} '
                          f'({self.x.shape[channels_axis]} channels).', stacklevel=2)
        self.y = np.asarray(y) if y is not None else None
        self.sample_weight = np.asarray(sample_weight) if sample_weight is not None else None
        self.image_data_generator = image_data_generator
        self.data_format = data_format
        self.save_to_dir = save_to_dir
        self.save_prefix = save_prefix
        self.save_format = save_format
        super().__init__(self.x.shape[0], batch_size, shuffle, seed, **kwargs)

    def _get_batches_of_transformed_samples(self, index_array: np.ndarray):
        batch_x = np.zeros((len(index_array), *self.x.shape[1:]), dtype=self.dtype)
        generator = self.image_data_generator
        for i, j in enumerate(index_array):
            x = self.x[j]
            params = generator.get_random_transform(x.shape)
            x = generator.apply_transform(x.astype(self.dtype), params)
            batch_x[i] = generator.standardize(x)
        if self.save_to_dir:
            _save_batch(batch_x, index_array, self.data_format, self.save_to_dir,
                        self.save_prefix, self.save_format, int(1e4))
        misc = [xx[index_array] for xx in self.x_misc]
        inputs = [batch_x, *misc] if misc else batch_x
        if self.y is None:
            return inputs
        if self.sample_weight is None:
            return inputs, self.y[index_array]
        return inputs, self.y[index_array], self.sample_weight[index_array]


def _split_inputs(x: Any) -> tuple[Any, list[np.ndarray]]:
    """`x`, or a tuple (images, array or list of arrays): the images and the other inputs."""
    if not isinstance(x, (tuple, list)):
        return x, []
    misc = x[1] if isinstance(x[1], list) else [x[1]]
    misc = [np.asarray(xx) for xx in misc]
    images = x[0]
    for xx in misc:
        if len(images) != len(xx):
            raise ValueError(f"All of the arrays in `x` should have the same length. Found a "
                             f"pair with: len(x[0]) = {len(images)}, len(x[?]) = {len(xx)}")
    return images, misc


class BatchFromFilesMixin:
    """Turns files into batches (`DirectoryIterator`, `DataFrameIterator`)."""

    def set_processing_attrs(self, image_data_generator: Any, target_size: tuple[int, int],
                             color_mode: str, data_format: str, save_to_dir: str | None,
                             save_prefix: str, save_format: str, subset: str | None,
                             interpolation: str, keep_aspect_ratio: bool) -> None:
        self.image_data_generator = image_data_generator
        self.target_size = tuple(int(v) for v in target_size)
        self.keep_aspect_ratio = keep_aspect_ratio
        if color_mode not in COLOR_MODES:
            raise ValueError(f'Invalid color mode: {color_mode}; expected "rgb", "rgba", or '
                             f'"grayscale".')
        self.color_mode = color_mode
        self.data_format = data_format
        channels = {"rgba": 4, "rgb": 3, "grayscale": 1}[color_mode]
        self.image_shape = (self.target_size + (channels,) if data_format == "channels_last"
                            else (channels,) + self.target_size)
        self.save_to_dir = save_to_dir
        self.save_prefix = save_prefix
        self.save_format = save_format
        self.interpolation = interpolation
        if subset is not None:
            validation_split = image_data_generator.validation_split
            if subset == "validation":
                split = (0, validation_split)
            elif subset == "training":
                split = (validation_split, 1)
            else:
                raise ValueError(f'Invalid subset name: {subset};expected "training" or '
                                 f'"validation"')
        else:
            split = None
        self.split = split
        self.subset = subset

    def _set_extensions(self, strict: bool, cache: bool, balance: str | None,
                        max_per_class: int | None, draft: bool, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f'Invalid split: {split!r}; expected "first" or "random"')
        if balance not in BALANCES:
            raise ValueError(f'Invalid balance: {balance!r}; expected None or "sampler"')
        if max_per_class is not None and (isinstance(max_per_class, bool)
                                          or not isinstance(max_per_class, (int, np.integer))
                                          or max_per_class < 1):
            raise ValueError(f"max_per_class must be a positive integer, got {max_per_class!r}")
        self.strict = bool(strict)
        self.bad_files: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self.balance = balance
        self.max_per_class = None if max_per_class is None else int(max_per_class)
        self.draft = bool(draft)
        self._members: tuple[Any, list[np.ndarray]] | None = None

    # --- the epoch's draws (extensions) ---
    def _sampling(self) -> bool:
        return self.balance is not None or self.max_per_class is not None

    def _class_members(self) -> list[np.ndarray]:
        """Sample indices of each class (rows with several labels belong to none), computed
        once per `classes` object: `len(it)` asks for them at every batch."""
        cached = self._members
        if cached is None or cached[0] is not self.classes:
            classes = self.classes
            if isinstance(classes, np.ndarray):
                labels = classes.astype(np.int64)
            else:
                labels = np.asarray([c if np.isscalar(c) else -1 for c in classes], np.int64)
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(len(self.class_indices) + 1))
            cached = self._members = (classes, [order[bounds[k]:bounds[k + 1]]
                                                for k in range(len(self.class_indices))])
        return cached[1]

    def _draws_per_class(self) -> list[int]:
        members = self._class_members()
        if self.balance == "sampler":
            each = self.max_per_class or max(1, round(self.n / max(1, len(members))))
            return [each if len(m) else 0 for m in members]
        return [min(len(m), self.max_per_class) for m in members]

    def _epoch_size(self) -> int:
        if not self._sampling():
            return self.n
        return int(sum(self._draws_per_class()))

    def epoch_order(self) -> np.ndarray:
        if not self._sampling():
            return super().epoch_order()
        parts = []
        for members, k in zip(self._class_members(), self._draws_per_class()):
            if k == 0:
                continue
            replace = k > len(members)
            parts.append(np.random.choice(members, size=k, replace=replace))
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.random.permutation(order) if self.shuffle else np.sort(order)

    # --- one batch ---
    def _row(self, j: int, filepath: str) -> np.ndarray | None:
        """The pixels of sample j, or None for a bad file (listed, warned about once)."""
        if self._cache is not None and j in self._cache:
            return self._cache[j]
        if j in self._bad:
            return None
        try:
            pixels = read_pixels(filepath, self.color_mode, self.target_size,
                                 self.interpolation, self.keep_aspect_ratio, self.draft)
        except Exception as exc:
            if self.strict or not is_decoder_failure(exc):
                raise
            self._bad.add(j)
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.bad_files.append((filepath, reason))
            log.warning("skipped a bad image file: %s (%s); it is listed in `bad_files`",
                        filepath, reason)
            return None
        if self._cache is not None:
            self._cache[j] = pixels
        return pixels

    def _get_batches_of_transformed_samples(self, index_array: np.ndarray):
        filepaths = self.filepaths
        generator = self.image_data_generator
        batch_x = np.zeros((len(index_array), *self.image_shape), dtype=self.dtype)
        kept = []
        for j in index_array:
            pixels = self._row(int(j), filepaths[j])
            if pixels is None:
                continue
            params = None
            if generator is not None:
                params = generator.get_random_transform(self.image_shape)
            transform_row(pixels, params, generator, batch_x[len(kept)], self.data_format)
            kept.append(j)
        if len(kept) < len(index_array):
            batch_x = batch_x[:len(kept)]
        index_array = np.asarray(kept, dtype=np.int64)
        if self.save_to_dir:
            _save_batch(batch_x, index_array, self.data_format, self.save_to_dir,
                        self.save_prefix, self.save_format, int(1e7))
        return self._with_targets(batch_x, index_array)

    def _with_targets(self, batch_x: np.ndarray, index_array: np.ndarray):
        mode = self.class_mode
        if mode == "input":
            batch_y = batch_x.copy()
        elif mode in {"binary", "sparse"}:
            batch_y = np.empty(len(batch_x), dtype=self.dtype)
            for i, j in enumerate(index_array):
                batch_y[i] = self.classes[j]
        elif mode == "categorical":
            batch_y = np.zeros((len(batch_x), len(self.class_indices)), dtype=self.dtype)
            for i, j in enumerate(index_array):
                batch_y[i, self.classes[j]] = 1.0
        elif mode == "multi_output":
            batch_y = [output[index_array] for output in self.labels]
        elif mode == "raw":
            batch_y = self.labels[index_array]
        else:
            return batch_x
        if self.sample_weight is None:
            return batch_x, batch_y
        return batch_x, batch_y, self.sample_weight[index_array]

    @property
    def filepaths(self) -> list[str]:
        """Paths of the image files, one per sample."""
        return self._filepaths

    @property
    def labels(self):
        """The label of every sample."""
        return self.classes

    @property
    def sample_weight(self):
        return None


def _walk(directory: str, follow_links: bool):
    """os.walk, except that with `follow_links` a folder already visited (a link back up the
    tree, or two links to one folder) is not entered again: Keras would loop until the path
    is too long, listing the same files hundreds of times."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(directory, followlinks=follow_links):
        if follow_links:
            try:
                st = os.stat(root)
            except OSError:
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        yield root, dirs, files


def _iter_valid_files(directory: str, white_list_formats: tuple[str, ...],
                      follow_links: bool):
    """(root, file name) of the listed formats under `directory`, folders and names sorted."""
    for root, _, files in sorted(_walk(directory, follow_links), key=lambda entry: entry[0]):
        for fname in sorted(files):
            if fname.lower().endswith(".tiff"):
                warnings.warn('Using ".tiff" files with multiple bands will cause distortion. '
                              'Please verify your output.', stacklevel=2)
            if fname.lower().endswith(white_list_formats):
                yield root, fname


def _split_part(n: int, split: tuple[float, float] | None, how: str,
                seed: int | None) -> np.ndarray:
    """Indices (ascending) of the part `split` of n files: by position as Keras, or random."""
    if split is None:
        return np.arange(n)
    start, stop = int(split[0] * n), int(split[1] * n)
    if how == "first":
        return np.arange(start, stop)
    # The same permutation for both subsets (seed, else 0), so they never overlap.
    order = np.random.RandomState(0 if seed is None else seed).permutation(n)
    return np.sort(order[start:stop])


class DirectoryIterator(BatchFromFilesMixin, Iterator):
    """Batches from a folder with one subfolder per class (searched recursively)."""

    allowed_class_modes = {"categorical", "binary", "sparse", "input", None}

    def __init__(self, directory: str, image_data_generator: Any,
                 target_size: tuple[int, int] = (256, 256), color_mode: str = "rgb",
                 classes: list[str] | None = None, class_mode: str | None = "categorical",
                 batch_size: int = 32, shuffle: bool = True, seed: int | None = None,
                 data_format: str | None = None, save_to_dir: str | None = None,
                 save_prefix: str = "", save_format: str = "png", follow_links: bool = False,
                 subset: str | None = None, interpolation: str = "nearest",
                 keep_aspect_ratio: bool = False, dtype: Any = None, *, strict: bool = False,
                 cache: bool = False, balance: str | None = None,
                 max_per_class: int | None = None, split: str = "first", draft: bool = False,
                 **kwargs: Any):
        data_format = data_format_or_default(data_format)
        self.set_processing_attrs(image_data_generator, target_size, color_mode, data_format,
                                  save_to_dir, save_prefix, save_format, subset, interpolation,
                                  keep_aspect_ratio)
        self._set_extensions(strict, cache, balance, max_per_class, draft, split)
        self.directory = directory
        if class_mode not in self.allowed_class_modes:
            raise ValueError(f"Invalid class_mode: {class_mode}; expected one of: "
                             f"{self.allowed_class_modes}")
        self.class_mode = class_mode
        self.dtype = dtype or floatx()
        if not classes:
            classes = [d for d in sorted(os.listdir(directory))
                       if os.path.isdir(os.path.join(directory, d))]
        self.num_classes = len(classes)
        self.class_indices = dict(zip(classes, range(len(classes))))
        self.filenames: list[str] = []
        class_ids: list[int] = []
        for name in classes:
            class_dir = os.path.join(directory, name)
            found = list(_iter_valid_files(class_dir, self.white_list_formats, follow_links))
            for k in _split_part(len(found), self.split, split, seed):
                root, fname = found[k]
                relative = os.path.relpath(os.path.join(root, fname), class_dir)
                self.filenames.append(os.path.join(os.path.basename(class_dir), relative))
                class_ids.append(self.class_indices[name])
        self.samples = len(self.filenames)
        self.classes = np.asarray(class_ids, dtype="int32")
        print(f"Found {self.samples} images belonging to {self.num_classes} classes.")
        self._filepaths = [os.path.join(directory, f) for f in self.filenames]
        super().__init__(self.samples, batch_size, shuffle, seed, **kwargs)


class DataFrameIterator(BatchFromFilesMixin, Iterator):
    """Batches from a pandas DataFrame of file names (`x_col`) and targets (`y_col`)."""

    allowed_class_modes = {"binary", "categorical", "input", "multi_output", "raw", "sparse",
                           None}

    def __init__(self, dataframe: Any, directory: str | None = None,
                 image_data_generator: Any = None, x_col: str = "filename",
                 y_col: Any = "class", weight_col: str | None = None,
                 target_size: tuple[int, int] = (256, 256), color_mode: str = "rgb",
                 classes: list[str] | None = None, class_mode: str | None = "categorical",
                 batch_size: int = 32, shuffle: bool = True, seed: int | None = None,
                 data_format: str = "channels_last", save_to_dir: str | None = None,
                 save_prefix: str = "", save_format: str = "png", subset: str | None = None,
                 interpolation: str = "nearest", keep_aspect_ratio: bool = False,
                 dtype: Any = "float32", validate_filenames: bool = True, *,
                 strict: bool = False, cache: bool = False, balance: str | None = None,
                 max_per_class: int | None = None, split: str = "first", draft: bool = False,
                 **kwargs: Any):
        data_format = data_format_or_default(data_format)
        self.set_processing_attrs(image_data_generator, target_size, color_mode, data_format,
                                  save_to_dir, save_prefix, save_format, subset, interpolation,
                                  keep_aspect_ratio)
        self._set_extensions(strict, cache, balance, max_per_class, draft, split)
        df = dataframe.copy()
        self.directory = directory or ""
        self.class_mode = class_mode
        self.dtype = dtype or floatx()
        self._check_params(df, x_col, y_col, weight_col, classes)
        if validate_filenames:
            df = self._filter_valid_filepaths(df, x_col)
        labelled = class_mode not in ("input", "multi_output", "raw", None)
        if self._sampling() and not labelled:
            raise ValueError(f'balance and max_per_class draw by class; class_mode='
                             f'"{class_mode}" has no classes')
        if labelled:
            df, classes = self._filter_classes(df, y_col, classes)
            self.class_indices = dict(zip(classes, range(len(classes))))
        if self.split:
            df = df.iloc[_split_part(len(df), self.split, split, seed)]
        if labelled:
            self.classes = self.get_classes(df, y_col)
        self.filenames = df[x_col].tolist()
        self._sample_weight = df[weight_col].values if weight_col else None
        if class_mode == "multi_output":
            self._targets = [np.array(df[col].tolist()) for col in y_col]
        if class_mode == "raw":
            self._targets = df[y_col].values
        self.samples = len(self.filenames)
        validated = "validated" if validate_filenames else "non-validated"
        if labelled:
            print(f"Found {self.samples} {validated} image filenames belonging to "
                  f"{len(classes)} classes.")
        else:
            print(f"Found {self.samples} {validated} image filenames.")
        self._filepaths = [os.path.join(self.directory, f) for f in self.filenames]
        super().__init__(self.samples, batch_size, shuffle, seed, **kwargs)

    def _check_params(self, df: Any, x_col: str, y_col: Any, weight_col: str | None,
                      classes: Any) -> None:
        mode = self.class_mode
        if mode not in self.allowed_class_modes:
            raise ValueError(f"Invalid class_mode: {mode}; expected one of: "
                             f"{self.allowed_class_modes}")
        if mode == "multi_output" and not isinstance(y_col, list):
            raise TypeError(f'If class_mode="{mode}", y_col must be a list. Received '
                            f'{type(y_col).__name__}.')
        if not all(isinstance(v, str) for v in df[x_col]):
            raise TypeError(f"All values in column x_col={x_col} must be strings.")
        if mode in {"binary", "sparse"} and not all(isinstance(v, str) for v in df[y_col]):
            raise TypeError(f'If class_mode="{mode}", y_col="{y_col}" column values must be '
                            f'strings.')
        if mode == "binary":
            if classes:
                if len(set(classes)) != 2:
                    raise ValueError(f'If class_mode="binary" there must be 2 classes. '
                                     f'{len(set(classes))} class/es were given.')
            elif df[y_col].nunique() != 2:
                raise ValueError(f'If class_mode="binary" there must be 2 classes. Found '
                                 f'{df[y_col].nunique()} classes.')
        if mode == "categorical" and not all(isinstance(v, (str, list, tuple))
                                             for v in df[y_col]):
            raise TypeError(f'If class_mode="{mode}", y_col="{y_col}" column values must be '
                            f'type string, list or tuple.')
        if classes and mode in {"input", "multi_output", "raw", None}:
            warnings.warn(f'`classes` will be ignored given the class_mode="{mode}"',
                          stacklevel=3)
        if weight_col and not issubclass(df[weight_col].dtype.type, np.number):
            raise TypeError(f"Column weight_col={weight_col} must be numeric.")

    def get_classes(self, df: Any, y_col: str) -> list:
        """Each row's class index, or list of indices for a row with several labels."""
        out = []
        for label in df[y_col]:
            if isinstance(label, (list, tuple)):
                out.append([self.class_indices[v] for v in label])
            else:
                out.append(self.class_indices[label])
        return out

    @staticmethod
    def _filter_classes(df: Any, y_col: str, classes: Any) -> tuple[Any, list]:
        df = df.copy()

        def keep_known(labels: Any, known: list) -> Any:
            if isinstance(labels, (list, tuple)):
                return [v for v in labels if v in known] or None
            if isinstance(labels, str):
                return labels if labels in known else None
            raise TypeError(f"Expect string, list or tuple but found {type(labels)} in "
                            f"{y_col} column ")

        if classes:
            known = list(dict.fromkeys(classes))
            df[y_col] = df[y_col].apply(lambda v: keep_known(v, known))
            found = known
        else:
            seen: set = set()
            for v in df[y_col]:
                if isinstance(v, (list, tuple)):
                    seen.update(v)
                else:
                    seen.add(v)
            found = sorted(seen)
        return df.dropna(subset=[y_col]), found

    def _filter_valid_filepaths(self, df: Any, x_col: str) -> Any:
        paths = df[x_col].map(lambda name: os.path.join(self.directory, name))
        mask = paths.apply(validate_filename, args=(self.white_list_formats,))
        n_invalid = int((~mask).sum())
        if n_invalid:
            warnings.warn(f'Found {n_invalid} invalid image filename(s) in x_col="{x_col}". '
                          f'These filename(s) will be ignored.', stacklevel=3)
        return df[mask]

    @property
    def labels(self):
        if self.class_mode in {"multi_output", "raw"}:
            return self._targets
        return self.classes

    @property
    def sample_weight(self):
        return self._sample_weight


def class_weight(iterator: Any) -> dict[int, float]:
    """{class index: weight} with scikit-learn's "balanced" rule, n / (classes * count), for
    `model.fit(..., class_weight=...)`; rows with several labels count once for each. Classes
    without a sample get no entry."""
    counts = np.zeros(len(iterator.class_indices), dtype=np.int64)
    for c in iterator.classes:
        if np.isscalar(c):
            counts[int(c)] += 1
        else:
            for k in c:
                counts[int(k)] += 1
    total = counts.sum()
    present = np.flatnonzero(counts)
    return {int(k): float(total / (len(present) * counts[k])) for k in present}

