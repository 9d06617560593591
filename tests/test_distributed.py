"""Data-parallel training: `torchrun --nproc-per-node 2 imagefit train` with gloo on the CPU
trains one model, written once by rank 0; and the sharding arithmetic behind it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_IMAGE_SIZE, make_dataset
from imagefit.train.distributed import Distributed

# A rendezvous on a port the OS picks (torchrun's --standalone: c10d on localhost:0), not a
# fixed --master-port: two test sessions on one machine (or a port still held by an earlier
# run) would otherwise fail to bind it, or worse, join each other's job.
STANDALONE = ["--standalone"]
# A hang guard, not a speed limit: the run returns as soon as it is done.
HANG_GUARD_S = 900


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


# Each rank's cache in a folder of its own, as on nodes without a shared filesystem.
RANK_CACHE_SCRIPT = """
import os, sys
os.environ["IMAGEFIT_CACHE"] = os.path.join(sys.argv.pop(1), "rank" + os.environ["RANK"])
from imagefit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _torchrun_train(tmp_path: Path, *options: str, garbled: int = 0, run: str = "run",
                    cache_per_rank: bool = False):
    """`torchrun --nproc-per-node 2 imagefit train DATA --out RUN *options` with gloo on 36
    images (plus `garbled` JPEGs in class owl that only a decode finds bad), the cache in
    tmp_path/cache, or with `cache_per_rank` in tmp_path/cache/rank<N>: (data, run folder,
    the finished process)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, {"cat": 16, "dog": 12, "owl": 8})
    for i in range(garbled):
        (data / "owl" / f"garbled{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes([i]) * 60)
    out = tmp_path / run
    env = {**os.environ, "IMAGEFIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    if cache_per_rank:
        script = tmp_path / "rank_cache.py"
        script.write_text(RANK_CACHE_SCRIPT)
        program = [str(script), str(tmp_path / "cache")]
    else:
        program = [str(Path(sys.executable).with_name("imagefit"))]
    cmd = [str(torchrun), "--nproc-per-node", "2", *STANDALONE, *program, "train", str(data),
           "--out", str(out), "--image-size", str(TEST_IMAGE_SIZE), *options]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    return data, out, done


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_one_model(tmp_path):
    data, run, done = _torchrun_train(tmp_path, "--epochs", "3", "--no-report")
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


AGREEMENT_SCRIPT = '''
import json, os, signal, sys
import torch
import torch.distributed as dist
from torch import nn
from imagefit.train.checkpoint import Checkpointer
from imagefit.errors import TrainingInterrupted
from imagefit.train.engine import LoopHooks, LoopSettings, fit_loop

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Linear(4, 2)
ddp = nn.parallel.DistributedDataParallel(model)
x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
skipped = []

def batches(epoch, first):
    for b in range(first, 4):
        if (epoch, b) == (2, 1) and rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)   # only rank 0 is signalled
        if (epoch, b) == (1, 2) and rank == 1:
            yield x * float("nan"), y              # only rank 1 sees a NaN loss
        else:
            yield x, y

files = lambda epoch, batch: skipped.append((epoch, batch)) or []
result = {"rank": rank}
try:
    fit_loop(model, batches, lambda: model(x), y.numpy(), 2,
             LoopSettings(epochs=5, lr=0.1, patience=10, stage="s"),
             hooks=LoopHooks(checkpointer=Checkpointer(sys.argv[1], "fp", writer=rank == 0),
                             train_model=ddp, batch_files=files))
except TrainingInterrupted as exc:
    result["interrupted"] = exc.exit_code
result["skipped"] = skipped
result["weights"] = [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])]
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
dist.barrier()  # neither rank tears the group down while the other is still in it
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_torchrun_default_command_builds_the_report_and_every_rank_exits_0(tmp_path):
    """The README's command with the report on: rank 0's report trains out-of-fold heads after
    the other rank has exited; that once ended in a gloo all_reduce with no peer (exit 1)."""
    _, run, done = _torchrun_train(tmp_path, "--mode", "finetune", "--epochs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exited with code" not in done.stderr and "Connection closed" not in done.stderr
    assert done.stdout.count("Report:") == 1
    assert (run / "report" / "index.html").is_file()
    assert (run / "report" / "label_issues.csv").is_file()
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_a_finished_group_is_not_distributed_any_more():
    finished = Distributed(1, 2, active=False)
    assert not finished.enabled and not finished.is_main
    assert finished.shard(3).tolist() == [0, 1, 2]


@pytest.mark.slow
def test_ranks_agree_on_skipping_a_nan_step_and_on_stopping(tmp_path):
    """A NaN loss on one rank, a signal to another: no rank hangs in a collective the other
    skipped; both skip the same step, both stop at the same batch, weights stay identical."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    script = tmp_path / "agree.py"
    script.write_text(AGREEMENT_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", *STANDALONE,
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["interrupted"] for r in ranks] == [143, 143]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [[1, 2]]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    import torch

    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"]["epoch"] == 2
    assert saved["partial"]["batch"] == 2                          # the step finished


