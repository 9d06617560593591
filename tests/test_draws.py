"""Work proportional to the draws (issue 14): a run whose epochs draw a subset of a large
training set decodes, caches and extracts only what it draws; validation is a bounded
stratified subset; the pre-flight can leave decoding to the first draw (lazy, sample)."""

from __future__ import annotations

import csv
import dataclasses
import doctest
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_IMAGE_SIZE, make_dataset, make_image
from imagefit.config import TrainConfig
from imagefit.data import audit, known_hashes, sampling, text
from imagefit.data.audit import parse_strategy, preflight, resolve_strategy
from imagefit.data.augment import Augmenter
from imagefit.data.index import ImageIndex, scan_class_folders
from imagefit.data.known_hashes import KnownHashes
from imagefit.data.sampling import stratified_subset
from imagefit.errors import ConfigError, DatasetError
from imagefit.estimator import ImageClassifier
from imagefit.train import loader, settings
from imagefit.train.loader import CachedImages, shuffled_indices
from imagefit.workflows.train import train_run


def test_docstring_examples():
    for module in (audit, sampling, loader, settings, text):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("seed", range(5))
def test_stratified_subset_is_bounded_even_and_repeatable(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), rng.integers(1, 400, 4))
    limit = int(rng.integers(1, len(labels) + 50))
    rows = stratified_subset(labels, limit, seed)
    assert len(rows) <= limit and len(np.unique(rows)) == len(rows)
    assert np.array_equal(rows, np.sort(rows))
    assert np.array_equal(rows, stratified_subset(labels, limit, seed))
    counts, taken = np.bincount(labels), np.bincount(labels[rows], minlength=4)
    if limit >= len(labels):
        assert len(rows) == len(labels)
    else:
        # A class below its share is whole; the others differ by at most one image.
        partial = taken < counts
        assert np.ptp(taken[partial]) <= 1 if partial.any() else True
        assert (taken[~partial] <= taken[partial].max(initial=limit)).all()
        assert len(rows) > limit - 4  # shares are floored, at most one short per class


def test_index_subset_takes_rows_and_leaves_small_indexes_alone():
    index = ImageIndex.from_paths([f"{i}.png" for i in range(30)], ["a"] * 25 + ["b"] * 5)
    assert index.subset(None) is index and index.subset(30) is index
    small = index.subset(10, seed=1)
    assert len(small) == 10 and small.counts().tolist() == [5, 5]


def test_shuffled_indices_with_a_size_draw_a_new_subset_each_epoch():
    assert np.array_equal(shuffled_indices(50, 3)(2),
                          np.random.default_rng([3, 2, 0x5F]).permutation(50))  # unchanged
    draws = shuffled_indices(50, 3, size=20)
    assert len(draws(1)) == 20 and len(np.unique(draws(1))) == 20
    assert not np.array_equal(draws(1), draws(2))
    more = shuffled_indices(10, 0, size=25)(1)
    assert len(more) == 25 and np.bincount(more).min() >= 2


@pytest.mark.parametrize("spec, expected", [("full", ("full", 0)), ("lazy", ("lazy", 0)),
                                            ("sample:20", ("sample", 20)),
                                            ("sample 7", ("sample", 7)), ("auto", ("auto", 0))])
def test_parse_strategy(spec, expected):
    assert parse_strategy(spec) == expected


@pytest.mark.parametrize("bad", ["", "sample", "sample:0", "sample:-3", "lazy:5", "fast", None])
def test_parse_strategy_refuses_what_it_cannot_read(bad):
    with pytest.raises(ConfigError, match="auto, full, lazy or sample:N"):
        parse_strategy(bad)


def test_resolve_strategy_keeps_full_for_strict_and_small_sets():
    assert resolve_strategy("lazy", 10, strict=True) == ("full", 0)
    assert resolve_strategy("auto", audit.AUTO_FULL_MAX) == ("full", 0)
    assert resolve_strategy("auto", audit.AUTO_FULL_MAX + 1) == ("sample", audit.AUTO_SAMPLE)
    assert resolve_strategy("sample:3", 10**6) == ("sample", 3)


