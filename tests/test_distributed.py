"""Data-parallel training: `torchrun --nproc-per-node 2 imagefit train` with gloo on the CPU
trains one model, written once by rank 0; and the sharding arithmetic behind it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagefit.train.distributed import Distributed
from conftest import TEST_IMAGE_SIZE, make_dataset


def test_shards_cover_every_row_once():
    ranks = [Distributed(r, 3) for r in range(3)]
    parts = [d.shard(10) for d in ranks]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_epoch_shards_have_equal_length_and_cover_the_epoch():
    draws = np.arange(7) * 10
    parts = [Distributed(r, 2).shard_epoch(draws) for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]  # padded to the same number of steps
    assert set(np.concatenate(parts)) == set(draws.tolist())
    assert Distributed().shard_epoch(draws) is draws  # not distributed: unchanged


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_one_model(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    data = make_dataset(tmp_path / "data", {"cat": 16, "dog": 12, "owl": 8})
    run = tmp_path / "run"
    env = {**os.environ, "IMAGEFIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", "29517",
           str(Path(sys.executable).with_name("imagefit")), "train", str(data), "--out", str(run),
           "--image-size", str(TEST_IMAGE_SIZE), "--epochs", "3", "--no-report"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Found 36 images") == 1  # only rank 0 prints
    assert (run / "model" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "finetune.pt").is_file()
    assert not list(run.rglob(".tmp-*"))
    history = (run / "history.csv").read_text().splitlines()
    assert sum(",finetune," in line for line in history) == 3

    from imagefit import load_model

    clf = load_model(run)
    proba = clf.predict_proba(sorted(str(p) for p in (data / "owl").iterdir())[:2])
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
