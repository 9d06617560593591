"""The content-keyed row store: rows on disk keyed by the SHA-256 of the image file's bytes, in a
folder keyed by what produced them. Two kinds share it: float32 bottleneck features (keyed by
backbone weights and preprocessing) and uint8 decoded images at working size (keyed by the
decoder settings), so epochs after the first never decode again. Rows are written in
chunks of bounded size, each chunk an `.npy` file plus a JSON record (keys, shape, CRC32) written
last, atomically: a chunk without its record does not exist, so a killed run leaves nothing
half-valid. Chunks are validated on read; a bad one is removed and its rows are recomputed.
"""

from __future__ import annotations

import binascii
import io
import json
import os
import uuid
import zlib
from pathlib import Path

import numpy as np

from imagefit._fileio import atomic_write_bytes, owner_tag, remove_orphans
from imagefit.features import cache
from imagefit.errors import CacheError
from imagefit.data.text import as_text, fixed_width

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
        self._locations: KeyIndex | None = None
        self._valid: dict[str, tuple[int, ...]] = {}  # chunks checked, and their shapes

    def locations(self) -> "KeyIndex":
        """Where each content hash's row lives, read from the chunk records (once)."""
        if self._locations is None:
            cache.hold(self.folder)  # before listing: a prune never takes what this run lists
            index = KeyIndex()
            unreadable = []
            for record in sorted(self.folder.glob("chunk-*.json")):
                try:
                    keys = json.loads(record.read_text())["keys"]
                    index.add(record.stem, keys)
                except (OSError, ValueError, KeyError, TypeError):
                    unreadable.append(record.stem)
            for name in unreadable:
                self._discard(name)
            self._locations = index
        return self._locations

    def refresh(self) -> None:
        """Read the chunk records again at next use: rows other processes wrote since."""
        self._locations = None

    def missing(self, keys) -> np.ndarray:
        """Boolean mask of the keys that have no stored row."""
        _, found = self.locations().find(keys)
        return ~found

    def get(self, keys, out: np.ndarray | None = None) -> np.ndarray:
        """Gather rows for `keys` into `out` (or a new array). All keys must be present.

        Raises:
            CacheError: a key is missing or its chunk failed validation (it is then removed, so
                recomputing the missing rows repairs the store).
        """
        names, chunk, row = self._where(keys)
        out = np.empty((len(chunk), *self.row_shape), self.dtype) if out is None else out
        order = np.argsort(chunk, kind="stable")
        bounds = np.searchsorted(chunk[order], np.arange(len(names) + 1))
        for number, name in enumerate(names):
            dst = order[bounds[number]:bounds[number + 1]]
            out[dst] = self._chunk(name)[row[dst]]
        return out

    def resolve(self, keys) -> tuple[list[Path], np.ndarray, np.ndarray]:
        """Where each key's row lives, as arrays (cheap to hand to DataLoader workers): chunk
        files, and per key the chunk number and the row. All keys must be present."""
        names, chunk, row = self._where(keys)
        for name in names:
            self._chunk(name)  # validated once here, not in every worker
        return [self.folder / f"{n}.npy" for n in names], chunk, row.astype(np.int64)

    def rows(self, keys) -> "StoredRows":
        """The rows of `keys` (all present) as an array-like read a request at a time."""
        return StoredRows(self, keys)

    def _where(self, keys) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(the chunks holding `keys`, per key the number of its chunk among them, its row)."""
        index = self.locations()
        at, found = index.find(keys)
        if not found.all():
            key = str(as_text(keys)[np.argmin(found)])
            raise CacheError(f"feature row for {key[:12]}... is not in the store")
        used, chunk = np.unique(index.chunks[at], return_inverse=True)
        names = [index.names[i] for i in used]
        return names, chunk.astype(np.int32).reshape(-1), index.rows[at]

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
        """The chunk's rows, memory-mapped for the caller's use only: validated (CRC32) the
        first time, then checked for shape; never kept mapped here, so the pages a run reads
        do not pile up in its memory."""
        path = self.folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if name in self._valid:
                valid = array.shape == self._valid[name] and array.dtype == self.dtype
            else:
                record = self.folder / f"{name}.json"
                meta = json.loads(record.read_text())
                valid = (meta.get("format") == _FORMAT and array.dtype == self.dtype
                         and array.shape == (len(meta["keys"]), *self.row_shape)
                         and zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))
                         == meta["crc32"])
                if valid:
                    cache.touch(record)  # its last use, for pruning least recently used chunks
                    cache.hold(self.folder)
                    self._valid[name] = array.shape
        except (OSError, ValueError, KeyError):
            valid = False
        if not valid:
            self._discard(name)
            raise CacheError(f"feature chunk {name} failed validation and was removed; "
                             f"its rows will be recomputed")
        return array

    def _discard(self, name: str) -> None:
        for suffix in (".json", ".npy"):
            try:
                (self.folder / f"{name}{suffix}").unlink()
            except OSError:
                pass
        self._locations = None
        self._valid.pop(name, None)

    def _commit(self, keys: list[str], rows: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cache.hold(self.folder)
        name = f"chunk-{owner_tag()}-{uuid.uuid4().hex[:16]}"
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        buffer = io.BytesIO()
        np.save(buffer, rows, allow_pickle=False)
        atomic_write_bytes(self.folder / f"{name}.npy", buffer.getvalue())
        meta = {"format": _FORMAT, "keys": keys, "shape": list(rows.shape),
                "crc32": zlib.crc32(memoryview(rows).cast("B"))}
        atomic_write_bytes(self.folder / f"{name}.json", json.dumps(meta).encode())
        if self._locations is not None:
            self._locations.add(name, keys)
        cache.enforce_limit(self.folder.parent.parent)  # $IMAGEFIT_CACHE_MAX_GB, if set


class StoredRows:
    """A store's rows for `keys` as a read-only (N, *row_shape) array-like that is never held
    whole in memory: `rows[idx]` gathers the rows asked for from the chunk files, each mapped
    only during the gather, so memory stays that of one request (the system's page cache
    aside). Ask for many rows at a time (a window of batches): each request opens every chunk
    it touches.

    Example:
        >>> rows = store.rows(index.sha256)          # doctest: +SKIP
        >>> rows[np.array([5, 0, 5])].shape          # doctest: +SKIP
        (3, 1280)
    """

    def __init__(self, store: FeatureStore, keys):
        self.files, self.chunk, self.row = store.resolve(keys)
        self.shape = (len(self.chunk), *store.row_shape)
        self.dtype = store.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
        idx = idx.reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        chunk, row = self.chunk[idx], self.row[idx]
        order = np.argsort(chunk, kind="stable")
        bounds = np.searchsorted(chunk[order], np.arange(len(self.files) + 1))
        for number in np.flatnonzero(np.diff(bounds)):
            dst = order[bounds[number]:bounds[number + 1]]
            array = np.load(self.files[number], mmap_mode="r", allow_pickle=False)
            out[dst] = array[row[dst]]
            del array  # unmapped: its pages no longer count here
        return out


class KeyIndex:
    """Chunk and row of every stored key, as arrays: each key is reduced to two independent
    64-bit hashes (a false match needs both to collide: about 1e-26 at a million keys), kept
    sorted for `np.searchsorted`. About 24 bytes a key, where a dict of strings took ~230;
    lookups run in NumPy, not a Python loop. The first chunk (in record order) holding a key
    is the one used."""

    def __init__(self):
        self.names: list[str] = []
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # not sorted in yet
        self._h1 = self._h2 = np.zeros(0, np.uint64)
        self._chunks = self._rows = np.zeros(0, np.int32)

    def add(self, name: str, keys) -> None:
        """Index the keys of chunk `name` (row i holds keys[i])."""
        hashes = key_hashes(keys)
        self._pending.append((hashes, np.full(len(hashes), len(self.names), np.int32),
                              np.arange(len(hashes), dtype=np.int32)))
        self.names.append(name)

    @property
    def chunks(self) -> np.ndarray:
        self._merge()
        return self._chunks

    @property
    def rows(self) -> np.ndarray:
        self._merge()
        return self._rows

    def find(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """(position of each key in `chunks`/`rows`, whether it is stored)."""
        self._merge()
        h1, h2 = self._h1, self._h2
        q = key_hashes(keys)
        if not len(h1) or not len(q):
            return np.zeros(len(q), np.int64), np.zeros(len(q), bool)
        order = np.argsort(q[:, 0])  # sorted needles: searchsorted walks, 5x faster at 1M
        at = np.empty(len(q), np.int64)
        at[order] = np.minimum(np.searchsorted(h1, q[order, 0]), len(h1) - 1)
        first_equal = h1[at] == q[:, 0]
        found = first_equal & (h2[at] == q[:, 1])
        for i in np.flatnonzero(first_equal & ~found):  # the first hash alone collided: rare
            j = at[i]
            while j < len(h1) and h1[j] == q[i, 0] and h2[j] != q[i, 1]:
                j += 1
            if j < len(h1) and h1[j] == q[i, 0]:
                at[i], found[i] = j, True
        return at, found

    def _merge(self) -> None:
        """Sort the pending keys in; the indexed ones come first, so a key already indexed
        keeps its row (the sort is stable) and a later copy of it is dropped."""
        if not self._pending:
            return
        hashes = np.concatenate([np.stack([self._h1, self._h2], axis=1)]
                                + [p[0] for p in self._pending])
        chunks = np.concatenate([self._chunks] + [p[1] for p in self._pending])
        rows = np.concatenate([self._rows] + [p[2] for p in self._pending])
        self._pending = []
        order = np.lexsort((hashes[:, 1], hashes[:, 0]))
        hashes, chunks, rows = hashes[order], chunks[order], rows[order]
        first = np.ones(len(hashes), bool)
        first[1:] = (hashes[1:] != hashes[:-1]).any(axis=1)
        self._h1 = np.ascontiguousarray(hashes[first, 0])
        self._h2 = np.ascontiguousarray(hashes[first, 1])
        self._chunks, self._rows = chunks[first], rows[first]


_HASH_SEEDS = (np.uint64(0xCBF29CE484222325), np.uint64(0x9E3779B97F4A7C15))
_HASH_PRIMES = (np.uint64(0x100000001B3), np.uint64(0xBF58476D1CE4E5B9))
_HASH_BLOCK = 1 << 16  # keys hashed at a time (bounds the temporaries)


def key_hashes(keys) -> np.ndarray:
    """Two 64-bit hashes of each string key, (n, 2) uint64. A SHA-256 hex digest (what the
    store's keys are) is decoded to its four 64-bit words, a block of keys at a time without a
    Python string per key, and the words are mixed; any other string is mixed from its
    characters, one key at a time."""
    keys = as_text(keys).reshape(-1)
    out = np.empty((len(keys), 2), np.uint64)
    for start in range(0, len(keys), _HASH_BLOCK):
        block = keys[start:start + _HASH_BLOCK]
        digests = fixed_width(block, 64)
        words = _digest_words(digests) if digests is not None else None
        if words is not None:
            out[start:start + len(block)] = _mix(words)
            continue
        for i, key in enumerate(block.tolist(), start):
            words = _digest_words(np.array([key])) if len(key) == 64 else None
            if words is None:  # not a digest: its characters, offset so as not to look like one
                words = np.frombuffer(key.encode("utf-32-le"), np.uint32).astype(np.uint64)[None]
                words = words + np.uint64(1 << 32)
            out[i] = _mix(words)[0]
    return out


def _digest_words(block: np.ndarray) -> np.ndarray | None:
    """A '<U64' array of lowercase hex digests as (n, 4) uint64; None when any key is something
    else (a shorter key leaves NULs, which fail here)."""
    codes = np.ascontiguousarray(block).view(np.uint32)
    if not len(codes) or codes.max() > 127:
        return None
    text = codes.astype(np.uint8).tobytes()
    if text != text.lower():
        return None
    try:
        return np.frombuffer(binascii.unhexlify(text), np.uint64).reshape(len(block), 4)
    except (binascii.Error, ValueError):
        return None


def _mix(words: np.ndarray) -> np.ndarray:
    """Two seeded multiply-xorshift hashes over the columns of `words`, (n, 2) uint64."""
    out = np.empty((len(words), 2), np.uint64)
    for k, (seed, prime) in enumerate(zip(_HASH_SEEDS, _HASH_PRIMES)):
        h = np.full(len(words), seed, np.uint64)
        for column in words.T:
            h = (h ^ column) * prime
            h ^= h >> np.uint64(29)
        out[:, k] = h
    return out


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