def _broken_dataset(root: Path) -> Path:
    data = make_dataset(root, {"cat": 6, "dog": 6})
    # Starts like a JPEG, but its image data is garbage: only a decode finds out.
    (data / "dog" / "garbled.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 60)
    (data / "dog" / "notes.jpg").write_text("not an image at all")
    return data


def test_lazy_preflight_hashes_everything_and_decodes_nothing(tmp_path):
    index = scan_class_folders(_broken_dataset(tmp_path / "data"))
    full = preflight(index, image_size=TEST_IMAGE_SIZE, workers=1)
    lazy = preflight(index, image_size=TEST_IMAGE_SIZE, workers=1, strategy="lazy")
    assert sorted(b.reason for b in full.bad_files) == ["truncated", "unidentified"]
    # What needs no decode is still caught; a garbled body waits for its first draw.
    assert [b.reason for b in lazy.bad_files] == ["unidentified"]
    assert len(lazy.index) == len(full.index) + 1 and lazy.index.checked
    same = np.isin(lazy.index.paths, full.index.paths)
    assert np.array_equal(lazy.index.sha256[same], full.index.sha256)
    assert lazy.n_decoded == 0 and not lazy.modes and "lazy" in lazy.summary()


def test_sample_preflight_decodes_the_sample_and_stops_a_broken_dataset(tmp_path):
    index = scan_class_folders(_broken_dataset(tmp_path / "data"))
    sampled = preflight(index, image_size=TEST_IMAGE_SIZE, workers=1, strategy="sample",
                        sample=4, seed=1)
    assert sampled.n_decoded == 4 and sum(sampled.modes.values()) <= 4
    for f in (tmp_path / "data" / "cat").iterdir():
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # now most files are broken
    with pytest.raises(DatasetError, match="dataset looks broken.*--preflight full"):
        preflight(scan_class_folders(tmp_path / "data"), image_size=TEST_IMAGE_SIZE,
                  workers=1, strategy="sample", sample=len(index))


def test_cached_images_refuse_a_row_that_was_never_located():
    images = CachedImages([], [], [], np.array([0, 1]), Augmenter("none"))
    with pytest.raises(LookupError, match="before it was located"):
        images.image(1)


def test_epoch_size_and_max_per_class_together_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="at most one of 'epoch_size' and 'max_per_class'"):
        ImageClassifier(epoch_size=10, max_per_class=5).fit(["a.png"], ["x"])
    for bad in ("most", 0, -1, 2.5):
        with pytest.raises(ConfigError, match="max_val"):
            ImageClassifier(max_val=bad).fit(["a.png"], ["x"])


def _stored_rows(cache: Path, kind: str) -> int:
    return sum(len(json.loads(r.read_text())["keys"])
               for r in (cache / kind).glob("*/chunk-*.json"))


