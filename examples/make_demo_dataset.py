"""Build the bundled imagefit demo dataset from Fashion-MNIST.

Draws a deliberately imbalanced training subset (10:1) from the official train
split and a balanced test subset from the official t10k split, and writes them
as 28x28 greyscale PNGs in one folder per class, deterministically for a seed.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SRC = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent / "fashion-mnist-demo"

CLASS_NAMES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
TRAIN_COUNTS = (120, 100, 80, 64, 50, 40, 32, 24, 18, 12)
TEST_PER_CLASS = 40

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
REGENERATE_COMMAND = "python examples/make_demo_dataset.py --force"


class IdxFormatError(ValueError):
    """Raised when an IDX file has a wrong magic number or inconsistent size."""


def _read_header(data: bytes, path: Path, ndim: int, magic: int) -> tuple[int, ...]:
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    header = np.frombuffer(data, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise IdxFormatError(f"{path}: bad magic number {int(header[0])}, expected {magic}")
    dims = tuple(int(d) for d in header[1:])
    expected = header_len + int(np.prod(dims))
    if len(data) != expected:
        raise IdxFormatError(
            f"{path}: size {len(data)} bytes does not match header dims {dims} "
            f"(expected {expected} bytes)"
        )
    return dims


def read_idx_images(path: Path) -> np.ndarray:
    """Read a gzipped IDX3 image file.

    Args:
        path: Path to a ``*-images-idx3-ubyte.gz`` file.

    Returns:
        A ``uint8`` array of shape ``(n, 28, 28)``.

    Raises:
        IdxFormatError: If the magic number, image size or file length is wrong.
    """
    data = gzip.decompress(path.read_bytes())
    n, rows, cols = _read_header(data, path, ndim=3, magic=IMAGES_MAGIC)
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise IdxFormatError(f"{path}: images are {rows}x{cols}, expected 28x28")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    """Read a gzipped IDX1 label file.

    Args:
        path: Path to a ``*-labels-idx1-ubyte.gz`` file.

    Returns:
        A ``uint8`` array of shape ``(n,)``.

    Raises:
        IdxFormatError: If the magic number, file length or label range is wrong.
    """
    data = gzip.decompress(path.read_bytes())
    _read_header(data, path, ndim=1, magic=LABELS_MAGIC)
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise IdxFormatError(f"{path}: label {int(labels.max())} out of range 0..9")
    return labels


def load_split(src: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels of one official split.

    Args:
        src: Directory holding the four Fashion-MNIST ``.gz`` files.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)`` with matching first dimension.

    Raises:
        IdxFormatError: If the files are malformed or their counts differ.
    """
    images_name, labels_name = SPLIT_FILES[split]
    images = read_idx_images(src / images_name)
    labels = read_idx_labels(src / labels_name)
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{src}: {split} split has {len(images)} images but {len(labels)} labels"
        )
    return images, labels


def sample_indices(
    labels: np.ndarray, counts: tuple[int, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Draw a sorted random subset of indices for each class without replacement.

    Args:
        labels: Label of every image in the split.
        counts: Number of images wanted per class, in label order.
        rng: Random generator; classes are drawn in label order.

    Returns:
        One sorted index array per class, in label order.

    Raises:
        ValueError: If a class has fewer images than requested.
    """
    chosen = []
    for label, count in enumerate(counts):
        pool = np.flatnonzero(labels == label)
        if len(pool) < count:
            raise ValueError(f"class {label} has {len(pool)} images, need {count}")
        chosen.append(np.sort(rng.choice(pool, size=count, replace=False)))
    return chosen


def write_split(
    out: Path, split: str, images: np.ndarray, per_class: list[np.ndarray]
) -> None:
    """Write the selected images as PNGs under ``out/split/<class>/``.

    Args:
        out: Dataset root directory.
        split: ``"train"`` or ``"test"``; also used in the file names.
        images: All images of the official split.
        per_class: Official indices to write, one array per class in label order.
    """
    for name, indices in zip(CLASS_NAMES, per_class):
        class_dir = out / split / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in indices:
            path = class_dir / f"fmnist-{split}-{int(index):05d}.png"
            Image.fromarray(np.ascontiguousarray(images[index])).save(path)  # uint8 2-D -> mode "L"


def render_readme(train_counts: tuple[int, ...], test_counts: tuple[int, ...], seed: int) -> str:
    """Return the text of the dataset's README.md.

    Args:
        train_counts: Images per class in the training subset.
        test_counts: Images per class in the test subset.
        seed: Seed the subset was drawn with.
    """
    rows = "\n".join(
        f"| {name} | {tr} | {te} |"
        for name, tr, te in zip(CLASS_NAMES, train_counts, test_counts)
    )
    command = REGENERATE_COMMAND if seed == 0 else f"{REGENERATE_COMMAND} --seed {seed}"
    return f"""# Fashion-MNIST demo subset

A small subset of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist)
by Zalando Research, used as the imagefit demo dataset. Fashion-MNIST is released
under the MIT licence, © 2017 Zalando SE.

Images are 28x28 8-bit greyscale PNGs, one folder per class. File names carry
the image's index in the official split (`fmnist-train-01234.png` is index 1234
of the official train split). `train/` is drawn from the official train split
and is deliberately imbalanced (10:1); `test/` is drawn from the official
t10k split and is balanced. Seed: {seed}.

| class | train | test |
|---|---:|---:|
{rows}
| **total** | **{sum(train_counts)}** | **{sum(test_counts)}** |

Regenerate it (byte-for-byte identical) with:

```
{command}
```
"""


def prepare_out(out: Path, force: bool) -> None:
    """Make sure ``out`` can be written to, clearing the script's own output if forced.

    Args:
        out: Dataset root directory.
        force: If true, delete ``out/train`` and ``out/test`` before regenerating.

    Raises:
        FileExistsError: If ``out`` is non-empty and ``force`` is false.
    """
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; pass --force to regenerate it")
        for split in SPLIT_FILES:
            shutil.rmtree(out / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments.

    Args:
        argv: Arguments to parse; ``None`` means ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC,
                        help=f"directory with the Fashion-MNIST .gz files (default: {DEFAULT_SRC})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/fashion-mnist-demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate into a non-empty output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the demo dataset; return the process exit code.

    Args:
        argv: Command-line arguments; ``None`` means ``sys.argv[1:]``.
    """
    args = parse_args(argv)
    missing = [n for files in SPLIT_FILES.values() for n in files if not (args.src / n).is_file()]
    if missing:
        print(
            f"Fashion-MNIST not found in {args.src}. "
            "Install it with: apt-get install dataset-fashion-mnist",
            file=sys.stderr,
        )
        return 1
    rng = np.random.default_rng(args.seed)
    test_counts = (TEST_PER_CLASS,) * len(CLASS_NAMES)
    selections = []
    for split, counts in (("train", TRAIN_COUNTS), ("test", test_counts)):
        images, labels = load_split(args.src, split)
        selections.append((split, images, sample_indices(labels, counts, rng)))

    try:
        prepare_out(args.out, args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, images, per_class in selections:
        write_split(args.out, split, images, per_class)
    (args.out / "README.md").write_text(
        render_readme(TRAIN_COUNTS, test_counts, args.seed), encoding="utf-8", newline="\n"
    )
    print(f"Wrote {sum(TRAIN_COUNTS)} train and {sum(test_counts)} test images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
