"""Writing files safely, in one place: atomic replacement, write-once files, owner-tagged temp
files and the clean-up of what a killed writer left, SHA-256 of a file, and file-name parts
made from user data. It knows nothing of what the files hold.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from pathlib import Path

from imagefit.errors import OutputError

# Files a process has not finished carry its owner tag (host, pid): what a killed process
# left is removed at once by the next run on this host, without touching a live writer's files.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_OWNER = re.compile(r"-([0-9a-f]{8})_(\d+)-")

# Device names Windows refuses as a file name (before the first dot) or a folder name.
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                              *(f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789¹²³")})
# A file name made from user data keeps only these characters (see `safe_name`).
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_SAFE_NAME = 64


def owner_tag() -> str:
    """`<host hash>_<pid>` of this process, for the names of files it is writing."""
    return f"{_HOST}_{os.getpid()}"


def temp_path(path: Path) -> Path:
    """A hidden, owner-tagged temporary name beside `path`."""
    return path.with_name(f".tmp-{owner_tag()}-{uuid.uuid4().hex[:12]}-{path.name}")


def is_orphan(path: Path, max_age_s: float = 3600) -> bool:
    """Whether `path` (a temp file or unrecorded chunk) was left by a writer that is gone: its
    process on this host has ended, or, when its owner cannot be told, it is older than
    `max_age_s` (a live writer elsewhere may still be working on it)."""
    match = _OWNER.search(path.name)
    if match and match[1] == _HOST:
        return not _process_alive(int(match[2]))
    return time.time() - path.stat().st_mtime > max_age_s


def remove_orphans(paths) -> None:
    """Delete those of `paths` that `is_orphan` says were left by a writer that is gone."""
    for path in paths:
        try:
            if is_orphan(path):
                path.unlink()
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_cache_dir() -> Path:
    """`$IMAGEFIT_CACHE`, else `$XDG_CACHE_HOME/imagefit`, else `~/.cache/imagefit`."""
    if os.environ.get("IMAGEFIT_CACHE"):
        return Path(os.environ["IMAGEFIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imagefit"


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder (`cache_dir`, else `default_cache_dir()`), created if missing."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def atomic_write_bytes(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write a file so that readers see the old content or the new one, never a mix.

    `sync=False` skips the fsyncs, for cache files that can be rebuilt: still never half
    written, but a power cut may lose them."""
    tmp = temp_path(path)
    try:
        if sync:
            _write_synced(tmp, data, "wb")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sync:
        _fsync_dir(path.parent)


def write_new(path: Path, data: bytes) -> bool:
    """Write `path` atomically unless it exists: True if written, False if the same bytes were
    already there.

    Raises:
        FileExistsError: `path` exists with other content (nothing is ever overwritten).
    """
    if os.path.lexists(path):
        if path.is_file() and path.read_bytes() == data:
            return False
        raise FileExistsError(path)
    tmp = temp_path(path)
    try:
        _write_synced(tmp, data, "xb")
        try:
            os.link(tmp, path)  # fails instead of replacing a file that appeared meanwhile
        except FileExistsError:
            if path.read_bytes() == data:
                return False
            raise
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise FileExistsError(path) from None
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def _write_synced(path: Path, data: bytes, mode: str) -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def name_bytes(text: str) -> int:
    """Length of a name on disk (undecodable bytes of a file name are one byte each)."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        return len(text.encode("utf-8", "surrogatepass"))


def safe_name(name: str, max_length: int = MAX_SAFE_NAME) -> str:
    """A file-name part made from user data: only [A-Za-z0-9._-], no leading dot, capped length.

    Every other character (path separators, NUL, control characters, non-ASCII) becomes "_",
    so the result can never name a parent folder, a hidden file or a path; a Windows device
    name ("CON", "nul.txt", "COM1") gets a "_" in front, so it is a file there too.

    Example:
        >>> safe_name("../../etc/passwd")
        '_._.._etc_passwd'
        >>> safe_name("golden retriever")
        'golden_retriever'
    """
    text = "".join(ch if ch in _SAFE_CHARS else "_" for ch in str(name))[:max_length]
    # A leading dot would make "." / ".." or a hidden file; mark it instead of dropping it.
    if text.startswith("."):
        text = "_" + text[1:]
    if text.split(".")[0].upper() in WINDOWS_RESERVED:
        text = "_" + text[:max_length - 1]
    return text or "_"


def check_output_folder(folder: str | os.PathLike, what: str = "the output folder",
                        fix: str = "Choose another one.") -> Path:
    """Create `folder` if needed and make sure a file can be written in it, before any work.

    Raises:
        OutputError: naming the folder and the reason (read-only, no permission, a file there).
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe_write(path / "write-check")
    except OSError as exc:
        raise OutputError(f"Cannot write to {what} {path}: {exc.strerror or exc}. "
                          f"{fix}") from None
    return path


def check_output_file(path: str | os.PathLike, what: str = "the output file") -> Path:
    """Make sure `path` can be written (its folder exists and takes a new file), before any
    work; nothing is created.

    Raises:
        OutputError: naming the file and the reason.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputError(f"Cannot write {what} {path}: it is a folder; name a file in it.")
    if not folder.is_dir():
        raise OutputError(f"Cannot write {what} {path}: the folder {folder} does not exist. "
                          f"Create it, or choose another path.")
    try:
        _probe_write(path)
    except OSError as exc:
        raise OutputError(f"Cannot write {what} {path}: {exc.strerror or exc}. Choose another "
                          f"path.") from None
    return path


def _probe_write(path: Path) -> None:
    """Create and remove an empty temp file beside `path` (OSError if the folder refuses)."""
    probe = temp_path(path)
    probe.write_bytes(b"")
    probe.unlink()
