"""Content hashes remembered across runs. Every run keys images by the SHA-256 of their bytes,
and hashing reads every byte: for a million files, minutes of disk reads on each run. A file
whose size, modification time (ns) and inode are what they were when a run hashed it gets its
hash from here without being read. The documented corner: a file rewritten in place with the
same size and the same modification time keeps its old hash (a tool that restores mtimes on
purpose can do it; `--preflight full` and a fresh cache read every file).

One file per dataset folder in the cache, `hashes/<key>.npz`: per file a 64-bit hash of its path
(the path itself is not kept), size, mtime_ns, inode, the SHA-256 as 32 bytes and the format:
about 60 bytes a file, arrays only (loaded without pickle), written atomically. It holds the
files of the last run that saved it; what a run no longer finds drops out.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagefit._fileio import atomic_write_bytes, remove_orphans
from imagefit.data.images import ALLOWED_FORMATS

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


@dataclass
class FileStats:
    """What `os.stat` said of each file (-1 where it failed)."""

    size: np.ndarray
    mtime_ns: np.ndarray
    inode: np.ndarray

    @classmethod
    def of(cls, paths: list[str]) -> "FileStats":
        out = np.full((3, len(paths)), -1, np.int64)
        for i, path in enumerate(paths):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[:, i] = st.st_size, st.st_mtime_ns, st.st_ino
        return cls(*out)


class KnownHashes:
    """The remembered hashes of one dataset folder.

    Example:
        >>> known = KnownHashes.for_folder(cache, "data/")     # doctest: +SKIP
        >>> stats = FileStats.of(paths)                         # doctest: +SKIP
        >>> digests, formats = known.lookup(path_keys(paths), stats)  # doctest: +SKIP
        >>> digests[0]  # '' where the file must be read       # doctest: +SKIP
        '9f86d081884c7d65...'
    """

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def for_folder(cls, cache: str | os.PathLike, folder: str | os.PathLike) -> "KnownHashes":
        key = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:24]
        return cls(Path(cache) / "hashes" / f"{key}.npz")

    def lookup(self, keys: np.ndarray, stats: FileStats) -> tuple[np.ndarray, list[str | None]]:
        """For the files of `path_keys(paths)`: (SHA-256 hex per file, '' where unknown or
        changed; its format, None there)."""
        digests = np.zeros(len(keys), "<U64")
        formats: list[str | None] = [None] * len(keys)
        stored = self._load()
        if stored is None or not len(keys):
            return digests, formats
        at = np.minimum(np.searchsorted(stored["key"], keys), len(stored["key"]) - 1)
        hit = ((stored["key"][at] == keys) & (stored["size"][at] == stats.size)
               & (stored["mtime_ns"][at] == stats.mtime_ns) & (stored["inode"][at] == stats.inode)
               & (stats.size >= 0))
        rows = at[hit]
        digests[hit] = _hex(stored["sha256"][rows])
        for i, code in zip(np.flatnonzero(hit), stored["format"][rows].tolist()):
            formats[i] = ALLOWED_FORMATS[code] if code < len(ALLOWED_FORMATS) else None
            if formats[i] is None:
                digests[i] = ""
        return digests, formats

    def formats(self) -> "KnownFormats | None":
        """The remembered formats, by inode, size and modification time (None: nothing
        remembered): a scan does not open a file it finds there."""
        stored = self._load()
        if stored is None:
            return None
        order = np.argsort(stored["inode"], kind="stable")
        return KnownFormats(*(stored[name][order] for name in ("inode", "size", "mtime_ns",
                                                              "format")))

    def save(self, keys: np.ndarray, stats: FileStats, digests: np.ndarray,
             formats: list[str | None]) -> None:
        """Remember the files with a hash, a known format and a stat (the others are read
        again next time), beside what was remembered of other files of the folder (a table of
        validation images beside the training table). Never fails a run: a cache that cannot
        be written is skipped."""
        keep = np.array([bool(d) and f in ALLOWED_FORMATS for d, f in zip(digests, formats)],
                        bool) & (stats.size >= 0)
        rows = np.flatnonzero(keep)
        new = {"key": keys[rows], "size": stats.size[rows],
               "mtime_ns": stats.mtime_ns[rows], "inode": stats.inode[rows],
               "sha256": _unhex(np.asarray(digests)[rows]),
               "format": np.array([ALLOWED_FORMATS.index(formats[i]) for i in rows], np.uint8)}
        old = self._load()
        if old is not None:  # this call's files replace their old entries; the rest stay
            others = ~np.isin(old["key"], keys)
            new = {name: np.concatenate([old[name][others], column])
                   for name, column in new.items()}
        order = np.argsort(new["key"], kind="stable")
        arrays = {name: column[order] for name, column in new.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_orphans(self.path.parent.glob(".tmp-*"))  # what a killed run left
            atomic_write_bytes(self.path, buffer.getvalue(), sync=False)
        except OSError:
            pass

    def _load(self) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                stored = {name: data[name] for name in ("key", "size", "mtime_ns", "inode",
                                                        "sha256", "format")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # none yet, or damaged: every file is read, and this one rewritten
        n = len(stored["key"])
        if n == 0 or any(len(a) != n for a in stored.values()) \
                or stored["sha256"].shape != (n, 32):
            return None
        return stored


@dataclass
class KnownFormats:
    """Formats the pre-flight found, by the file's inode, size and mtime_ns (sorted by
    inode). Without the path: a file moved within the dataset keeps its format (its bytes are
    the same), and the scan asks before it has a path key."""

    inode: np.ndarray
    size: np.ndarray
    mtime_ns: np.ndarray
    format: np.ndarray

    def of(self, stats: np.ndarray) -> list[str | None]:
        """For a (3, n) array of (inode, size, mtime_ns): each file's format, or None where
        not remembered or changed."""
        inode, size, mtime_ns = stats
        at = np.minimum(np.searchsorted(self.inode, inode), len(self.inode) - 1)
        hit = ((self.inode[at] == inode) & (self.size[at] == size)
               & (self.mtime_ns[at] == mtime_ns))
        codes = np.where(hit, self.format[at], len(ALLOWED_FORMATS)).tolist()
        return [ALLOWED_FORMATS[c] if c < len(ALLOWED_FORMATS) else None for c in codes]


def path_keys(paths: list[str]) -> np.ndarray:
    """A 64-bit hash of each path (sorted lookups in NumPy, no path strings kept)."""
    return np.array([int.from_bytes(hashlib.blake2b(os.fsencode(p), digest_size=8).digest(),
                                    "little") for p in paths], np.uint64)


def _hex(raw: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 -> n SHA-256 hex strings, vectorised."""
    out = np.empty((len(raw), 64), np.uint8)
    out[:, 0::2], out[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 15]
    return out.view("S64").reshape(-1).astype("<U64")


def _unhex(digests: np.ndarray) -> np.ndarray:
    """n SHA-256 hex strings -> (n, 32) uint8."""
    if not len(digests):
        return np.zeros((0, 32), np.uint8)
    text = np.frombuffer(np.asarray(digests, "S64").tobytes(), np.uint8).reshape(-1, 64)
    nibbles = np.where(text >= ord("a"), text - ord("a") + 10, text - ord("0")).astype(np.uint8)
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
