"""The cache folder as a whole: what it holds (`cache_info`), and keeping it under a size bound
(`prune`) by removing the least recently used whole chunks of the feature and decoded-image
stores. A chunk's last use is its record's modification time, touched when a process first
reads the chunk.

Safe beside running jobs: a process that uses a store holds a lease there (an owner-tagged
file, gone when the process ends; a lease left by a killed process is stale at once on the
same host, after an hour from another one), and the chunks of a store under a live lease are
never removed. Taking a lease and pruning a store exclude each other (a file lock), so a job
never lists a chunk that a prune is about to remove. A chunk goes record first, then data: a
prune killed half-way leaves an unrecorded data file, which is an orphan like any other
(`FeatureStore.clean_stale_temp_files`). The exported ONNX graphs (`onnx/`) and the images of
array files (`arrays/`) are counted but never pruned: `imagefit cache prune --all` empties the
stores only, and deleting the whole folder stays safe whenever no job runs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from imagefit._fileio import is_orphan, owner_tag
from imagefit.errors import ConfigError

LIMIT_ENV = "IMAGEFIT_CACHE_MAX_GB"
STORE_KINDS = ("features", "images")
_LOCK = ".lock"
_held: set[Path] = set()
_OTHER: dict[Path, tuple[float, int]] = {}  # root -> (when, bytes outside the stores)


def cache_limit_bytes() -> int | None:
    """The bound `$IMAGEFIT_CACHE_MAX_GB` sets (GB = 10^9 bytes), or None.

    Raises:
        ConfigError: the variable is set to something other than a number > 0.
    """
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return None
    try:
        gb = float(text)
    except ValueError:
        gb = float("nan")
    if not gb > 0 or gb == float("inf"):
        raise ConfigError(f"{LIMIT_ENV} must be a number of gigabytes > 0. Got {text!r}.")
    return int(gb * 1e9)


def hold(store_folder: Path) -> None:
    """Take (once per process) or refresh this process's lease on a store folder."""
    lease = store_folder / f"lease-{owner_tag()}-in-use"
    with contextlib.suppress(OSError):  # a read-only cache: nobody prunes it from here either
        if store_folder in _held:
            os.utime(lease)
            return
        store_folder.mkdir(parents=True, exist_ok=True)
        with _locked(store_folder, exclusive=False):
            lease.touch()
        _held.add(store_folder)


@atexit.register
def _release() -> None:
    for folder in _held:
        with contextlib.suppress(OSError):
            (folder / f"lease-{owner_tag()}-in-use").unlink()


@dataclass
class Chunk:
    folder: Path        # the store's folder (cache/kind/key)
    name: str           # chunk-...
    bytes: int
    rows: int
    last_used: float


@dataclass
class PruneResult:
    removed: int            # chunks
    freed_bytes: int
    total_before: int       # bytes in the cache folder
    total_after: int
    in_use_bytes: int       # chunk bytes of stores a running job holds (never removed)


def cache_info(cache_dir: str | os.PathLike) -> dict:
    """The cache's content, as `imagefit cache info --json` prints it."""
    root = Path(cache_dir)
    stores = []
    for folder in _store_folders(root):
        chunks = _chunks(folder, rows=True)
        stores.append({"kind": folder.parent.name, "key": folder.name, "chunks": len(chunks),
                       "rows": sum(c.rows for c in chunks),
                       "bytes": sum(c.bytes for c in chunks),
                       "last_used": max((c.last_used for c in chunks), default=None),
                       "in_use": _in_use(folder)})
    other = {name: _folder_bytes(root / name) for name in ("onnx", "arrays")}
    limit = cache_limit_bytes()
    return {"folder": str(root), "total_bytes": _folder_bytes(root), "limit_bytes": limit,
            "stores": stores, "other_bytes": other}


def prune(cache_dir: str | os.PathLike, max_bytes: int, *, dry_run: bool = False) -> PruneResult:
    """Remove least recently used chunks of stores no running job holds until the whole cache
    folder takes at most `max_bytes` (or no such chunk is left)."""
    root = Path(cache_dir)
    removed = freed = in_use = 0
    candidates = []
    total = _other_bytes(root)
    for folder in _store_folders(root):
        chunks = _chunks(folder)
        total += sum(c.bytes for c in chunks)
        if _in_use(folder):
            in_use += sum(c.bytes for c in chunks)
        else:
            candidates += chunks
    candidates.sort(key=lambda c: c.last_used)
    for chunk in candidates:
        if total - freed <= max_bytes:
            break
        if dry_run or _remove(chunk):
            removed, freed = removed + 1, freed + chunk.bytes
    return PruneResult(removed, freed, total, total - freed, in_use)


def enforce_limit(cache_dir: str | os.PathLike) -> None:
    """Prune to `$IMAGEFIT_CACHE_MAX_GB` when it is set (after a store writes a chunk)."""
    limit = cache_limit_bytes()
    if limit is not None:
        prune(cache_dir, limit)


def _remove(chunk: Chunk) -> bool:
    """Remove one chunk unless its store came into use; record first, then data."""
    with _locked(chunk.folder, exclusive=True):
        if _in_use(chunk.folder):
            return False
        for suffix in (".json", ".npy"):
            with contextlib.suppress(FileNotFoundError):
                (chunk.folder / f"{chunk.name}{suffix}").unlink()
    return True


def _in_use(folder: Path) -> bool:
    """Whether a live process holds a lease on the store; stale leases are removed."""
    live = False
    for lease in folder.glob("lease-*-in-use"):
        try:
            if is_orphan(lease):
                lease.unlink()
            else:
                live = True
        except OSError:
            continue
    return live


@contextlib.contextmanager
def _locked(folder: Path, *, exclusive: bool):
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): leases alone
        yield
        return
    with open(folder / _LOCK, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _store_folders(root: Path) -> list[Path]:
    return sorted(p for kind in STORE_KINDS for p in (root / kind).glob("*") if p.is_dir())


def _chunks(folder: Path, *, rows: bool = False) -> list[Chunk]:
    """The recorded chunks of a store (their rows read from the records only if asked)."""
    out = []
    for record in folder.glob("chunk-*.json"):
        try:
            stat = record.stat()
            size = stat.st_size + record.with_suffix(".npy").stat().st_size
            n = int(json.loads(record.read_text())["shape"][0]) if rows else 0
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue  # being written or removed; the store validates what it reads
        out.append(Chunk(folder, record.stem, size, n, stat.st_mtime))
    return out


def _other_bytes(root: Path) -> int:
    """Bytes of the cache outside the stores (ONNX graphs, array images), walked at most once
    a minute per process: under a bound every chunk written asks, and `arrays/` may hold many
    thousands of files that change only when a job imports an array file."""
    now = time.monotonic()
    seen = _OTHER.get(root)
    if seen is None or now - seen[0] > 60.0:
        other = _folder_bytes(root) - sum(_folder_bytes(root / kind) for kind in STORE_KINDS)
        _OTHER[root] = seen = (now, other)
    return seen[1]


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def touch(record: Path) -> None:
    """Mark a chunk as used now (its record's modification time)."""
    with contextlib.suppress(OSError):
        os.utime(record)
