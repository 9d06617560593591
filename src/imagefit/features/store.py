"""The bottleneck feature store: rows of float32 features on disk, keyed by the SHA-256 of the
image file's bytes, in a folder keyed by backbone weights and preprocessing. Rows are written in
chunks of bounded size, each chunk an `.npy` file plus a JSON record (keys, shape, CRC32) written
last, atomically: a chunk without its record does not exist, so a killed run leaves nothing
half-valid. Chunks are validated on read; a bad one is removed and its rows are recomputed.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from imagefit.errors import CacheError

CHUNK_ROWS = 4096
_FORMAT = 1


def default_cache_dir() -> Path:
    """`$IMAGEFIT_CACHE`, else `$XDG_CACHE_HOME/imagefit`, else `~/.cache/imagefit`."""
    if os.environ.get("IMAGEFIT_CACHE"):
        return Path(os.environ["IMAGEFIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imagefit"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a mix."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FeatureStore:
    """Content-keyed feature rows for one (backbone weights, preprocessing) key.

    Example:
        >>> store = FeatureStore(tmp_path, "abc", dim=4)                 # doctest: +SKIP
        >>> with store.writer() as w: w.add(["f00d..."], np.ones((1, 4)))  # doctest: +SKIP
        >>> store.get(["f00d..."]).shape                                  # doctest: +SKIP
        (1, 4)
    """

    def __init__(self, cache_dir: str | os.PathLike, key: str, dim: int):
        self.folder = Path(cache_dir) / "features" / key
        self.dim = dim
        self._locations: dict[str, tuple[str, int]] | None = None
        self._arrays: dict[str, np.ndarray] = {}

    def locations(self) -> dict[str, tuple[str, int]]:
        """Map of content hash -> (chunk name, row), read from the chunk records."""
        if self._locations is None:
            locations: dict[str, tuple[str, int]] = {}
            unreadable = []
            for record in sorted(self.folder.glob("chunk-*.json")):
                try:
                    keys = json.loads(record.read_text())["keys"]
                except (OSError, ValueError, KeyError, TypeError):
                    unreadable.append(record.stem)
                    continue
                for row, key in enumerate(keys):
                    locations.setdefault(key, (record.stem, row))
            for name in unreadable:
                self._discard(name)
            self._locations = locations
        return self._locations

    def missing(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask of the keys that have no stored row."""
        known = self.locations()
        return np.array([k not in known for k in keys], dtype=bool)

    def get(self, keys, out: np.ndarray | None = None) -> np.ndarray:
        """Gather rows for `keys` into `out` (or a new array). All keys must be present.

        Raises:
            CacheError: a key is missing or its chunk failed validation (it is then removed, so
                recomputing the missing rows repairs the store).
        """
        known = self.locations()
        out = np.empty((len(keys), self.dim), np.float32) if out is None else out
        by_chunk: dict[str, tuple[list[int], list[int]]] = {}
        for i, key in enumerate(keys):
            if key not in known:
                raise CacheError(f"feature row for {key[:12]}... is not in the store")
            chunk, row = known[key]
            dst, src = by_chunk.setdefault(chunk, ([], []))
            dst.append(i)
            src.append(row)
        for chunk, (dst, src) in by_chunk.items():
            out[dst] = self._chunk(chunk)[src]
        return out

    def writer(self) -> "_ChunkWriter":
        return _ChunkWriter(self)

    def clean_stale_temp_files(self) -> None:
        """Remove what a killed writer left behind, once older than an hour (a live writer
        may still be working on newer ones): temp files, and chunk data with no record."""
        if not self.folder.is_dir():
            return
        orphans = [npy for npy in self.folder.glob("chunk-*.npy")
                   if not npy.with_suffix(".json").exists()]
        for leftover in list(self.folder.glob(".tmp-*")) + orphans:
            try:
                if time.time() - leftover.stat().st_mtime > 3600:
                    leftover.unlink()
            except OSError:
                pass

    def _chunk(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            record = self.folder / f"{name}.json"
            try:
                meta = json.loads(record.read_text())
                array = np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                valid = (meta.get("format") == _FORMAT and array.dtype == np.float32
                         and array.shape == (len(meta["keys"]), self.dim)
                         and zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))
                         == meta["crc32"])
            except (OSError, ValueError, KeyError):
                valid = False
            if not valid:
                self._discard(name)
                raise CacheError(f"feature chunk {name} failed validation and was removed; "
                                 f"its rows will be recomputed")
            self._arrays[name] = array
        return self._arrays[name]

    def _discard(self, name: str) -> None:
        for suffix in (".json", ".npy"):
            try:
                (self.folder / f"{name}{suffix}").unlink()
            except OSError:
                pass
        self._locations = None
        self._arrays.pop(name, None)

    def _commit(self, keys: list[str], rows: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{uuid.uuid4().hex}"
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        buffer = io.BytesIO()
        np.save(buffer, rows, allow_pickle=False)
        atomic_write_bytes(self.folder / f"{name}.npy", buffer.getvalue())
        meta = {"format": _FORMAT, "keys": keys, "shape": list(rows.shape),
                "crc32": zlib.crc32(memoryview(rows).cast("B"))}
        atomic_write_bytes(self.folder / f"{name}.json", json.dumps(meta).encode())
        if self._locations is not None:
            for row, key in enumerate(keys):
                self._locations.setdefault(key, (name, row))


class _ChunkWriter:
    """Buffers at most `CHUNK_ROWS` rows in memory, then commits them as one chunk."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self.keys: list[str] = []
        self.rows: list[np.ndarray] = []
        self.n_buffered = 0

    def add(self, keys, rows: np.ndarray) -> None:
        if len(keys) != len(rows):
            raise ValueError("keys and rows differ in length")
        self.keys.extend(keys)
        self.rows.append(np.asarray(rows, np.float32))
        self.n_buffered += len(rows)
        if self.n_buffered >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.n_buffered:
            self.store._commit(self.keys, np.concatenate(self.rows))
        self.keys, self.rows, self.n_buffered = [], [], 0

    def __enter__(self) -> "_ChunkWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Rows computed before an error are still good: keep them.
        self.flush()
