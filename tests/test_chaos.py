"""Killed runs, end to end with the real command in subprocesses: SIGKILL at random moments (then
`--resume`), SIGINT/SIGTERM (saved, exit 130/143, a second signal stops at once), a checkpoint
write killed half-way, a full disk and a read-only output folder (real tmpfs mounts).

Every finished run must equal an uninterrupted one bit for bit: batch order and augmentation
are pure functions of (seed, epoch), and checkpoints hold the RNG state dropout draws from.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset

ENTRY = [sys.executable, "-c", "from imagefit.cli.main import _entry; _entry()"]
# Fine-tuning (probe stage, then the top stage unfrozen) on tiny images: a few seconds a run.
OPTIONS = ["--mode", "finetune", "--image-size", "32", "--batch-size", "16", "--no-report",
           "--time-budget", "none",  # the epochs run must not depend on the load
           "--workers", "0", "--quiet"]
STAGES = ("probe", "finetune")
KILLS = int(os.environ.get("IMAGEFIT_CHAOS_KILLS", "20"))
# Waits for a process are hang guards, not speed limits: they end as soon as it is done, so a
# slow (loaded) machine makes these tests slower, never red.
HANG_GUARD_S = 600


def _command(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ENTRY + ["train", str(data), "--out", str(out), "--epochs", str(epochs), *OPTIONS,
                    *extra]


def _env(cache: Path) -> dict:
    return dict(os.environ, IMAGEFIT_CACHE=str(cache), HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join(sys.path))


def _run(command: list[str], cache: Path,
         timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=_env(cache), capture_output=True, text=True,
                          timeout=timeout)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights and temperature, and the same history but for timings."""
    expected, got = _weights(reference), _weights(run)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    meta = [json.loads((r / "model" / "model.json").read_text()) for r in (run, reference)]
    assert meta[0]["temperature"] == meta[1]["temperature"]

    def history(r: Path) -> list[dict]:
        with open(r / "history.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    assert history(run) == history(reference)


def _progress(run: Path) -> tuple[int, int, int]:
    """How far the saved state is: (stage, finished epochs, batches of the next). Every
    checkpoint on disk must load (weights only)."""
    best = (-1, 0, 0)
    for number, stage in enumerate(STAGES):
        path = run / "checkpoints" / f"{stage}.pt"
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            partial = state["partial"]["batch"] if state["partial"] else 0
            best = (number, state["epoch"], partial)
    return best


def _leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob(".tmp-*")]


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A dataset and the uninterrupted reference run (its own feature cache)."""
    base = tmp_path_factory.mktemp("chaos")
    data = make_dataset(base / "data", {"cat": 24, "dog": 20, "owl": 16})
    done = _run(_command(data, base / "reference", 6), base / "cache-reference")
    assert done.returncode == 0, done.stderr
    started = time.perf_counter()  # how long a run takes once the features are cached
    done = _run(_command(data, base / "warm", 6), base / "cache-reference")
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return {"base": base, "data": data, "reference": base / "reference", "seconds": seconds}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_as_an_uninterrupted_run(problem):
    base, rng = problem["base"], random.Random(2026)
    cache = base / "cache-reference"
    kills, finished, attempt = 0, 0, 0
    run = base / f"chaos-{attempt}"
    last = (-1, 0, 0)
    # How long a whole run takes now: the fixture's measurement, lowered by any run from
    # scratch that finished sooner (the machine's load changes; measured once under load, every
    # later run could finish before its kill and the loop would never reach KILLS).
    seconds = problem["seconds"]
    while kills < KILLS or not finished:
        from_scratch, started = last == (-1, 0, 0), time.perf_counter()
        process = subprocess.Popen(_command(problem["data"], run, 6, "--resume"),
                                   env=_env(cache), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(0.2, 1.0) * seconds if kills < KILLS else HANG_GUARD_S
        try:
            _, stderr = process.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            kills += 1
            progress = _progress(run)  # raises if a checkpoint does not load
            assert progress >= last, "a resumed run lost saved progress"
            last = progress
            continue
        assert process.returncode == 0, stderr
        if from_scratch:
            seconds = min(seconds, time.perf_counter() - started)
        _assert_same_run(run, problem["reference"])
        assert not _leftovers(run, cache), _leftovers(run, cache)
        finished += 1
        attempt += 1
        run, last = base / f"chaos-{attempt}", (-1, 0, 0)
    assert kills >= KILLS and finished >= 1
    print(f"{kills} SIGKILLs survived, {finished} runs finished identical to the reference")


def _start_and_wait_for(problem, run: Path, epochs: int, stage: str, cache_name: str):
    """Start a run and return it once `stage` has saved its first checkpoint."""
    process = subprocess.Popen(_command(problem["data"], run, epochs),
                               env=_env(problem["base"] / cache_name),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_GUARD_S
    while not (run / "checkpoints" / f"{stage}.pt").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return process


@pytest.fixture(scope="module")
def reference_40(problem):
    """An uninterrupted run of 40 epochs (long enough to interrupt)."""
    reference = problem["base"] / "reference-40"
    done = _run(_command(problem["data"], reference, 40), problem["base"] / "cache-reference")
    assert done.returncode == 0, done.stderr
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_prints_the_resume_command_and_the_resumed_run_is_identical(
        problem, reference_40, signum, code):
    base, reference = problem["base"], reference_40
    run = base / f"signal-{signum}"
    process = _start_and_wait_for(problem, run, 40, "finetune", "cache-reference")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == code, stderr
    assert "Continue with:" in stderr and "--resume" in stderr
    stage, epoch, _ = _progress(run)
    assert stage == 1 and 1 <= epoch < 40
    resume = stderr.split("Continue with:")[1].split("\n")[1].strip()
    assert resume.startswith("imagefit train") and f"--out {run}" in resume
    done = _run(ENTRY + resume.split()[1:], base / "cache-reference")
    assert done.returncode == 0, done.stderr
    _assert_same_run(run, reference)
    assert not _leftovers(run)


def test_a_second_signal_exits_at_once_without_waiting_for_the_step(tmp_path):
    """The step after the second signal sleeps for an hour: a process that waited for it would
    run into the subprocess timeout (far shorter), whatever the machine's load; "not reached"
    would be printed if the signal were ignored."""
    script = (
        "import os, signal, time\n"
        "from imagefit.train.interrupt import stop_requests\n"
        "with stop_requests() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.signum == signal.SIGTERM\n"
        "    print('first signal noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(3600)\n"
        "    print('not reached', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 143, done.stderr
    assert "first signal noted" in done.stdout and "not reached" not in done.stdout
    assert "stopping now" in done.stderr


@pytest.mark.slow
def test_two_quick_signals_to_a_training_run_leave_a_loadable_checkpoint(problem):
    run = problem["base"] / "double"
    process = _start_and_wait_for(problem, run, 200, "finetune", "cache-reference")
    process.send_signal(signal.SIGTERM)
    for line in process.stderr:
        if "Interrupted" in line:
            break
    else:
        pytest.fail(f"the run ended (exit {process.wait()}) without noting the first signal")
    process.send_signal(signal.SIGTERM)  # during the save, or after it: either way safe
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    # Where the second signal lands is up to the scheduler: during the step or the save, the
    # stop handler exits with 143 at once; once the command has returned (its handler restored
    # to the default) and the interpreter is shutting down, SIGTERM ends the process, which the
    # shell reports as 143 as well. Either way it ends on that signal and the checkpoint loads.
    assert process.returncode in (143, -signal.SIGTERM), stderr
    assert _progress(run)[0] == 1                                  # loads


def test_a_checkpoint_write_killed_half_way_leaves_the_old_or_the_new_one(tmp_path):
    """A writer saving a 16 MB state over and over, SIGKILLed 20 times: 10 times at a random
    moment (wherever it lands), and 10 times held in the middle of a save (its temp file
    written, not yet renamed), so that kills during a write are certain rather than likely."""
    folder = tmp_path / "ckpt"
    writer = (
        "import os, sys, time, torch\n"
        "from imagefit.train.checkpoint import Checkpointer\n"
        "hold_at = int(sys.argv[2])      # hold save number hold_at mid-write (0: never)\n"
        "holding, real_fsync = [False], os.fsync\n"
        "def fsync(fd):                   # a save's first fsync is its temp file's\n"
        "    if holding[0]:\n"
        "        print('mid-write', flush=True)\n"
        "        time.sleep(3600)\n"
        "    real_fsync(fd)\n"
        "os.fsync = fsync\n"
        "c = Checkpointer(sys.argv[1], 'fp')\n"
        "for i in range(10**6):\n"
        "    holding[0] = i + 1 == hold_at\n"
        "    c.save('s', {'epoch': i, 'w': torch.full((4 << 20,), float(i))})\n"
        "    print(i, flush=True)\n")
    from imagefit.train.checkpoint import Checkpointer

    rng, torn, torn_held = random.Random(7), 0, 0
    for attempt in range(20):
        held = attempt % 2 == 1
        hold_at = rng.randint(2, 4) if held else 0       # a previous save exists by then
        process = subprocess.Popen([sys.executable, "-c", writer, str(folder), str(hold_at)],
                                   env=_env(tmp_path / "cache"), stdout=subprocess.PIPE, text=True)
        if held:
            for line in process.stdout:
                if line.strip() == "mid-write":
                    break
            else:
                pytest.fail(f"the writer ended (exit {process.wait()}) before its held save")
        else:
            assert process.stdout.readline()                       # one save done
            time.sleep(rng.uniform(0, 0.3))
        process.kill()
        process.communicate()
        leftover = bool(_leftovers(folder))                        # killed mid-write
        torn += leftover
        torn_held += held and leftover
        state = Checkpointer(folder, "fp").load("s")
        assert torch.equal(state["w"], torch.full((4 << 20,), float(state["epoch"])))
        Checkpointer(folder, "fp").clean_temp_files()
        assert not _leftovers(folder)
    print(f"20 kills, {torn} during a write ({torn_held} of them held there)")
    assert torn_held == 10           # each held kill left its temp file, and the old file loads


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, *, read_only: bool = False):
    """A real size-limited (or read-only) file system; skipped where mounting is not allowed
    (CI runs as root and must not skip)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {mounted.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint_and_resume_finishes_the_run(problem):
    base = problem["base"]
    with _tmpfs(base / "small-disk", "1m") as disk:
        run = disk / "run"
        done = _run(_command(problem["data"], run, 6), base / "cache-reference")
        assert done.returncode == 1, done.stderr
        assert "No space left on device" in done.stderr and "--resume" in done.stderr
        assert "Traceback" not in done.stderr
        assert (run / "checkpoints" / "probe.pt").exists()         # the head's checkpoint fit
        assert _progress(run)[0] == 0                              # and still loads
        assert not _leftovers(run)                                 # no half-written file
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        done = _run(_command(problem["data"], run, 6, "--resume"), base / "cache-reference")
        assert done.returncode == 0, done.stderr
        _assert_same_run(run, problem["reference"])
        assert not _leftovers(run)


def test_a_read_only_output_folder_fails_before_any_work(tmp_path, dataset):
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        command = [a for a in _command(dataset, folder / "run", 2) if a != "--quiet"]
        done = _run(command, tmp_path / "cache")
        assert done.returncode == 1, done.stderr
        assert "Cannot write to the run folder" in done.stderr
        assert "Read-only file system" in done.stderr and "Traceback" not in done.stderr
        # Before any work: not even the scan ran (it prints "Found N images"), and no feature
        # or image cache was written. (Not a clock: a loaded machine is slow, not wrong.)
        assert "Found" not in done.stdout, done.stdout
        cache = tmp_path / "cache"
        assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]
