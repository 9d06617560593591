"""Offline augmentation: write augmented copies of a dataset's images into class sub-folders of a
new folder, with a manifest of every copy's parameters, and draw a preview grid. Copies keep each
image's size and pixel range; parameters are sampled per (seed, image, copy), so output does not
depend on processing order. Nothing here writes into the dataset or overwrites an existing file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import numpy as np
from PIL import Image

from imagefit._fileio import WINDOWS_RESERVED, atomic_write_bytes, name_bytes, write_new
from imagefit._validation import check_int
from imagefit.data.audit import preflight
from imagefit.data.augment import AugmentConfig, Augmenter
from imagefit.data.images import decode_image, sniff_format
from imagefit.data.index import BadFile, ImageIndex, refuse_output_inside
from imagefit.data.sources import open_dataset
from imagefit.errors import ConfigError, DatasetError, ImageLoadError
from imagefit.progress import printable, progress_bar

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "source", "class", "seed", "params")
JPEG_QUALITY = 95
# Preview cells are letterboxed on this grey, so the image's own edges stay visible.
_PREVIEW_BACKGROUND = (48, 48, 48)
# Names a file manager drops into any folder; they do not make an output folder "non-empty".
_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}
# Output stems are capped in UTF-8 bytes so that "<stem>_aug<k>.<ext>" and the temp name it is
# written under (".tmp-" + 32 hex + "-" + name) stay within the usual 255-byte name limit.
MAX_STEM_BYTES = 150
MAX_NAME_BYTES = 255
_WINDOWS_FORBIDDEN = set('<>:"/\\|?*')

logger = logging.getLogger(__name__)

AugmentSpec = Union[str, Mapping, AugmentConfig]


@dataclass
class AugmentResult:
    """What `augment_folder` wrote.

    Attributes:
        out_dir: the output folder.
        manifest: `out_dir/manifest.csv` (path,source,class,seed,params; paths relative to
            `out_dir`, sources absolute, params the JSON of `AugmentParams.to_dict()`).
        n_written: copies written by this call.
        n_reused: copies this call would have written that an earlier identical run already had
            (same bytes; kept, not rewritten).
        per_class: augmented copies per class from this call (written + reused).
        originals: usable source images per class (originals are never copied).
        bad_files: files skipped, with their reason (from the scan, the pre-flight or decoding).
        warnings: notes on the dataset (e.g. a `val/` folder left out).
    """

    out_dir: Path
    manifest: Path
    n_written: int = 0
    n_reused: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    originals: dict[str, int] = field(default_factory=dict)
    bad_files: list[BadFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def bad_summary(self) -> str:
        """`"2 skipped (empty x1, truncated x1)"`, or "" when nothing was skipped."""
        if not self.bad_files:
            return ""
        reasons = Counter(b.reason for b in self.bad_files)
        detail = ", ".join(f"{r} x{c}" for r, c in sorted(reasons.items()))
        return f"{len(self.bad_files)} skipped ({detail})"


@dataclass(frozen=True)
class _Job:
    path: str
    cls: str
    key: int          # stable per image: a hash of its path relative to the dataset root
    stem: str         # output name stem, unique within the class folder
    ext: str          # ".jpg" for JPEG sources, ".png" for everything else (lossless)
    copies: int


def augment_folder(index_or_data: "ImageIndex | str | os.PathLike", out_dir: str | os.PathLike,
                   *, augment: AugmentSpec = "keras", per_image: int | None = None,
                   balance: bool = False, seed: int = 0, progress: bool = False
                   ) -> AugmentResult:
    """Write augmented copies of every image into `out_dir/<class>/<stem>_aug<k>.<ext>`.

    Each copy is the original decoded at full size (EXIF orientation applied, transparency over
    white), augmented with parameters sampled for its own height and width from
    `np.random.default_rng([seed, image_key, k])`, where `image_key` is a 64-bit hash of the
    image's path relative to the dataset root: the same seed gives byte-identical files, and
    adding or removing other images does not change an image's copies. Pixel values are not
    rescaled. JPEG sources are written as JPEG (quality 95); all other formats as PNG (lossless).
    Originals are not copied: train on the dataset plus `out_dir`, or merge the two.

    Running again into the same folder with the same settings keeps the files already there
    (a stopped run resumes; a larger `per_image` adds the missing copies). A file that would
    differ from one already there is an error: nothing is ever overwritten.

    Args:
        index_or_data: an `ImageIndex`, or a dataset folder or table (read by `open_dataset`).
            In a `train/` + `val/` layout only `train/` is augmented.
        out_dir: the output folder: new, empty, or written by an earlier `augment_folder`
            (it holds `manifest.csv`). It may not be inside the dataset.
        augment: a preset name ("keras", "light", "strong"), a YAML file, a mapping or an
            `AugmentConfig`.
        per_image: write this many copies of every image.
        balance: instead, write for each class enough copies (spread round-robin over its
            images, in a seeded order) that every class reaches the size of the largest one.
        seed: base seed (int >= 0).
        progress: show a progress bar.

    Raises:
        ConfigError: bad parameters, `out_dir` inside the dataset, not empty and not an earlier
            augment output, or holding a different file under a name this run would write.
        DatasetError: the dataset cannot be indexed, or a class name is not a valid folder name.

    Example:
        >>> result = augment_folder("data/", "data-aug/", balance=True)   # doctest: +SKIP
        >>> result.per_class                                               # doctest: +SKIP
        {'cat': 0, 'dog': 5, 'owl': 8}
    """
    if (per_image is None) == (not balance):
        raise ConfigError("Exactly one of the 'per_image' and 'balance' parameters must be set. "
                          f"Got per_image={per_image!r}, balance={balance!r} instead.")
    if per_image is not None:
        check_int("per_image", per_image, 1)
    check_int("seed", seed, 0)
    augmenter = _augmenter(augment)
    index, roots, warnings = _usable_index(index_or_data)
    out = Path(out_dir)
    refuse_output_inside(out, roots)
    previous = _read_previous_manifest(out)

    checked = preflight(index, progress=progress)
    index = checked.index
    bad = list(checked.bad_files)
    root = index.root
    counts = index.counts()
    jobs: list[_Job] = []
    for c, cls in enumerate(index.classes):
        for part in cls.split("/"):  # a tree label (--label-depth) is nested folders
            _check_class_name(part)
        rows = np.flatnonzero(index.labels == c)
        paths = [str(index.paths[r]) for r in rows]
        keys = [_image_key(p, root) for p in paths]
        exts = [_output_ext(p) for p in paths]
        stems = _unique_stems(paths, exts, keys)
        if per_image is not None:
            copies = [per_image] * len(paths)
        elif not paths:
            warnings.append(f"Class '{cls}' has no readable images; it cannot be balanced.")
            copies = []
        else:
            need, n = int(counts.max() - counts[c]), len(paths)
            # Round-robin over a seeded order: which images get one copy more is not
            # decided by file names.
            rank = np.empty(n, int)
            rank[np.argsort([_order_key(seed, k) for k in keys], kind="stable")] = np.arange(n)
            copies = [need // n + int(rank[i] < need % n) for i in range(n)]
        jobs += [_Job(p, cls, k, s, e, m)
                 for p, k, s, e, m in zip(paths, keys, stems, exts, copies) if m]

    result = AugmentResult(out, out / MANIFEST_NAME, per_class=dict.fromkeys(index.classes, 0),
                           originals={cls: int(n) for cls, n in zip(index.classes, counts)},
                           bad_files=bad, warnings=warnings)
    _check_previous(previous, jobs, seed, out)
    out.mkdir(parents=True, exist_ok=True)
    for cls in sorted({job.cls for job in jobs}):
        (out / cls).mkdir(parents=True, exist_ok=True)  # a/b for tree labels
        refuse_output_inside(out / cls, roots)  # a class folder that is a link into the data
    rows = dict(previous)
    # The manifest exists from the start, so a stopped run's folder is recognised and resumed.
    _write_manifest(result.manifest, rows)
    bar = progress_bar(total=sum(job.copies for job in jobs), desc="Augmenting", unit="img",
                       enabled=progress)
    try:
        for job in jobs:
            try:
                image, info = decode_image(job.path)
            except ImageLoadError as exc:  # changed since the pre-flight
                bad.append(BadFile(job.path, exc.reason, exc.message))
                bar.update(job.copies)
                continue
            fmt = "JPEG" if job.ext == ".jpg" else "PNG"
            for k in range(job.copies):
                params = augmenter.sample(_copy_rng(seed, job.key, k), image.shape[:2])
                data = _encode(augmenter.apply(image, params), fmt)
                rel = f"{job.cls}/{job.stem}_aug{k}{job.ext}"
                try:
                    written = write_new(out / rel, data)
                except FileExistsError:
                    raise _conflict(out / rel) from None
                result.n_written += written
                result.n_reused += not written
                result.per_class[job.cls] += 1
                rows[rel] = {"path": rel, "source": os.path.abspath(job.path), "class": job.cls,
                             "seed": str(seed), "params": _params_json(params.to_dict())}
                bar.update()
    finally:
        bar.close()
        _write_manifest(result.manifest, rows)
    return result


def preview_grid(index_or_data: "ImageIndex | str | os.PathLike", path: str | os.PathLike, *,
                 augment: AugmentSpec = "keras", n_images: int = 8, n_versions: int = 7,
                 size: int = 128, seed: int = 0) -> Path:
    """Draw a PNG grid: one row per image, the original then `n_versions` augmented versions.

    Up to `n_images` images are taken round-robin across classes, each class in a seeded order.
    Every version is augmented at the image's full size, then fitted into a `size` x `size` cell
    (aspect kept, grey borders). Version k uses the same parameters as the copy `_aug<k>` that
    `augment_folder` writes with the same seed. The file is (1 + n_versions) * size pixels wide
    and (number of rows) * size high; unreadable images are skipped (logged) and replaced by the
    next candidate.

    Raises:
        ConfigError: bad parameters, a path not ending in .png, or a path inside the dataset.
        DatasetError: the dataset cannot be indexed or has no readable image.

    Example:
        >>> preview_grid("data/", "preview.png", augment="strong")   # doctest: +SKIP
        PosixPath('preview.png')
    """
    for name, value, minimum in (("n_images", n_images, 1), ("n_versions", n_versions, 1),
                                 ("size", size, 8), ("seed", seed, 0)):
        check_int(name, value, minimum)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"The preview path must end in .png. Got {str(path)!r} instead.")
    augmenter = _augmenter(augment)
    index, roots, _ = _usable_index(index_or_data)
    refuse_output_inside(path, roots)
    queues = []
    for c in range(len(index.classes)):
        paths = [str(p) for p in index.paths[index.labels == c]]
        paths.sort(key=lambda p: _order_key(seed, _image_key(p, index.root)))
        queues.append(paths)
    candidates = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues
                  if i < len(q)]
    rows = []
    for source in candidates:
        if len(rows) == n_images:
            break
        try:
            image = decode_image(source)[0]
        except ImageLoadError as exc:
            logger.warning("preview skips %s (%s: %s)", printable(source), exc.reason,
                           printable(exc.message))
            continue
        key = _image_key(source, index.root)
        cells = [image] + [augmenter.apply(image, augmenter.sample(_copy_rng(seed, key, k),
                                                                   image.shape[:2]))
                           for k in range(n_versions)]
        rows.append([_fit_cell(cell, size) for cell in cells])
    if not rows:
        raise DatasetError("Found no readable image to preview; run 'imagefit inspect' on the "
                           "dataset to see why.")
    grid = Image.new("RGB", ((1 + n_versions) * size, len(rows) * size), _PREVIEW_BACKGROUND)
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            grid.paste(cell, (c * size, r * size))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# helpers ---------------------------------------------------------------------------------------
def _augmenter(spec) -> Augmenter:
    augmenter = Augmenter(spec)
    if augmenter.config.is_identity:
        raise ConfigError("The 'augment' parameter must change the images (e.g. 'keras', "
                          "'light', 'strong'); this one would write exact copies. Got "
                          f"{spec!r} instead.")
    return augmenter


def _usable_index(index_or_data) -> tuple[ImageIndex, list[str], list[str]]:
    """The labelled training rows, the folders nothing may be written into, and notes."""
    if isinstance(index_or_data, ImageIndex):
        index = index_or_data
        roots = [index.root] if index.root else []
    else:
        index = open_dataset(index_or_data, min_classes=1)
        roots = [os.fspath(index_or_data)]
    warnings = list(index.report.warnings)
    if index.subsets is not None and (index.subsets != "train").any():
        # Augmented validation or test images would leak into training data.
        warnings.append("Only the training images are augmented; validation and test images "
                        "never are.")
        index = index.take(index.subsets == "train")
    index = index.take(index.labels >= 0)
    # Images may lie outside the root (a CSV can point anywhere): their folders are data too.
    roots += sorted({os.path.dirname(os.path.abspath(p)) for p in index.paths.tolist()})
    return index, roots, warnings


def _check_class_name(name: str, *, windows: bool = os.name == "nt") -> None:
    """Refuse a class name that cannot be one folder inside the output (a path, a hidden or
    parent folder, too long, or, on Windows, a device name or forbidden character)."""
    problem = None
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or "\x00" in name):
        problem = "no slashes, not starting with '.'"
    elif name_bytes(name) > MAX_NAME_BYTES:
        problem = f"at most {MAX_NAME_BYTES} bytes"
    elif windows and (name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED
                      or name[-1] in ". " or any(ch in _WINDOWS_FORBIDDEN or ord(ch) < 32
                                                for ch in name)):
        problem = "on Windows: not a device name like CON or COM1, no <>:\"|?*, no trailing dot"
    if problem:
        raise DatasetError(f"Class {name!r} cannot be used as a folder name for its augmented "
                           f"copies; rename the class ({problem}).")


def copy_stem(stem: str) -> str:
    """The stem of an augmented copy's file name, made from its source file's stem.

    An ordinary stem is kept as it is. Path separators, NUL and control characters become "_";
    a leading dot (a hidden file) or a Windows device name before a dot ("NUL.tar": Windows
    reads "NUL.tar_aug0.png" as the device, while "NUL_aug0.png" is an ordinary name) gets a
    "_" in front; a stem longer than `MAX_STEM_BYTES` is cut and given a hash of the whole
    stem, so it stays unique. The result is one file-name part, never empty, "." or "..".

    Example:
        >>> copy_stem("tabby")
        'tabby'
        >>> copy_stem("../../etc/passwd")
        '_.._.._etc_passwd'
        >>> copy_stem("NUL.tar")
        '_NUL.tar'
    """
    text = "".join("_" if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 else ch
                   for ch in str(stem))
    device = "." in text and text.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED
    if text.startswith(".") or device:
        text = "_" + text
    if name_bytes(text) > MAX_STEM_BYTES:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        kept, size = [], 0
        for ch in text:
            size += name_bytes(ch)
            if size > MAX_STEM_BYTES - len(digest) - 1:
                break
            kept.append(ch)
        text = "".join(kept) + "_" + digest
    return text or "_"


def _image_key(path: str, root: str | None) -> int:
    rel = path
    if root:
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
        except ValueError:
            rel = os.path.abspath(path)
    return int.from_bytes(hashlib.blake2b(rel.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


def _order_key(seed: int, key: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()


def _copy_rng(seed: int, key: int, copy: int) -> np.random.Generator:
    return np.random.default_rng([seed, key, copy])


def _output_ext(path: str) -> str:
    try:
        with open(path, "rb") as f:
            fmt = sniff_format(f.read(32))
    except OSError:
        fmt = None  # decoding will report it
    return ".jpg" if fmt == "JPEG" else ".png"


def _unique_stems(paths: list[str], exts: list[str], keys: list[int]) -> list[str]:
    """Output stems unique within one class folder, case-insensitively (macOS, Windows).

    Stems go through `copy_stem` first. Clashes (`a.png` and `a.bmp`, or `x/a.png` and
    `y/a.png`) get the source suffix, then a hash of the path."""
    stems = [copy_stem(Path(p).stem) for p in paths]

    def clashes(names: list[str]) -> list[bool]:
        seen = Counter((n.casefold(), e) for n, e in zip(names, exts))
        return [seen[(n.casefold(), e)] > 1 for n, e in zip(names, exts)]

    stems = [copy_stem(f"{s}_{Path(p).suffix[1:].lower() or 'img'}") if clash else s
             for s, p, clash in zip(stems, paths, clashes(stems))]
    return [f"{s}_{k:016x}" if clash else s for s, k, clash in zip(stems, keys, clashes(stems))]


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _conflict(path: Path) -> ConfigError:
    return ConfigError(f"{path} already exists with other content (from an augment run with "
                       f"other settings or data); imagefit never overwrites files. Choose a new "
                       f"output folder.")


def _params_json(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"),
                      default=lambda v: v.item() if isinstance(v, np.generic) else str(v))


def _read_previous_manifest(out: Path) -> dict[str, dict]:
    """Rows of an earlier run's manifest; refuses an output folder that is not one."""
    if not out.exists():
        return {}
    if not out.is_dir():
        raise ConfigError(f"The output folder {out} is a file; choose a folder.")
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        if any(entry.name not in _CLUTTER for entry in out.iterdir()):
            raise ConfigError(f"The output folder {out} is not empty and holds no {MANIFEST_NAME} "
                              f"from an earlier 'imagefit augment'; choose a new or empty folder.")
        return {}
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
                raise ConfigError(f"{manifest} is not a manifest of 'imagefit augment' (columns "
                                  f"{list(reader.fieldnames or [])}); choose a new or empty "
                                  f"output folder.")
            return {row["path"]: row for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"Cannot read {manifest} ({exc}); choose a new or empty output "
                          f"folder.") from None


