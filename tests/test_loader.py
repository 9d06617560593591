"""The training loader: every draw's augmentation is a pure function of (seed, epoch, position), so
runs repeat, epochs and draws differ, and the worker count changes nothing; failed draws are
dropped, never replaced; the decoded-image cache gives the same pixels as the decoder.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_IMAGE_SIZE, make_dataset, make_image
from imagefit.data.augment import AugmentConfig, Augmenter
from imagefit.data.images import load_image
from imagefit.features.extract import DecodeRunner, compute_features
from imagefit.features.store import FeatureStore
from imagefit.models.backbones import preprocessing_for
from imagefit.train.loader import (
    CachedImages,
    EpochDraws,
    FileImages,
    TrainLoader,
    collate_uint8,
    draw_generator,
    shuffled_indices,
    to_float_batch,
)

SIZE = TEST_IMAGE_SIZE


@pytest.fixture
def files(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """16 small images (PNG and JPEG) in three classes: paths and int labels."""
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 5, "owl": 5})
    paths = sorted(root.rglob("*.*"))
    names = sorted({p.parent.name for p in paths})
    labels = np.array([names.index(p.parent.name) for p in paths], np.int64)
    return np.array([str(p) for p in paths]), labels


def run_epoch(loader: TrainLoader, epoch: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    images, labels, sizes = [], [], []
    for batch, batch_labels in loader.epoch(epoch):
        assert batch.dtype == torch.uint8 and batch_labels.dtype == torch.int64
        sizes.append(len(batch))
        if not len(batch):  # every draw of the batch failed
            continue
        assert batch.ndim == 4 and batch.shape[1:] == (SIZE, SIZE, 3)
        images.append(batch.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels), sizes


def file_loader(paths, labels, *, augment="keras", seed=0, workers=0, batch_size=5):
    dataset = FileImages(paths, labels, SIZE, Augmenter(augment), seed=seed)
    return TrainLoader(dataset, shuffled_indices(len(labels), seed), batch_size=batch_size,
                       workers=workers)


def sha256s(paths) -> np.ndarray:
    return np.array([hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths])


# --- determinism ----------------------------------------------------------------------------------

def test_draw_generator_is_a_pure_function_of_seed_epoch_position():
    def first(seed, epoch, position):
        return draw_generator(seed, epoch, position).random(4).tolist()

    assert first(0, 1, 2) == first(0, 1, 2)
    keys = [(s, e, p) for s in (0, 1) for e in (1, 2) for p in (0, 1, 2)]
    values = {tuple(first(*k)) for k in keys}
    assert len(values) == len(keys)  # no two (seed, epoch, position) share a stream
    # ... and none replays the plain seed's stream
    assert first(0, 1, 2) != np.random.default_rng(0).random(4).tolist()


def test_runs_repeat_exactly(files):
    paths, labels = files
    a_images, a_labels, sizes = run_epoch(file_loader(paths, labels), 1)
    b_images, b_labels, _ = run_epoch(file_loader(paths, labels), 1)
    assert sizes == [5, 5, 5, 1]
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    # another seed: other draws
    c_images, _, _ = run_epoch(file_loader(paths, labels, seed=1), 1)
    assert not np.array_equal(a_images, c_images)


def test_epochs_differ_in_order_and_augmentation(files):
    paths, labels = files
    loader = file_loader(paths, labels)
    one, _, _ = run_epoch(loader, 1)
    two, _, _ = run_epoch(loader, 2)
    again, _, _ = run_epoch(loader, 1)  # going back to an epoch replays it
    assert not np.array_equal(one, two)
    np.testing.assert_array_equal(one, again)
    # the same image at the same position in two epochs is augmented differently
    dataset = loader.loader.dataset
    for position in range(4):
        a, _ = dataset[(0, 1, position)]
        b, _ = dataset[(0, 2, position)]
        assert not np.array_equal(a, b)


def test_no_two_draws_in_an_epoch_share_parameters(tmp_path):
    path = make_image(tmp_path / "same.png", (120, 80, 200), seed=0)
    paths = np.array([str(path)] * 16)  # identical content at every position
    loader = file_loader(paths, np.zeros(16, np.int64))
    images, _, _ = run_epoch(loader, 1)
    flat = images.reshape(16, -1)
    for i in range(16):
        for j in range(i + 1, 16):
            assert not np.array_equal(flat[i], flat[j]), (i, j)
    augmenter = Augmenter("keras")
    params = [augmenter.sample(draw_generator(0, 1, p), (SIZE, SIZE)) for p in range(16)]
    assert len({tuple(sorted(p.keras.items())) for p in params}) == 16


def test_batches_equal_the_per_draw_reference(files):
    """Batch k holds the draws at positions 5k.. of epoch e's order, each augmented with the
    generator of (seed, epoch, position)."""
    paths, labels = files
    loader = file_loader(paths, labels, seed=3)
    images, got_labels, _ = run_epoch(loader, 2)
    order = shuffled_indices(len(labels), 3)(2)
    augmenter = Augmenter("keras")
    for position, index in enumerate(order):
        image = load_image(paths[index], SIZE)
        want = augmenter(image, draw_generator(3, 2, position))
        np.testing.assert_array_equal(images[position], want)
        assert got_labels[position] == labels[index]


def test_ranks_do_not_share_draw_parameters(tmp_path):
    from imagefit import ImageClassifier
    from imagefit.train.distributed import Distributed
    from imagefit.train.settings import resolve_settings
    from imagefit.train.stages import RunContext

    path = make_image(tmp_path / "same.png", (120, 80, 200), seed=0)
    paths, labels = np.array([str(path)] * 16), np.zeros(16, np.int64)
    images = []
    for rank in range(2):  # the wiring of train.stages.image_stage on each of two ranks
        settings = resolve_settings(ImageClassifier(seed=0, balance="none").get_params(),
                                    np.array([16]), ("a",))
        ctx = RunContext(settings, Distributed(rank, 2))
        dataset = FileImages(paths, labels, SIZE, Augmenter("keras"), seed=0)
        loader = TrainLoader(dataset, ctx.draws(labels), batch_size=4, rank=rank, world_size=2)
        images.append(run_epoch(loader, 1)[0])
    assert [len(i) for i in images] == [8, 8]
    flat = np.concatenate(images).reshape(16, -1)
    for i in range(16):
        for j in range(i + 1, 16):
            assert not np.array_equal(flat[i], flat[j]), (i, j)


def test_workers_do_not_change_the_batches(files):
    paths, labels = files
    serial = file_loader(paths, labels, workers=0)
    parallel = file_loader(paths, labels, workers=2)
    for epoch in (1, 2):  # the second epoch reuses the persistent workers
        a_images, a_labels, a_sizes = run_epoch(serial, epoch)
        b_images, b_labels, b_sizes = run_epoch(parallel, epoch)
        assert a_sizes == b_sizes
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)


# --- failures -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_position", [0, 6, 16])  # first, mid-batch, alone in the last
def test_unreadable_file_is_dropped_not_replaced(files, tmp_path, bad_position):
    paths, labels = files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    paths = np.append(paths, str(bad))
    labels = np.append(labels, 7)  # a label no other image has
    bad_index = len(labels) - 1
    order = np.insert(shuffled_indices(16, 0)(1), bad_position, bad_index)
    dataset = FileImages(paths, labels, SIZE, Augmenter("keras"), seed=0)
    loader = TrainLoader(dataset, lambda epoch: order, batch_size=4)
    images, got_labels, sizes = run_epoch(loader, 1)
    expected_sizes = [4, 4, 4, 4, 1]
    expected_sizes[bad_position // 4] -= 1
    assert sizes == expected_sizes
    assert 7 not in got_labels and len(got_labels) == 16
    # every other draw is still its own image with its own augmentation, in order
    augmenter = Augmenter("keras")
    kept = [(p, i) for p, i in enumerate(order) if i != bad_index]
    for k, (position, index) in enumerate(kept):
        want = augmenter(load_image(paths[index], SIZE), draw_generator(0, 1, position))
        np.testing.assert_array_equal(images[k], want)
        assert got_labels[k] == labels[index]


def test_collate_drops_failed_draws_and_handles_an_all_failed_batch():
    image = np.full((SIZE, SIZE, 3), 9, np.uint8)
    batch, labels = collate_uint8([(None, 0), (image, 2), (None, 1)])
    assert batch.shape == (1, SIZE, SIZE, 3) and labels.tolist() == [2]
    assert (batch.numpy() == 9).all()
    batch, labels = collate_uint8([(None, 0), (None, 1)])
    assert len(batch) == 0 and len(labels) == 0 and labels.dtype == torch.int64


# --- indices and conversion -----------------------------------------------------------------------

def test_shuffled_indices_is_a_permutation_and_pure():
    indices = shuffled_indices(50, seed=4)
    for epoch in range(1, 6):
        order = indices(epoch)
        assert sorted(order.tolist()) == list(range(50))
        np.testing.assert_array_equal(order, shuffled_indices(50, seed=4)(epoch))
    assert not np.array_equal(indices(1), indices(2))
    assert not np.array_equal(indices(1), shuffled_indices(50, seed=5)(1))
    assert not np.array_equal(indices(1), np.arange(50))


def test_epoch_draws_number_positions_within_the_epoch():
    sampler = EpochDraws(lambda epoch: np.array([3, 1, 2]) + epoch)
    sampler.set_epoch(4)
    assert list(sampler) == [(7, 4, 0), (5, 4, 1), (6, 4, 2)] and len(sampler) == 3


def test_to_float_batch_normalises_and_is_channels_last():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3), np.uint8))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    x = to_float_batch(images, mean, std)
    want = (images.permute(0, 3, 1, 2).double() / 255
            - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert x.shape == (2, 3, 8, 6) and x.dtype == torch.float32
    torch.testing.assert_close(x.double(), want, atol=1e-5, rtol=0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert to_float_batch(images, mean, std, channels_last=False).is_contiguous()


# --- no augmentation, and the decoded-image cache -------------------------------------------------

def test_none_augmenter_returns_the_decoded_image(files):
    paths, labels = files
    images, got_labels, _ = run_epoch(file_loader(paths, labels, augment="none"), 1)
    order = shuffled_indices(len(labels), 0)(1)
    for position, index in enumerate(order):
        np.testing.assert_array_equal(images[position], load_image(paths[index], SIZE))
        assert got_labels[position] == labels[index]


@pytest.fixture
def cache(files, tmp_path):
    paths, labels = files
    decode = DecodeRunner(preprocessing_for("efficientnet_lite0", SIZE))
    store = decode.store(tmp_path / "cache")
    keys = sha256s(paths)
    first = compute_features(paths, decode, keys=keys, store=store)
    return decode, store, keys, first


def test_cached_images_equal_the_decoder(files, cache):
    paths, labels = files
    decode, store, keys, first = cache
    assert first.n_computed == len(paths) and first.ok.all()
    dataset = CachedImages(*store.resolve(keys), labels, Augmenter("none"), seed=0)
    for i, path in enumerate(paths):
        image, label = dataset[(i, 1, i)]
        assert image.dtype == np.uint8 and image.flags.writeable
        np.testing.assert_array_equal(image, load_image(path, SIZE))
        assert label == labels[i]


def test_second_compute_features_computes_nothing(files, cache, tmp_path):
    paths, _ = files
    decode, store, keys, first = cache
    again = compute_features(paths, decode, keys=keys, store=store)
    assert again.n_computed == 0 and again.ok.all()
    np.testing.assert_array_equal(again.features, first.features)
    fresh = decode.store(tmp_path / "cache")  # a new process would open the store anew
    assert compute_features(paths, decode, keys=keys, store=fresh).n_computed == 0


def test_cached_and_file_images_give_identical_augmented_batches(files, cache):
    paths, labels = files
    _, store, keys, _ = cache
    for seed, epoch in [(0, 1), (5, 3)]:
        cached = CachedImages(*store.resolve(keys), labels, Augmenter("keras"), seed=seed)
        from_cache = TrainLoader(cached, shuffled_indices(len(labels), seed), batch_size=5)
        from_files = file_loader(paths, labels, seed=seed)
        a_images, a_labels, _ = run_epoch(from_cache, epoch)
        b_images, b_labels, _ = run_epoch(from_files, epoch)
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)


def test_workers_are_cut_to_what_shared_memory_holds(monkeypatch, caplog):
    import shutil
    from collections import namedtuple

    from imagefit.train.loader import workers_that_fit

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 << 20, 0, 64 << 20))
    batch = 64 * 224 * 224 * 3                                     # 9.6 MB of uint8 images
    with caplog.at_level("WARNING"):
        assert workers_that_fit(4, batch) == 1                     # Docker's 64 MB: one fits
    assert "--shm-size" in caplog.text
    assert workers_that_fit(4, batch // 8) == 4                    # small batches: all fit
    assert workers_that_fit(0, batch) == 0

    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(shutil, "disk_usage", missing)            # no /dev/shm: not checked
    assert workers_that_fit(4, batch) == 4


class _DiesInAWorker(CachedImages):
    """Cached images, except that drawing row 5 kills the worker process, as the OOM killer
    would."""

    def image(self, index):
        if index == 5 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().image(index)


def test_a_worker_that_dies_is_said_in_words_not_a_traceback(tmp_path):
    from imagefit.errors import WorkerError

    store = FeatureStore(tmp_path, "k", (8, 8, 3), dtype=np.uint8, kind="images")
    keys = [f"{i:064x}" for i in range(32)]
    with store.writer() as writer:
        writer.add(keys, np.zeros((32, 8, 8, 3), np.uint8))
    dataset = _DiesInAWorker(*store.resolve(np.array(keys)), np.zeros(32, np.int64),
                             Augmenter(AugmentConfig()))
    loader = TrainLoader(dataset, lambda epoch: np.arange(32), batch_size=4, workers=2)
    with pytest.raises(WorkerError) as caught:
        list(loader.epoch(1))
    message = str(caught.value)
    assert "worker process died" in message and "--workers" in message
