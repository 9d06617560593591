"""The feature store and feature extraction: content-keyed reuse, recomputation of changed or
damaged rows, atomic writes, runtime failures, and ONNX Runtime agreeing with PyTorch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import COLOURS, TEST_IMAGE_SIZE, make_image
from imagefit._fileio import sha256_file as file_sha256
from imagefit.errors import CacheError
from imagefit.features import store as store_module
from imagefit.features.extract import BackboneRunner, compute_features, model_key
from imagefit.features.store import FeatureStore, key_hashes
from imagefit.models.backbones import create_backbone, preprocessing_for

DIM = 1280  # EfficientNet-Lite0's pooled features


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0", image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="module")
def prep():
    return preprocessing_for("efficientnet_lite0", TEST_IMAGE_SIZE)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def runner(backbone, prep, onnx_cache):
    return BackboneRunner(backbone, prep, cache_dir=onnx_cache)


@pytest.fixture
def images(tmp_path):
    """Eight small images with distinct content; returns (paths, sha256 keys)."""
    names = list(COLOURS)
    paths = [make_image(tmp_path / "img" / f"im{i}.{'png' if i % 2 else 'jpg'}",
                        COLOURS[names[i % 3]], seed=100 + i) for i in range(8)]
    paths = np.array([str(p) for p in paths])
    keys = np.array([file_sha256(p) for p in paths])
    assert len(set(keys)) == len(keys)
    return paths, keys


def _fresh(paths, runner):
    result = compute_features(np.asarray(paths), runner)
    assert result.ok.all()
    return result.features


def _store(tmp_path, runner):
    return FeatureStore(tmp_path / "cache", runner.key, runner.dim)


def _tmp_files(root: Path):
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


# --- the store on its own --------------------------------------------------------------------

def test_store_round_trip_in_new_instance(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 4)).astype(np.float32)
    keys = [f"{i:064x}" for i in range(5)]
    store = FeatureStore(tmp_path, "key1", 4)
    assert store.missing(np.array(keys)).all()
    with store.writer() as writer:
        writer.add(keys[:3], rows[:3])
        writer.add(keys[3:], rows[3:])
    again = FeatureStore(tmp_path, "key1", 4)
    assert not again.missing(np.array(keys)).any()
    np.testing.assert_array_equal(again.get(keys[::-1]), rows[::-1])
    mask = again.missing(np.array([keys[0], "f" * 64]))
    assert mask.tolist() == [False, True]
    with pytest.raises(CacheError):
        again.get(["f" * 64])
    # Another key (other backbone or preprocessing) sees none of these rows.
    assert FeatureStore(tmp_path, "key2", 4).missing(np.array(keys)).all()
    assert _tmp_files(tmp_path) == []


def test_writer_splits_into_chunks_of_bounded_size(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHUNK_ROWS", 3)
    rows = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    keys = [f"k{i}" for i in range(7)]
    store = FeatureStore(tmp_path, "k", 2)
    writer = store.writer()
    for i in range(7):
        writer.add([keys[i]], rows[i:i + 1])
    writer.flush()
    records = sorted(store.folder.glob("chunk-*.json"))
    sizes = sorted(len(json.loads(r.read_text())["keys"]) for r in records)
    assert sizes == [1, 3, 3]
    assert len(list(store.folder.glob("chunk-*.npy"))) == 3
    np.testing.assert_array_equal(FeatureStore(tmp_path, "k", 2).get(keys), rows)


def test_key_hashes_do_not_depend_on_the_array_width():
    digest = hashlib.sha256(b"x").hexdigest()
    keys = [digest, "k0", "k1", "0" * 63 + "1", "0" * 64, digest.upper(), digest + "z", "é✓"]
    alone = np.concatenate([key_hashes([k]) for k in keys])
    together = key_hashes(np.array(keys))
    wide = key_hashes(np.array(keys, dtype="<U100"))
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_array_equal(alone, wide)
    assert len({tuple(h) for h in alone}) == len(keys)  # keys one character apart differ too
    assert key_hashes([]).shape == (0, 2)


def test_a_key_stored_twice_reads_from_its_first_chunk(tmp_path):
    store = FeatureStore(tmp_path, "k", 2)
    with store.writer() as writer:
        writer.add(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))
    with store.writer() as writer:
        writer.add(["c", "a"], np.array([[3, 3], [4, 4]], np.float32))
    first = sorted(store.folder.glob("chunk-*.json"))[0]
    expected = 1.0 if json.loads(first.read_text())["keys"][0] == "a" else 4.0
    fresh = FeatureStore(tmp_path, "k", 2)
    assert fresh.get(["a", "c", "b"])[:, 0].tolist() == [expected, 3.0, 2.0]
    assert fresh.missing(["a", "d", "c"]).tolist() == [False, True, False]


def test_lookups_stay_right_when_the_first_hash_collides(tmp_path, monkeypatch):
    def colliding(keys):  # every key's first hash the same: only the second tells them apart
        hashes = real(keys)
        hashes[:, 0] = 7
        return hashes

    real = store_module.key_hashes
    monkeypatch.setattr(store_module, "key_hashes", colliding)
    keys = [f"k{i}" for i in range(50)]
    store = FeatureStore(tmp_path, "k", 1)
    with store.writer() as writer:
        writer.add(keys, np.arange(50, dtype=np.float32)[:, None])
    fresh = FeatureStore(tmp_path, "k", 1)
    order = np.random.default_rng(0).permutation(50)
    assert fresh.get([keys[i] for i in order])[:, 0].tolist() == order.tolist()
    assert fresh.missing(["k3", "nope", "k49"]).tolist() == [False, True, False]


def test_writer_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError):
        FeatureStore(tmp_path, "k", 2).writer().add(["a", "b"], np.zeros((1, 2)))


# --- runner ----------------------------------------------------------------------------------

def test_runner_uses_onnx_on_cpu_and_matches_torch(runner, backbone, prep, images, tmp_path,
                                                   onnx_cache):
    assert runner.runtime == "onnx"
    assert runner.dim == DIM
    assert [p.name for p in (onnx_cache / "onnx").glob("*.onnx")] == [f"{runner.key}.onnx"]
    torch_runner = BackboneRunner(backbone, prep, runtime="torch", cache_dir=tmp_path)
    assert torch_runner.runtime == "torch"
    assert torch_runner.key == runner.key
    paths, _ = images
    onnx_feats = _fresh(paths, runner)
    torch_feats = _fresh(paths, torch_runner)
    assert onnx_feats.shape == (len(paths), DIM) and onnx_feats.dtype == np.float32
    assert np.abs(onnx_feats).max() > 0.01  # real features, not zeros
    np.testing.assert_allclose(onnx_feats, torch_feats, atol=1e-3, rtol=0)
    # Different images give different features.
    assert not np.allclose(onnx_feats[0], onnx_feats[1], atol=1e-3)


@pytest.mark.parametrize("fault", ["export fails", "cache refuses the file"])
def test_onnx_export_trouble_falls_back_to_torch_with_one_warning(backbone, prep, images,
                                                                  tmp_path, monkeypatch, caplog,
                                                                  fault):
    from imagefit.features import extract

    if fault == "export fails":
        def broken_export(*args, **kwargs):
            raise RuntimeError("exporter gave up")
        monkeypatch.setattr(extract, "export_onnx_bytes", broken_export)
    else:
        (tmp_path / "onnx").write_text("a file where the ONNX folder should be")
    with caplog.at_level("WARNING", logger="imagefit.features.extract"):
        runner = BackboneRunner(backbone, prep, cache_dir=tmp_path)
    assert runner.runtime == "torch" and runner.session is None
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "using PyTorch" in warned[0]
    assert ("exporter gave up" if fault == "export fails" else "Error") in warned[0]
    paths, _ = images
    assert _fresh(paths[:2], runner).shape == (2, DIM)
    with pytest.raises(CacheError, match="Could not export"):
        BackboneRunner(backbone, prep, runtime="onnx", cache_dir=tmp_path)


def test_runner_on_another_device_copies_the_backbone_never_moves_it(backbone, prep):
    """A classifier fitted on a GPU lives on the CPU; its runner for the GPU must not drag the
    shared backbone there (explain/export after fit then met a model split across devices).
    "meta" stands in for a second device on a CPU-only machine."""
    runner = BackboneRunner(backbone, prep, device="meta", runtime="torch")
    assert next(runner.backbone.parameters()).device.type == "meta"
    assert {p.device.type for p in backbone.parameters()} == {"cpu"}
    same = BackboneRunner(backbone, prep, device="cpu", runtime="torch")
    assert same.backbone is backbone  # no copy when nothing moves


def test_model_key_depends_on_preprocessing(backbone):
    k32 = model_key(backbone, preprocessing_for("efficientnet_lite0", 32))
    k48 = model_key(backbone, preprocessing_for("efficientnet_lite0", 48))
    assert k32 != k48
    assert k32 == model_key(backbone, preprocessing_for("efficientnet_lite0", 32))


# --- compute_features with a store -----------------------------------------------------------

def test_second_run_computes_nothing(runner, images, tmp_path):
    paths, keys = images
    store = _store(tmp_path, runner)
    first = compute_features(paths, runner, keys=keys, store=store)
    assert first.n_computed == len(paths) and first.ok.all() and first.failed == []
    assert _tmp_files(tmp_path) == []
    second = compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    assert second.n_computed == 0
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_allclose(second.features, _fresh(paths, runner), atol=1e-6)
    # Rows are found by content, whatever the order of the request.
    order = np.array([3, 0, 7, 5])
    third = compute_features(paths[order], runner, keys=keys[order],
                             store=_store(tmp_path, runner))
    assert third.n_computed == 0
    np.testing.assert_array_equal(third.features, first.features[order])


def test_changed_image_recomputes_exactly_that_row(runner, images, tmp_path):
    paths, keys = images
    compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    make_image(Path(paths[2]), (255, 255, 0), seed=999)  # new bytes, same name
    new_keys = keys.copy()
    new_keys[2] = file_sha256(paths[2])
    assert new_keys[2] != keys[2]
    result = compute_features(paths, runner, keys=new_keys, store=_store(tmp_path, runner))
    assert result.n_computed == 1
    np.testing.assert_allclose(result.features, _fresh(paths, runner), atol=1e-6)


def _chunk_files(store: FeatureStore):
    return sorted(store.folder.glob("chunk-*.npy")), sorted(store.folder.glob("chunk-*.json"))


def _flip_payload(npy: Path) -> None:
    data = bytearray(npy.read_bytes())
    data[-20:-10] = bytes(b ^ 0xFF for b in data[-20:-10])  # float data, header untouched
    npy.write_bytes(bytes(data))


def _truncate(npy: Path) -> None:
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) // 2])


def _bad_json(npy: Path) -> None:
    npy.with_suffix(".json").write_text("{not json")


@pytest.mark.parametrize("damage", [_flip_payload, _truncate, _bad_json])
def test_damaged_chunk_is_removed_and_recomputed(runner, images, tmp_path, damage):
    paths, keys = images
    compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    store = _store(tmp_path, runner)
    (npy,), (record,) = _chunk_files(store)
    damage(npy)
    result = compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    assert result.n_computed == len(paths)
    assert result.ok.all()
    np.testing.assert_allclose(result.features, _fresh(paths, runner), atol=1e-6)
    assert not npy.exists() and not record.exists()  # the bad chunk is gone
    npys, records = _chunk_files(store)
    assert len(npys) == len(records) == 1  # replaced by one new, valid chunk
    assert compute_features(paths, runner, keys=keys,
                            store=_store(tmp_path, runner)).n_computed == 0


def test_deleted_record_makes_rows_missing_and_recomputed(runner, images, tmp_path):
    paths, keys = images
    compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    (npy,), (record,) = _chunk_files(_store(tmp_path, runner))
    record.unlink()
    store = _store(tmp_path, runner)
    assert store.missing(keys).all()
    result = compute_features(paths, runner, keys=keys, store=store)
    assert result.n_computed == len(paths)
    np.testing.assert_allclose(result.features, _fresh(paths, runner), atol=1e-6)
    assert compute_features(paths, runner, keys=keys,
                            store=_store(tmp_path, runner)).n_computed == 0


@pytest.mark.parametrize("damage", [_flip_payload, _truncate])
def test_damaged_chunk_among_several_leaves_other_rows_correct(runner, images, tmp_path,
                                                               damage):
    """Two chunks (first half, second half); damaging one recomputes only its rows and the
    rows read from the intact chunk are still returned."""
    paths, keys = images
    half = len(paths) // 2
    compute_features(paths[:half], runner, keys=keys[:half], store=_store(tmp_path, runner))
    before = set(_chunk_files(_store(tmp_path, runner))[0])
    compute_features(paths[half:], runner, keys=keys[half:], store=_store(tmp_path, runner))
    (second_npy,) = set(_chunk_files(_store(tmp_path, runner))[0]) - before
    damage(second_npy)
    result = compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    assert result.n_computed == len(paths) - half
    assert result.ok.all()
    np.testing.assert_allclose(result.features, _fresh(paths, runner), atol=1e-6)


def test_no_temp_files_left_after_writes(runner, images, tmp_path):
    paths, keys = images
    compute_features(paths[:3], runner, keys=keys[:3], store=_store(tmp_path, runner))
    compute_features(paths, runner, keys=keys, store=_store(tmp_path, runner))
    store = _store(tmp_path, runner)
    assert _tmp_files(tmp_path) == []
    npys, records = _chunk_files(store)
    assert len(npys) == len(records) == 2
    for record in records:
        meta = json.loads(record.read_text())
        assert set(meta) >= {"keys", "shape", "crc32"}
        assert meta["shape"] == [len(meta["keys"]), DIM]


def test_stale_temp_files_are_cleaned(tmp_path):
    import os
    import time

    store = FeatureStore(tmp_path, "k", 2)
    store.folder.mkdir(parents=True)
    old = store.folder / ".tmp-dead-chunk-x.npy"
    new = store.folder / ".tmp-live-chunk-y.npy"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    store.clean_stale_temp_files()
    assert not old.exists()
    assert new.exists()  # may belong to a writer that is still running


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_file_unreadable_at_run_time_is_reported_and_not_stored(runner, images, tmp_path, how):
    paths, keys = images
    bad_row = 4  # a JPEG (even index)
    assert paths[bad_row].endswith(".jpg")
    data = Path(paths[bad_row]).read_bytes()
    Path(paths[bad_row]).write_bytes(b"" if how == "empty" else data[: len(data) // 2])
    store = _store(tmp_path, runner)
    result = compute_features(paths, runner, keys=keys, store=store)
    assert result.ok.tolist() == [i != bad_row for i in range(len(paths))]
    assert [b.path for b in result.failed] == [paths[bad_row]]
    reason = result.failed[0].reason
    assert reason == "empty" if how == "empty" else reason in ("truncated", "corrupt")
    assert result.failures[bad_row] is result.failed[0]  # the failure, as a value
    assert all(f is None for i, f in enumerate(result.failures) if i != bad_row)
    assert not result.features[bad_row].any()
    fresh = FeatureStore(tmp_path / "cache", runner.key, runner.dim)
    assert fresh.missing(keys).tolist() == [i == bad_row for i in range(len(paths))]
    good = np.arange(len(paths)) != bad_row
    np.testing.assert_allclose(result.features[good], _fresh(paths[good], runner), atol=1e-6)


def test_store_requires_keys(runner, images, tmp_path):
    paths, _ = images
    with pytest.raises(ValueError, match="keys"):
        compute_features(paths, runner, store=_store(tmp_path, runner))


def test_store_filler_gives_up_quietly_when_the_cache_refuses(tmp_path, caplog):
    """A cache that refuses writes must not fail the pre-flight feeding the filler: it stops
    storing (with a warning) and the rows are computed afterwards, from the files."""
    from imagefit.errors import CacheError
    from imagefit.features.extract import StoreFiller

    class Refusing:
        def missing(self, keys):
            return np.ones(len(keys), bool)

        def writer(self):
            return self

        def add(self, keys, rows):
            raise CacheError("read-only cache")

        def flush(self):
            raise AssertionError("a refused writer is not flushed")

    calls = []

    class Runner:
        def __call__(self, images):
            calls.append(len(images))
            return np.zeros((len(images), 4))

        def store(self, cache_dir):
            return Refusing()

    with StoreFiller(Runner, tmp_path, batch_size=2) as fill:
        for i in range(5):
            fill(f"{i:064x}", np.zeros((8, 8, 3), np.uint8))
    assert calls == [2]  # the first batch was refused; nothing more is computed for the store
    assert "computed afterwards" in caplog.text


def test_store_filler_stores_each_new_key_once(tmp_path):
    from imagefit.features.extract import StoreFiller
    from imagefit.features.store import FeatureStore

    with FeatureStore(tmp_path, "k", dim=3).writer() as writer:
        writer.add(["a" * 64], np.ones((1, 3), np.float32))
    seen, made = [], []

    class Runner:
        def __init__(self):
            made.append(self)

        def __call__(self, images):
            seen.append(len(images))
            return images.reshape(len(images), -1)[:, :3].astype(np.float32)

        def store(self, cache_dir):
            return FeatureStore(cache_dir, "k", dim=3)

    with StoreFiller(Runner, tmp_path, batch_size=4) as fill:
        assert made == []  # made on first use: after the pre-flight's workers are forked
        for key, value in [("a", 1), ("b", 2), ("b", 2), ("c", 3), ("d", 4)]:
            fill(key * 64, np.full((1, 1, 3), value, np.uint8))
    assert len(made) == 1 and fill.runner is made[0]
    assert fill.n_computed == 3 and seen == [2, 1]  # a: stored; b twice in one batch
    fresh = FeatureStore(tmp_path, "k", dim=3)
    keys = np.array([k * 64 for k in "abcd"])
    assert not fresh.missing(keys).any()
    np.testing.assert_array_equal(fresh.get(keys)[:, 0], [1, 2, 3, 4])


def test_stored_rows_gather_what_get_gives_without_keeping_chunks_mapped(tmp_path):
    store = FeatureStore(tmp_path, "k", dim=3)
    keys = np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)])
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    with store.writer() as writer:  # three chunks
        for part in np.array_split(np.arange(10), 3):
            writer.add(list(keys[part]), values[part])
            writer.flush()
    rows = FeatureStore(tmp_path, "k", dim=3).rows(keys[::-1])
    assert rows.shape == (10, 3) and len(rows) == 10 and rows.dtype == np.float32
    idx = np.array([0, 9, 0, 4, 5])
    np.testing.assert_array_equal(rows[idx], values[::-1][idx])
    np.testing.assert_array_equal(rows[2:5], values[::-1][2:5])
    np.testing.assert_array_equal(rows[np.array([], int)], np.zeros((0, 3), np.float32))