@pytest.mark.slow
def test_torchrun_ranks_split_the_features_of_what_they_draw(tmp_path):
    """Epochs that draw a subset under torchrun: the probe's ranks draw the same rows, so each
    computes a share of the new ones into the shared store; none is computed twice."""
    _, run, done = _torchrun_train(tmp_path, "--mode", "probe", "--balance", "sampler",
                                   "--max-per-class", "4", "--epochs", "3", "--max-val", "6",
                                   "--preflight", "lazy", "--no-report")
    assert done.returncode == 0, done.stderr[-3000:]
    training = json.loads((run / "model" / "model.json").read_text())["training"]
    assert 4 < training["n_drawn"] < training["n_train"]
    records = (tmp_path / "cache" / "features").glob("*/chunk-*.json")
    keys = [key for record in records for key in json.loads(record.read_text())["keys"]]
    assert len(keys) == len(set(keys)) == training["n_drawn"] + training["n_val"]
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


@pytest.mark.slow
def test_torchrun_fine_tuning_on_draws_skips_files_that_fail_on_any_rank(tmp_path):
    """Decoded as first drawn under torchrun, with bad files among the draws: the ranks still
    take the same number of steps (a rank with fewer would leave the other waiting in the
    gradient all-reduce), and every bad file is listed once."""
    _, run, done = _torchrun_train(tmp_path, "--mode", "finetune", "--balance", "sampler",
                                   "--max-per-class", "6", "--epochs", "2", "--max-val", "6",
                                   "--preflight", "lazy", "--no-report", garbled=3)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(run / "bad_files.csv", newline="") as f:
        bad = sorted(Path(row["path"]).name for row in csv.DictReader(f))
    assert any(name.startswith("garbled") for name in bad) and len(set(bad)) == len(bad)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


@pytest.mark.slow
def test_torchrun_ranks_with_separate_cache_folders_train_the_model_one_shared_folder_trains(
        tmp_path):
    """Nodes without a shared filesystem: each rank has its own cache folder, finds only its
    own share there after the barrier, and computes the rest itself (no faster than one
    process, but correct): the model is the one a shared folder gives."""
    options = ("--mode", "probe", "--epochs", "3", "--no-report")
    data, shared_run, done = _torchrun_train(tmp_path / "shared", *options)
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copytree(data, tmp_path / "separate" / "data")
    _, separate_run, done = _torchrun_train(tmp_path / "separate", *options, cache_per_rank=True)
    assert done.returncode == 0, done.stderr[-3000:]
    training = json.loads((separate_run / "model" / "model.json").read_text())["training"]
    for rank in (0, 1):  # each rank's store holds every training and validation row
        records = (tmp_path / "separate" / "cache" / f"rank{rank}" / "features").glob(
            "*/chunk-*.json")
        keys = {key for record in records for key in json.loads(record.read_text())["keys"]}
        assert len(keys) == training["n_train"] + training["n_val"]
    assert not (tmp_path / "separate" / "cache" / "features").exists()

    from imagefit import load_model

    files = sorted(str(p) for p in (data / "owl").iterdir())[:4]
    np.testing.assert_allclose(load_model(separate_run).predict_proba(files),
                               load_model(shared_run).predict_proba(files), atol=1e-4)
    shutil.rmtree(tmp_path / "shared" / "cache", ignore_errors=True)
    shutil.rmtree(tmp_path / "separate" / "cache", ignore_errors=True)
