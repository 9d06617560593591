"""The cache as a whole (`imagefit.features.cache`, `imagefit cache`): least recently used chunks
go first, whole; stores a live process holds are never pruned; stale leases do not protect;
`$IMAGEFIT_CACHE_MAX_GB` bounds a running job by what other jobs left; the command's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from imagefit.cli.main import main
from imagefit.errors import ConfigError
from imagefit.features import cache
from imagefit.features.store import FeatureStore

ROW_BYTES = 4096 * 4  # a row of 4,096 float32


def _fill(root, key: str, n_chunks: int, *, age_s: float = 0.0) -> FeatureStore:
    """A store of `n_chunks` one-row chunks whose records were last used `age_s` ago."""
    store = FeatureStore(root, key, dim=4096)
    for i in range(n_chunks):  # chunk i was used i seconds later than chunk 0
        before = set(store.folder.glob("chunk-*.json"))
        with store.writer() as writer:
            writer.add([f"{key}{i:03d}".ljust(64, "0")], np.full((1, 4096), i, np.float32))
        (record,) = set(store.folder.glob("chunk-*.json")) - before
        when = time.time() - age_s - n_chunks + i
        os.utime(record, (when, when))
    return store


def _release_leases(root) -> None:
    """Leases this test process took (it is alive, so they would protect every store)."""
    for lease in root.rglob("lease-*-in-use"):
        lease.unlink()
    cache._held.clear()


def _chunk_count(root, key: str) -> int:
    return len(list((root / "features" / key).glob("chunk-*.json")))


def test_prune_removes_least_recently_used_whole_chunks_first(tmp_path):
    _fill(tmp_path, "old", 3, age_s=3000)
    _fill(tmp_path, "new", 3, age_s=10)
    _release_leases(tmp_path)
    total = cache.cache_info(tmp_path)["total_bytes"]
    result = cache.prune(tmp_path, total - 2 * ROW_BYTES)
    assert result.removed == 2 and result.total_after <= total - 2 * ROW_BYTES
    assert (_chunk_count(tmp_path, "old"), _chunk_count(tmp_path, "new")) == (1, 3)
    assert not list((tmp_path / "features" / "old").glob("chunk-*.npy"))[1:]  # data went too
    survivor = FeatureStore(tmp_path, "old", dim=4096)
    keys = np.array([f"old{i:03d}".ljust(64, "0") for i in range(3)])
    assert survivor.missing(keys).sum() == 2
    np.testing.assert_array_equal(survivor.get(keys[~survivor.missing(keys)]),
                                  np.full((1, 4096), 2, np.float32))


def test_reading_a_chunk_makes_it_recently_used(tmp_path):
    store = _fill(tmp_path, "a", 2, age_s=3000)
    _fill(tmp_path, "b", 1, age_s=1000)
    keys = np.array([f"a{i:03d}".ljust(64, "0") for i in range(2)])
    store.get(keys)  # touches both records
    _release_leases(tmp_path)
    cache.prune(tmp_path, cache.cache_info(tmp_path)["total_bytes"] - 1)
    assert (_chunk_count(tmp_path, "a"), _chunk_count(tmp_path, "b")) == (2, 0)


HOLDER = """
import sys, time
import numpy as np
from imagefit.features.store import FeatureStore
store = FeatureStore(sys.argv[1], "held", dim=4096)
store.missing(np.array(["0" * 64]))   # lists the store: takes the lease
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_store_a_live_process_holds_is_never_pruned_and_its_lease_ends_with_it(tmp_path):
    _fill(tmp_path, "held", 2, age_s=3000)
    _fill(tmp_path, "free", 1, age_s=10)
    _release_leases(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = cache.prune(tmp_path, 0)
        assert _chunk_count(tmp_path, "held") == 2 and _chunk_count(tmp_path, "free") == 0
        assert result.in_use_bytes >= 2 * ROW_BYTES
        assert [s["in_use"] for s in cache.cache_info(tmp_path)["stores"]] == [False, True]
    finally:
        holder.communicate("\n", timeout=60)
    assert not list(tmp_path.rglob("lease-*"))  # released at exit
    cache.prune(tmp_path, 0)
    assert _chunk_count(tmp_path, "held") == 0


def test_a_lease_left_by_a_killed_process_does_not_protect(tmp_path):
    _fill(tmp_path, "k", 2)
    _release_leases(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / "features" / "k" / f"lease-{cache.owner_tag().split('_')[0]}_{dead}-in-use"
    stale.touch()
    cache.prune(tmp_path, 0)
    assert _chunk_count(tmp_path, "k") == 0 and not stale.exists()


def test_the_limit_bounds_a_running_job_by_removing_what_others_left(tmp_path, monkeypatch):
    """With $IMAGEFIT_CACHE_MAX_GB set, each chunk written prunes other stores' least recently
    used chunks; the writing job's own store is held, so it is never pruned from under it."""
    _fill(tmp_path, "other", 4, age_s=3000)
    _release_leases(tmp_path)
    before = cache.cache_info(tmp_path)["total_bytes"]
    monkeypatch.setenv(cache.LIMIT_ENV, str((before + 64) / 1e9))  # records differ by bytes
    _fill(tmp_path, "mine", 3)
    assert _chunk_count(tmp_path, "mine") == 3
    assert _chunk_count(tmp_path, "other") == 1
    assert cache.cache_info(tmp_path)["total_bytes"] <= before + 64


@pytest.mark.parametrize("value", ["0", "-2", "abc", "inf"])
def test_a_bad_limit_is_a_config_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(cache.LIMIT_ENV, value)
    with pytest.raises(ConfigError, match=cache.LIMIT_ENV):
        cache.cache_limit_bytes()


def test_cache_command_info_and_prune(tmp_path, capsys):
    _fill(tmp_path, "old", 2, age_s=3000)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "g.onnx").write_bytes(b"x" * 1000)
    _release_leases(tmp_path)
    assert main(["cache", "info", "--cache-dir", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"folder", "total_bytes", "limit_bytes", "stores", "other_bytes"}
    (store,) = info["stores"]
    assert (store["kind"], store["key"], store["chunks"], store["rows"]) == ("features", "old",
                                                                            2, 2)
    assert info["other_bytes"]["onnx"] == 1000
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert "old" in capsys.readouterr().out
    assert main(["cache", "prune", "--cache-dir", str(tmp_path), "--all", "--dry-run"]) == 0
    assert "Would remove 2 chunks" in capsys.readouterr().out
    assert _chunk_count(tmp_path, "old") == 2
    assert main(["cache", "prune", "--cache-dir", str(tmp_path), "--all"]) == 0
    assert "Removed 2 chunks" in capsys.readouterr().out
    assert _chunk_count(tmp_path, "old") == 0 and (tmp_path / "onnx" / "g.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (["prune"], "a bound"),
    (["prune", "--all", "--max-gb", "1"], "not both"),
    (["info", "--all"], "apply to 'imagefit cache prune'"),
    (["prune", "--max-gb", "1", "--json"], "applies to 'imagefit cache info'")])
def test_cache_command_refuses_what_does_not_apply(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv(cache.LIMIT_ENV, raising=False)
    assert main(["cache", *argv, "--cache-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cache_max_gb_option_sets_the_bound_for_the_run(tmp_path, monkeypatch, capsys):
    """`--cache-max-gb` is the variable, for this process and the workers it starts; a bad
    value is refused by the parser (exit 2)."""
    monkeypatch.setenv(cache.LIMIT_ENV, "")  # restored (unset) after the test
    argv = ["features", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--cache-max-gb", "0"])
    assert refused.value.code == 2 and "gigabytes > 0" in capsys.readouterr().err
    assert os.environ[cache.LIMIT_ENV] == ""
    assert main([*argv, "--cache-max-gb", "2.5"]) != 0  # fails on the data, after parsing
    assert os.environ[cache.LIMIT_ENV] == "2.5"
    assert cache.cache_limit_bytes() == 2_500_000_000
