"""Shared fixtures. Every image is made at test time; nothing touches the network. The feature
store and ONNX cache live in one temporary folder per test session (exported graphs are reused).
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Before anything imports huggingface_hub (it reads this once): no test may reach a network.
os.environ["HF_HUB_OFFLINE"] = "1"

# A job started in the background by a non-interactive shell (`make test &`, nohup, some CI
# runners) inherits SIGINT ignored, and Python then leaves it ignored: Ctrl-C tests would see
# no KeyboardInterrupt, and the CLI processes they start would inherit the same. The tests
# assume what an interactive `make test` gets: Python's default handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Small inputs keep the pretrained backbone fast in tests.
TEST_IMAGE_SIZE = 32
COLOURS = {"cat": (220, 60, 40), "dog": (40, 200, 60), "owl": (50, 70, 230)}


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("imagefit-cache")
    old = os.environ.get("IMAGEFIT_CACHE")
    os.environ["IMAGEFIT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("IMAGEFIT_CACHE", None)
    else:
        os.environ["IMAGEFIT_CACHE"] = old


def make_image(path: Path, colour, *, seed: int, size=(40, 30), fmt: str | None = None) -> Path:
    """A noisy image of a dominant colour with a class-specific stripe (so classes separate)."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.clip(np.array(colour, float) + rng.normal(0, 25, (h, w, 3)), 0, 255)
    pixels[h // 3: h // 3 + 4] = 255 - np.array(colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)
    return path


def make_dataset(root: Path, counts: dict[str, int], *, seed: int = 0) -> Path:
    """Class folders of PNG and JPEG images with the given (imbalanced) counts."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            suffix = ".png" if i % 2 else ".jpg"
            make_image(root / name / f"{name}_{i:03d}{suffix}", COLOURS[name],
                       seed=seed * 10_000 + c * 1000 + i)
    return root


def tree_digest(root: Path) -> str:
    """Hash of every path and file content under `root` (to prove user data is untouched)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Three imbalanced classes: cat 14, dog 9, owl 6."""
    return make_dataset(tmp_path / "data", {"cat": 14, "dog": 9, "owl": 6})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, _session_cache):
    """One probe run on a small dataset, shared by tests that only read it."""
    from imagefit.config import TrainConfig
    from imagefit.workflows.train import train_run

    base = tmp_path_factory.mktemp("trained")
    data = make_dataset(base / "data", {"cat": 14, "dog": 9, "owl": 6})
    test = make_dataset(base / "test", {"cat": 5, "dog": 5, "owl": 5}, seed=1)
    result = train_run(TrainConfig(data=str(data), out=str(base / "run"),
                                   image_size=TEST_IMAGE_SIZE, epochs=30),
                       progress=False)
    return {"result": result, "data": data, "test": test, "run": base / "run"}


def torchrun_train(table: Path, run: Path, tmp_path: Path, *options: str):
    """`imagefit train TABLE` fine-tuned for 2 epochs on two gloo ranks under torchrun (each
    with its own thread, the cache in `tmp_path`); skips where torchrun is not installed."""
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "IMAGEFIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(torchrun), "--nproc-per-node", "2", "--standalone",
                           str(Path(sys.executable).with_name("imagefit")), "train", str(table),
                           *options, "--out", str(run), "--mode", "finetune", "--epochs", "2",
                           "--image-size", str(TEST_IMAGE_SIZE), "--batch-size", "8",
                           "--no-report"],
                          env=env, capture_output=True, text=True, timeout=900)
