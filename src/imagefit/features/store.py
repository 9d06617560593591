"""The content-keyed row store: rows on disk keyed by the SHA-256 of the image file's bytes, in a
folder keyed by what produced them. Two kinds share it: float32 bottleneck features (keyed by
backbone weights and preprocessing) and uint8 decoded images at working size (keyed by the
decoder settings), so epochs after the first never decode again. Rows are written in
chunks of bounded size, each chunk an `.npy` file plus a JSON record (keys, shape, CRC32) written
last, atomically: a chunk without its record does not exist, so a killed run leaves nothing
half-valid. Chunks are validated on read; a bad one is removed and its rows are recomputed.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zlib
from pathlib import Path

import numpy as np

from imagefit._fileio import atomic_write_bytes, owner_tag, remove_orphans
from imagefit.errors import CacheError

CHUNK_ROWS = 4096
# Rows buffered before a chunk is committed are bounded in bytes too (decoded images are large).
CHUNK_BYTES = 64 << 20
_FORMAT = 1


class FeatureStore:
    """Content-keyed feature rows for one (backbone weights, preprocessing) key.

    Example:
        >>> store = FeatureStore(tmp_path, "abc", dim=4)                 # doctest: +SKIP
        >>> with store.writer() as w: w.add(["f00d..."], np.ones((1, 4)))  # doctest: +SKIP
        >>> store.get(["f00d..."]).shape                                  # doctest: +SKIP
        (1, 4)
    """

    def __init__(self, cache_dir: str | os.PathLike, key: str, dim: int | tuple[int, ...], *,
                 dtype: np.dtype | type = np.float32, kind: str = "features"):
        self.folder = Path(cache_dir) / kind / key
        self.dim = dim
        self.row_shape = (dim,) if isinstance(dim, int) else tuple(dim)
        self.dtype = np.dtype(dtype)
        row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.chunk_rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(row_bytes, 1)))
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
        out = np.empty((len(keys), *self.row_shape), self.dtype) if out is None else out
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

    def resolve(self, keys) -> tuple[list[Path], np.ndarray, np.ndarray]:
        """Where each key's row lives, as arrays (cheap to hand to DataLoader workers): chunk
        files, and per key the chunk number and the row. All keys must be present."""
        known = self.locations()
        names = sorted({known[k][0] for k in keys})
        number = {name: i for i, name in enumerate(names)}
        chunk = np.array([number[known[k][0]] for k in keys], np.int32)
        row = np.array([known[k][1] for k in keys], np.int64)
        for name in names:
            self._chunk(name)  # validate once here, not in every worker
        return [self.folder / f"{n}.npy" for n in names], chunk, row

    def writer(self) -> "_ChunkWriter":
        return _ChunkWriter(self)

    def clean_stale_temp_files(self) -> None:
        """Remove what a killed writer left behind (see `is_orphan`): temp files, and chunk
        data with no record."""
        if not self.folder.is_dir():
            return
        unrecorded = [npy for npy in self.folder.glob("chunk-*.npy")
                      if not npy.with_suffix(".json").exists()]
        remove_orphans(list(self.folder.glob(".tmp-*")) + unrecorded)

    def _chunk(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            record = self.folder / f"{name}.json"
            try:
                meta = json.loads(record.read_text())
                array = np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                valid = (meta.get("format") == _FORMAT and array.dtype == self.dtype
                         and array.shape == (len(meta["keys"]), *self.row_shape)
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
        name = f"chunk-{owner_tag()}-{uuid.uuid4().hex[:16]}"
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
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
    """Buffers at most `chunk_rows` rows in memory, then commits them as one chunk."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self.keys: list[str] = []
        self.rows: list[np.ndarray] = []
        self.n_buffered = 0

    def add(self, keys, rows: np.ndarray) -> None:
        if len(keys) != len(rows):
            raise ValueError("keys and rows differ in length")
        self.keys.extend(keys)
        self.rows.append(np.asarray(rows, self.store.dtype))
        self.n_buffered += len(rows)
        if self.n_buffered >= min(CHUNK_ROWS, self.store.chunk_rows):
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