@pytest.mark.parametrize("mode", ["finetune", "probe"])
def test_a_run_drawing_a_subset_decodes_and_stores_only_what_it_draws(tmp_path, mode):
    data = make_dataset(tmp_path / "data", {"cat": 8, "dog": 90})
    # In the small class, which every epoch draws whole: found only when drawn.
    (data / "cat" / "garbled.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 60)
    cache = tmp_path / "cache"
    result = train_run(TrainConfig(data=str(data), out=str(tmp_path / "run"), mode=mode,
                                   image_size=TEST_IMAGE_SIZE, balance="sampler",
                                   max_per_class=8, epochs=2, preflight="lazy", max_val=6,
                                   cache_dir=str(cache), report=False), progress=False)
    clf = result.classifier
    n_drawn, n_train = clf.training_["n_drawn"], clf.n_train_
    assert clf.n_val_ == 6 and len(result.evaluation.y_true) == 6
    assert 8 < n_drawn < n_train - 30  # two epochs of 16 draws, from 78 images
    kind = "images" if mode == "finetune" else "features"
    assert _stored_rows(cache, kind) == n_drawn + clf.n_val_
    with open(result.run_dir / "bad_files.csv", newline="") as f:
        bad = [row["path"] for row in csv.DictReader(f)]
    assert bad == [str(data / "cat" / "garbled.jpg")]
    summary = json.loads((result.run_dir / "scan.json").read_text())
    assert summary["bad_files"] == {"truncated": 1}
    meta = json.loads((result.model_dir / "model.json").read_text())
    assert meta["training"]["n_drawn"] == n_drawn and meta["settings"]["max_val"] == 6


def test_a_run_drawing_every_image_decodes_them_all_first_as_before(tmp_path):
    data = make_dataset(tmp_path / "data", {"cat": 10, "dog": 12})
    cache = tmp_path / "cache"
    result = train_run(TrainConfig(data=str(data), out=str(tmp_path / "run"), mode="finetune",
                                   image_size=TEST_IMAGE_SIZE, epochs=1, cache_dir=str(cache),
                                   report=False), progress=False)
    clf = result.classifier
    assert clf.training_["n_drawn"] is None
    assert _stored_rows(cache, "images") == clf.n_train_ + clf.n_val_


def test_hex_digests_round_trip_through_their_32_bytes():
    digests = np.array([hashlib.sha256(bytes([i])).hexdigest() for i in range(20)], "<U64")
    assert np.array_equal(known_hashes._hex(known_hashes._unhex(digests)), digests)


def _counting_reads(monkeypatch) -> list[str]:
    reads = []
    real = audit.read_file_bytes
    monkeypatch.setattr(audit, "read_file_bytes", lambda path: reads.append(path) or real(path))
    return reads


def test_remembered_hashes_spare_reading_unchanged_files(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", {"cat": 5, "dog": 5})
    index = scan_class_folders(data)
    known = KnownHashes.for_folder(tmp_path / "cache", data)
    reads = _counting_reads(monkeypatch)
    first = preflight(index, workers=1, strategy="lazy", known=known)
    assert len(reads) == 10 and first.n_known == 0 and known.path.is_file()
    reads.clear()
    again = preflight(index, workers=1, strategy="lazy", known=known)
    assert reads == [] and again.n_known == 10 and "were not read" in again.summary()
    assert np.array_equal(again.index.sha256, first.index.sha256)
    assert again.formats == first.formats
    changed = data / "cat" / "cat_001.png"
    make_image(changed, (0, 0, 0), seed=99)  # new bytes: a new stat
    touched = data / "dog" / "dog_000.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = preflight(index, workers=1, strategy="lazy", known=known)
    assert sorted(reads) == sorted([str(changed), str(touched)])
    row = list(index.paths).index(str(changed))
    assert third.index.sha256[row] == hashlib.sha256(changed.read_bytes()).hexdigest()
    # A full pre-flight decodes every file whatever is remembered.
    reads.clear()
    preflight(index, workers=1, known=known)
    assert len(reads) == 10


def test_a_damaged_or_unwritable_hash_memory_only_costs_reads(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", {"cat": 3, "dog": 3})
    index = scan_class_folders(data)
    known = KnownHashes.for_folder(tmp_path / "cache", data)
    expected = preflight(index, workers=1, strategy="lazy", known=known).index.sha256
    known.path.write_bytes(b"PK\x03\x04 not really a zip")
    reads = _counting_reads(monkeypatch)
    assert np.array_equal(preflight(index, workers=1, strategy="lazy",
                                    known=known).index.sha256, expected)
    assert len(reads) == 6
    blocked = KnownHashes(tmp_path / "file" / "hashes.npz")
    (tmp_path / "file").write_text("a file where a folder should be")
    assert np.array_equal(preflight(index, workers=1, strategy="lazy",
                                    known=blocked).index.sha256, expected)


def test_after_the_barrier_a_rank_reuses_the_rows_the_other_rank_stored(tmp_path):
    """torchrun: each rank computes its share of the missing rows into the shared store; after
    the barrier, no rank computes the others' share again (a rank that died mid-way leaves
    whole chunks only, and the rerun computes what is missing)."""
    from imagefit.features.extract import DecodeRunner
    from imagefit.train.distributed import Distributed
    from imagefit.train.settings import resolve_settings
    from imagefit.train.stages import RunContext

    index = preflight(scan_class_folders(make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})),
                      workers=1).index
    settings = resolve_settings(ImageClassifier(image_size=TEST_IMAGE_SIZE, workers=0,
                                                cache_dir=str(tmp_path / "cache")).get_params(),
                                index.counts(), index.classes)
    runner = DecodeRunner(settings.preprocessing, settings.max_pixels)
    computed = []

    class Counting(DecodeRunner):
        def __call__(self, images):
            computed.append(len(images))
            return super().__call__(images)

    class OtherRankWritesAtTheBarrier(Distributed):
        def barrier(self):  # rank 1's share, by another process's store object
            other = RunContext(settings, Distributed(1, 2, active=False))
            mine = np.arange(len(index))[1::2]
            other.compute(index.take(mine), runner, runner.store(settings.cache_folder()))

    ctx = RunContext(settings, OtherRankWritesAtTheBarrier(0, 2))
    store = runner.store(settings.cache_folder())
    ctx.fill_store(index, Counting(settings.preprocessing, settings.max_pixels), store)
    assert sum(computed) == 6  # rank 0's share only
    assert not store.missing(index.sha256).any()


def test_index_text_columns_are_compact_unless_a_name_is_not_utf8(tmp_path):
    index = ImageIndex.from_paths(["a/1.png", "b/2.png", "b/\udcff.png"], ["a", "b", "b"])
    assert index.paths.dtype.kind == "U"  # an undecodable name: kept fixed-width, as before
    clean = index.take(np.array([0, 1]))
    assert clean.paths.dtype == text.STRINGS and clean.paths.tolist() == ["a/1.png", "b/2.png"]
    both = text.concat_text([clean.paths, index.take(np.array([2])).paths])
    assert both.tolist() == ["a/1.png", "b/2.png", "b/\udcff.png"]
    with_hashes = dataclasses.replace(clean, sha256=np.array(["0" * 64, "f" * 64]))
    assert with_hashes.sha256.dtype == text.STRINGS


def test_hashes_remembered_for_two_tables_of_one_folder_do_not_replace_each_other(tmp_path):
    data = make_dataset(tmp_path / "data", {"cat": 4, "dog": 4})
    paths = sorted(str(p) for p in data.rglob("*.*"))
    first, second = ImageIndex.from_paths(paths[:4]), ImageIndex.from_paths(paths[4:])
    known = KnownHashes.for_folder(tmp_path / "cache", data)
    for part in (first, second):
        preflight(part, workers=1, strategy="lazy", known=known)
    for part in (first, second):
        assert preflight(part, workers=1, strategy="lazy", known=known).n_known == 4


def test_a_rescan_opens_only_files_changed_since_the_pre_flight_remembered_them(tmp_path,
                                                                               monkeypatch):
    """The scan sniffs each file's first bytes for its format; a file whose inode, size and
    mtime are what an earlier pre-flight saw is only stat'ed. A changed file is opened again,
    and one that is no longer an image is reported as before."""
    from imagefit.data import index as index_module
    from imagefit.data.sources import open_dataset

    data = make_dataset(tmp_path / "data", {"cat": 4, "dog": 4})
    cache = tmp_path / "cache"
    first = open_dataset(data, cache_dir=cache)
    preflight(first, workers=1, strategy="lazy",
              known=KnownHashes.for_folder(cache, data))
    opened = []

    def spying_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(index_module, "open", spying_open, raising=False)
    again = open_dataset(data, cache_dir=cache)
    assert opened == []
    assert again.paths.tolist() == first.paths.tolist()
    assert again.labels.tolist() == first.labels.tolist()
    assert again.report.extension_mismatch == first.report.extension_mismatch
    broken = data / "cat" / "cat_001.png"
    broken.write_bytes(b"not an image any more")
    changed = data / "dog" / "dog_000.jpg"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = open_dataset(data, cache_dir=cache)
    assert sorted(opened) == sorted([str(broken), str(changed)])
    assert [b.path for b in third.report.bad_files] == [str(broken)]
    assert len(third) == len(first) - 1
    without_cache = open_dataset(data, cache_dir=tmp_path / "empty")
    assert without_cache.paths.tolist() == third.paths.tolist()


def test_a_pre_flight_that_reads_nothing_does_not_rewrite_the_remembered_hashes(tmp_path):
    data = make_dataset(tmp_path / "data", {"cat": 3, "dog": 3})
    index = scan_class_folders(data)
    known = KnownHashes.for_folder(tmp_path / "cache", data)
    preflight(index, workers=1, strategy="lazy", known=known)
    written = known.path.stat().st_mtime_ns
    os.utime(known.path, ns=(written - 10**9, written - 10**9))
    assert preflight(index, workers=1, strategy="lazy", known=known).n_known == 6
    assert known.path.stat().st_mtime_ns == written - 10**9