def _check_previous(previous: dict[str, dict], jobs: list[_Job], seed: int, out: Path) -> None:
    """Fail before writing anything when an earlier run used a name for another source or seed.
    (Same source and seed with other augmentation settings is caught file by file.)"""
    if not previous:
        return
    for job in jobs:
        for k in range(job.copies):
            row = previous.get(f"{job.cls}/{job.stem}_aug{k}{job.ext}")
            if row is not None and (row["source"] != os.path.abspath(job.path)
                                    or row["seed"] != str(seed)):
                raise ConfigError(f"{out} already holds {row['path']} from an augment run with "
                                  f"seed {row['seed']} of {row['source']}; this run would write "
                                  f"seed {seed} of {os.path.abspath(job.path)} there. imagefit "
                                  f"never overwrites files: choose a new output folder.")


def _write_manifest(path: Path, rows: dict[str, dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rel in sorted(rows):
        writer.writerow({column: rows[rel][column] for column in MANIFEST_COLUMNS})
    atomic_write_bytes(path, text.getvalue().encode("utf-8", "surrogateescape"))


def _fit_cell(image: np.ndarray, size: int) -> Image.Image:
    """Fit into a size x size cell, keeping the aspect ratio, centred on the background."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    fitted = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                           Image.LANCZOS)
    cell = Image.new("RGB", (size, size), _PREVIEW_BACKGROUND)
    cell.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return cell
