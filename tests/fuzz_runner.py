"""Byte-mutation fuzzing of `load_image` in worker processes under limits (reliability.md §4
T-mutate, C3), for tests/test_fuzz.py and benchmarks/fuzz_load_image.py. A case is a number:
it picks a seed image and a mutation and seeds the mutation's draws, so any case is rebuilt
from (master seed, number) alone with `python tests/fuzz_runner.py show|run --case N [--seed S]`.
"""

from __future__ import annotations

import argparse
import heapq
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
RESIZE_TO = 32
SMALL_MAX_PIXELS = 10_000
# Per decode, in CPU time of the worker (an ITIMER_PROF timer): a decoder's cost, whatever the
# machine's load. A wall-clock limit would also count the time the worker waited for a CPU, so
# a busy machine would turn ordinary cases into findings.
SOFT_TIMEOUT_S = 2.0
# Per case, in wall-clock time (faulthandler's watchdog): ends a worker whose decoder is stuck in
# C code, where no signal handler runs. A hang guard, far above any case that finishes (at most
# two decodes of SOFT_TIMEOUT_S of CPU each) even on a loaded machine.
HARD_TIMEOUT_S = 60.0
# A worker that has not written its READY line after this long (importing PyTorch, warm-up) is
# killed: a hang guard too.
STARTUP_TIMEOUT_S = 600.0
# Address space a worker may add to what it holds after warm-up (RLIMIT_AS): past it a decode
# gets MemoryError, which load_image reports as too_large and the fuzzing as a finding.
AS_HEADROOM_MB = 2048
# Resident memory one case may add (reliability.md C3: no case over 1 GB). The default pixel cap
# lets a small hostile file declare 89 MP, so this also bounds the decoder's bytes per pixel.
RSS_BUDGET_MB = 1024
MAX_RANDOM_BYTES = 64 * 1024


# --------------------------------------------------------------------------- seeds

def _picture(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients plus noise: compresses like a photo, not like pure noise or flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1),
                     (x + y) * 255 / max(w + h - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def seed_images() -> dict[str, bytes]:
    """Small valid files of every allowed format and the modes and codings worth mutating.

    Deterministic for one Pillow build (its encoders are), which is what reproducing a case
    needs: `show` prints the seed's SHA-256 prefix to check against.
    """
    rgb = Image.fromarray(_picture(32, 24, 1))
    alpha = Image.fromarray(np.dstack([_picture(24, 16, 2),
                                       np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1))]),
                            "RGBA")
    grey16 = Image.fromarray((np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 170))
    palette = rgb.quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6                                        # rotated: exercises the EXIF path
    frames = [Image.fromarray(_picture(20, 14, s)).quantize(8) for s in (3, 4, 5)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    webp_anim = io.BytesIO()
    Image.fromarray(_picture(16, 12, 6)).save(
        webp_anim, "WEBP", save_all=True, append_images=[Image.fromarray(_picture(16, 12, 7))],
        duration=50, quality=70)
    return {
        "jpeg-baseline": _encode(rgb, "JPEG", quality=85),
        "jpeg-progressive": _encode(rgb, "JPEG", quality=85, progressive=True),
        "jpeg-exif-cmyk": _encode(rgb.convert("CMYK"), "JPEG", quality=85, exif=exif.tobytes()),
        "jpeg-grey-exif": _encode(rgb.convert("L"), "JPEG", quality=85, exif=exif.tobytes()),
        "png-rgb": _encode(rgb, "PNG"),
        "png-rgba": _encode(alpha, "PNG"),
        "png-16bit": _encode(grey16, "PNG"),
        "png-palette-trns": _encode(palette, "PNG", transparency=0),
        "webp-lossy": _encode(rgb, "WEBP", quality=70),
        "webp-lossless-alpha": _encode(alpha, "WEBP", lossless=True),
        "webp-animated": webp_anim.getvalue(),
        "gif-animated": gif.getvalue(),
        "bmp-rgb": _encode(rgb, "BMP"),
        "bmp-palette": _encode(palette, "BMP"),
        "tiff-raw": _encode(rgb, "TIFF"),
        "tiff-lzw-rgba": _encode(alpha, "TIFF", compression="tiff_lzw"),
        "tiff-deflate-16bit": _encode(grey16, "TIFF", compression="tiff_adobe_deflate"),
    }


# --------------------------------------------------------------------------- mutations

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _flip(rng, buf: bytearray) -> bytearray:
    for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))) if buf else ():
        buf[pos] = int(rng.integers(0, 256))
    return buf


def _bitflip(rng, buf: bytearray) -> bytearray:
    for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))) if buf else ():
        buf[pos] ^= 1 << int(rng.integers(0, 8))
    return buf


def _truncate(rng, buf: bytearray) -> bytearray:
    return buf[: int(rng.integers(0, len(buf)))] if buf else buf


def _insert(rng, buf: bytearray) -> bytearray:
    n = int(rng.integers(1, 257))
    run = (bytes([int(rng.integers(0, 256))]) * n if rng.random() < 0.5
           else rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    pos = int(rng.integers(0, len(buf) + 1))
    return buf[:pos] + run + buf[pos:]


def _delete(rng, buf: bytearray) -> bytearray:
    if not buf:
        return buf
    pos = int(rng.integers(0, len(buf)))
    return buf[:pos] + buf[pos + int(rng.integers(1, 257)):]


def _duplicate(rng, buf: bytearray) -> bytearray:
    """Copy a chunk of the file elsewhere in it (repeated markers, chunks, IFDs)."""
    if not buf:
        return buf
    start = int(rng.integers(0, len(buf)))
    chunk = buf[start: start + int(rng.integers(1, 513))]
    pos = int(rng.integers(0, len(buf) + 1))
    return buf[:pos] + chunk + buf[pos:]


def _header(rng, buf: bytearray) -> bytearray:
    """Overwrite a 1, 2 or 4-byte field in the first 64 bytes with a boundary value: sizes,
    offsets and counts live there."""
    width = int(rng.choice([1, 2, 4]))
    value = int(rng.choice(INTERESTING)) & ((1 << (8 * width)) - 1)
    field_bytes = value.to_bytes(width, "big" if rng.random() < 0.5 else "little")
    pos = int(rng.integers(0, max(1, min(64, len(buf)) - width + 1)))
    buf[pos: pos + width] = field_bytes
    return buf


def _random(rng, buf: bytearray) -> bytearray:
    return bytearray(rng.integers(0, 256, int(rng.integers(0, MAX_RANDOM_BYTES + 1)),
                                  dtype=np.uint8).tobytes())


def _magic_random(rng, buf: bytearray) -> bytearray:
    """The seed's first 8-40 bytes (past the format sniffing), then random bytes."""
    keep = int(rng.integers(8, 41))
    return buf[:keep] + _random(rng, buf)


MUTATIONS = {
    "flip": _flip,
    "bitflip": _bitflip,
    "truncate": _truncate,
    "flip+truncate": lambda rng, b: _truncate(rng, _flip(rng, b)),
    "insert": _insert,
    "delete": _delete,
    "duplicate": _duplicate,
    "header": _header,
    "header+flip": lambda rng, b: _flip(rng, _header(rng, b)),
    "magic+random": _magic_random,
    "random": _random,
}


@dataclass(frozen=True)
class Case:
    number: int
    seed_name: str
    mutation: str
    data: bytes


def make_case(number: int, master_seed: int, seeds: dict[str, bytes]) -> Case:
    """Case `number`: seed and mutation round-robin (every pair gets its share), random draws
    from a generator seeded by (master_seed, number)."""
    names = list(seeds)
    seed_name = names[number % len(names)]
    mutation = list(MUTATIONS)[(number // len(names)) % len(MUTATIONS)]
    rng = np.random.default_rng((master_seed, number))
    data = bytes(MUTATIONS[mutation](rng, bytearray(seeds[seed_name])))
    return Case(number, seed_name, mutation, data)


def reproduce_command(number: int, master_seed: int) -> str:
    return f"python tests/fuzz_runner.py run --seed {master_seed} --case {number}"


# --------------------------------------------------------------------------- worker

class CaseTimeout(BaseException):
    """Raised by the soft-timeout timer; a BaseException so no `except Exception` swallows it."""


# The soft timeout's timer counts the process's CPU time (user and system), not wall time.
SOFT_TIMER, SOFT_TIMER_SIGNAL = signal.ITIMER_PROF, signal.SIGPROF


def _on_alarm(signum, frame):
    raise CaseTimeout()


def _clean(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


def decode_outcome(load_image, error_type, data: bytes, timeout: float = SOFT_TIMEOUT_S,
                   **kwargs) -> str:
    """One decode: `ok`, `E:<reason>`, `X:<type>:<message>` (any other exception: a finding),
    `T` (soft timeout: over `timeout` seconds of CPU) or `BAD:<what>` (a returned array that
    breaks load_image's contract). The timeout needs SOFT_TIMER_SIGNAL handled by `_on_alarm`
    (the worker does that)."""
    signal.setitimer(SOFT_TIMER, timeout)
    try:
        out = load_image(data, **kwargs)
    except error_type as exc:
        if exc.reason == "too_large" and exc.message.startswith("not enough memory"):
            return "E:too_large(out of memory)"    # a finding: over the address-space cap
        return f"E:{exc.reason}"
    except CaseTimeout:
        return "T"
    except Exception as exc:
        return f"X:{type(exc).__name__}:{_clean(str(exc))}"
    finally:
        signal.setitimer(SOFT_TIMER, 0)
    if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3
            and out.shape[2] == 3 and out.shape[0] > 0 and out.shape[1] > 0
            and out.flags.c_contiguous):
        return f"BAD:array {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}"
    size = kwargs.get("size")
    if size is not None and out.shape[:2] != (size, size):
        return f"BAD:shape {out.shape} for size {size}"
    cap = kwargs.get("max_pixels")
    if cap is not None and out.shape[0] * out.shape[1] > cap:
        return f"BAD:{out.shape[0]}x{out.shape[1]} over max_pixels {cap}"
    return "ok"


DECODES = ({"size": RESIZE_TO}, {"max_pixels": SMALL_MAX_PIXELS})
DECODE_LABELS = (f"load_image(data, size={RESIZE_TO})",
                 f"load_image(data, max_pixels={SMALL_MAX_PIXELS:_})")


class _StubError(Exception):
    reason, message = "corrupt", "stub"


def _stub_load_image(data: bytes, size: int | None = None, **kwargs) -> np.ndarray:
    """The decoder of `--stub-decoder` workers: the harness's self-test needs no real decoder
    (and starts in a fraction of a second without PyTorch)."""
    return np.zeros((size or 8, size or 8, 3), np.uint8)


def _decoder(stub: bool):
    if stub:
        return _stub_load_image, _StubError
    import torch

    from imagefit.data.images import load_image
    from imagefit.errors import ImageLoadError

    torch.set_num_threads(1)   # no thread pool: one decode at a time, as in a loader worker
    return load_image, ImageLoadError


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _rss_and_peak_kb() -> tuple[int, int]:
    """This process's resident memory and its high-water mark (VmRSS, VmHWM).

    Not getrusage's ru_maxrss: Linux carries that over exec from the parent's memory, so a
    worker started by a 1.5 GB pytest process would report a 1.5 GB peak from its first line.
    """
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                values[key] = int(kb)
    return values["VmRSS:"], values["VmHWM:"]


def _reset_peak() -> bool:
    """Set the high-water mark back to the current RSS (Linux >= 4.0), so that it measures the
    next case alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inject(what: str) -> None:
    """Self-test faults, so each of the harness's checks is shown to fire (tests/test_fuzz.py)."""
    if what == "raise":
        raise KeyError("injected")
    if what == "hang":                       # a Python-level loop: the soft timeout ends it
        while True:
            pass
    if what == "stuck":                      # no signal handler runs: the hard timeout ends it
        signal.pthread_sigmask(signal.SIG_BLOCK, {SOFT_TIMER_SIGNAL})
        time.sleep(3600)
    if what == "rss":                        # 300 MB resident, under the address-space cap
        np.ones((300 << 20,), np.uint8)     # touched, then freed
        return
    if what == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    raise ValueError(f"unknown injection {what!r}")


def worker(args: argparse.Namespace) -> int:
    """Decode cases start:stop:step, each twice (`DECODES`), writing one line per case.

    The decoder is imported and warmed up first; then the address space is capped (RLIMIT_AS:
    the size after warm-up plus a headroom, since importing PyTorch alone maps ~3 GB and would
    fail under a cap set before it). Each decode has a soft timeout (an interval timer of CPU
    time raising `CaseTimeout`) and the case a hard one (faulthandler ends the process when a
    decoder is stuck in C code, where no signal handler runs). `S <case>` is written before a
    case and `R <case> <outcomes> <ms> <RSS growth> <peak RSS>` after it, flushed: a worker
    killed by a signal (segfault, OOM killer) or the hard timeout leaves the case that killed
    it as the last one started, and `run_cases` charges it.
    """
    import faulthandler
    import resource

    load_image, error_type = _decoder(args.stub_decoder)
    seeds = seed_images()
    signal.signal(SOFT_TIMER_SIGNAL, _on_alarm)
    for data in seeds.values():          # warm-up: plugins, codecs and resize kernels loaded
        for kwargs in DECODES:
            decode_outcome(load_image, error_type, data, 60.0, **kwargs)
    faulthandler.enable(file=sys.stderr)   # a fatal signal prints the Python stack to stderr
    injections = dict(item.split("=", 1) for item in args.inject or ())
    baseline_rss_kb, _ = _rss_and_peak_kb()
    limit = _address_space_bytes() + (args.as_headroom_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start, stop, step = (int(x) for x in args.cases.split(":"))
    with open(args.out, "a", buffering=1) as out:
        out.write(f"READY\t{os.getpid()}\t{baseline_rss_kb}\t{limit}\n")
        for number in range(start, stop, step):
            case = make_case(number, args.seed, seeds)
            out.write(f"S\t{number}\n")
            out.flush()
            before_kb = _rss_and_peak_kb()[0] if _reset_peak() else baseline_rss_kb
            faulthandler.dump_traceback_later(args.hard_timeout, exit=True, file=sys.stderr)
            t0 = time.perf_counter()
            if str(number) in injections:
                what = injections[str(number)]
                outcome = decode_outcome(lambda data, what=what, **kw: _inject(what),
                                         error_type, case.data, args.soft_timeout)
                outcomes = [outcome] + ["ok"] * (len(DECODES) - 1)
            else:
                outcomes = [decode_outcome(load_image, error_type, case.data, args.soft_timeout,
                                           **kwargs) for kwargs in DECODES]
            elapsed_ms = (time.perf_counter() - t0) * 1000
            faulthandler.cancel_dump_traceback_later()
            peak_kb = _rss_and_peak_kb()[1]
            out.write("\t".join(["R", str(number), *outcomes, f"{elapsed_ms:.1f}",
                                 str(peak_kb - before_kb), str(peak_kb)]) + "\n")
        out.write("DONE\n")
    return 0


# --------------------------------------------------------------------------- parent

@dataclass
class Finding:
    number: int
    what: str          # an X / T / BAD outcome, a crash, a hard timeout, an RSS breach
    seed_name: str = ""
    mutation: str = ""
    size: int = 0
    detail: str = ""

    def describe(self, master_seed: int) -> str:
        text = (f"case {self.number} ({self.seed_name}, {self.mutation}, {self.size:,} bytes): "
                f"{self.what}")
        if self.detail:
            text += f"\n    {self.detail}"
        return text + f"\n    reproduce: {reproduce_command(self.number, master_seed)}"


@dataclass
class FuzzReport:
    master_seed: int
    n_cases: int
    n_run: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)      # one count per decode
    findings: list[Finding] = field(default_factory=list)
    worker_starts: int = 0
    baseline_rss_mb: float = 0.0      # largest worker RSS after import and warm-up
    peak_rss_mb: float = 0.0          # largest worker peak RSS (VmHWM)
    slowest: list[tuple[float, int]] = field(default_factory=list)   # (ms, case), top 5
    largest: list[tuple[float, int]] = field(default_factory=list)   # (RSS growth MB, case)

    @property
    def peak_growth(self) -> tuple[float, int]:
        """(MB, case): the largest growth of resident memory during one case."""
        return max(self.largest) if self.largest else (0.0, -1)

    def summary(self) -> str:
        rate = self.n_run / max(self.seconds, 1e-9)
        lines = [f"{self.n_run:,} of {self.n_cases:,} cases (master seed {self.master_seed}) in "
                 f"{self.seconds:.1f} s = {rate:.0f} cases/s, {self.worker_starts} worker "
                 f"start(s)",
                 f"peak RSS per worker {self.peak_rss_mb:.0f} MB (after import and warm-up "
                 f"{self.baseline_rss_mb:.0f} MB); largest RSS growth in one case: " + ", ".join(
                     f"{mb:.0f} MB (case {n})" for mb, n in sorted(self.largest, reverse=True)),
                 f"slowest cases ({len(DECODES)} decodes each): " + ", ".join(
                     f"{ms:.0f} ms (case {n})" for ms, n in sorted(self.slowest, reverse=True)),
                 f"outcomes of {' and '.join(DECODE_LABELS)}: " + ", ".join(
                     f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1]))]
        if self.findings:
            lines.append(f"{len(self.findings)} finding(s):")
            lines += ["  " + f.describe(self.master_seed) for f in self.findings]
        return "\n".join(lines)


def _keep_top(top: list, item: tuple, k: int = 5) -> None:
    if len(top) < k:
        heapq.heappush(top, item)
    elif item > top[0]:
        heapq.heapreplace(top, item)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _runqueue_wait_s(pid: int) -> float | None:
    """Seconds the process (its main thread) has spent runnable but waiting for a CPU, from
    /proc/PID/schedstat; None where the kernel does not say."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class _Worker:
    proc: subprocess.Popen
    shard: tuple[int, int, int]
    out: Path
    err: Path
    err_file: io.BufferedWriter
    last_size: int = 0
    last_change: float = field(default_factory=time.monotonic)
    last_wait: float | None = None     # its runqueue wait at last_change

    def idle_s(self, now: float) -> float:
        """Time since its result file last grew, less the time it spent waiting for a CPU:
        a worker that a loaded machine starves is slow, not stalled."""
        idle = now - self.last_change
        wait = _runqueue_wait_s(self.proc.pid)
        if wait is not None and self.last_wait is not None:
            idle -= max(wait - self.last_wait, 0.0)
        return idle


def run_cases(n_cases: int, *, work_dir: Path, master_seed: int = 0, workers: int = 2,
              first: int = 0, soft_timeout: float = SOFT_TIMEOUT_S,
              hard_timeout: float = HARD_TIMEOUT_S, as_headroom_mb: int = AS_HEADROOM_MB,
              rss_budget_mb: int = RSS_BUDGET_MB, stall_timeout: float = 120.0,
              startup_timeout: float = STARTUP_TIMEOUT_S,
              inject: dict[int, str] | None = None, stub_decoder: bool = False,
              max_restarts: int = 20) -> FuzzReport:
    """Run cases first .. first+n_cases-1 over `workers` worker processes; collect findings.

    A worker that dies (a signal, the hard timeout, any non-zero exit) is charged with its last
    started case and restarted after it, up to `max_restarts` times in all. One whose result
    file stops growing for `stall_timeout` seconds (counted from its READY line, less any time
    it spent waiting for a CPU) is killed and charged the same way; one that is not READY
    within `startup_timeout` (counted alike) is killed and fails the run.
    `inject` and `stub_decoder` are for the harness's self-test.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    seeds = seed_images()
    report = FuzzReport(master_seed, n_cases)
    active: dict[int, _Worker] = {}
    restarts = 0
    t0 = time.perf_counter()

    def launch(shard: tuple[int, int, int]) -> None:
        idx = report.worker_starts
        report.worker_starts += 1
        out_path, err_path = work_dir / f"worker-{idx}.tsv", work_dir / f"worker-{idx}.stderr"
        cmd = [sys.executable, str(HERE / "fuzz_runner.py"), "worker",
               "--seed", str(master_seed), "--cases", ":".join(map(str, shard)),
               "--out", str(out_path), "--soft-timeout", str(soft_timeout),
               "--hard-timeout", str(hard_timeout), "--as-headroom-mb", str(as_headroom_mb)]
        cmd += [arg for k, v in (inject or {}).items() for arg in ("--inject", f"{k}={v}")]
        cmd += ["--stub-decoder"] if stub_decoder else []
        err_file = open(err_path, "wb")
        proc = subprocess.Popen(cmd, stdout=err_file, stderr=err_file, stdin=subprocess.DEVNULL)
        active[proc.pid] = _Worker(proc, shard, out_path, err_path, err_file,
                                   last_wait=_runqueue_wait_s(proc.pid))

    def case_info(number: int) -> dict:
        case = make_case(number, master_seed, seeds)
        return {"seed_name": case.seed_name, "mutation": case.mutation, "size": len(case.data)}

    def collect(w: _Worker, exit_code: int, stalled: bool) -> None:
        nonlocal restarts
        w.err_file.close()
        started, finished = None, set()
        for line in w.out.read_text().splitlines():
            parts = line.split("\t")
            if parts[0] == "READY":
                baseline_kb = int(parts[2])
                report.baseline_rss_mb = max(report.baseline_rss_mb, baseline_kb / 1024)
                report.peak_rss_mb = max(report.peak_rss_mb, baseline_kb / 1024)
            elif parts[0] == "S":
                started = int(parts[1])
            elif parts[0] == "R":
                number, outcomes = int(parts[1]), parts[2:-3]
                ms, growth_kb, peak_kb = float(parts[-3]), int(parts[-2]), int(parts[-1])
                finished.add(number)
                report.n_run += 1
                report.outcomes.update(outcomes)
                _keep_top(report.slowest, (ms, number))
                _keep_top(report.largest, (growth_kb / 1024, number))
                for label, outcome in zip(DECODE_LABELS, outcomes):
                    if outcome == "T":
                        what = f"soft timeout (over {soft_timeout:g} s)"
                    elif "out of memory" in outcome:
                        what = f"needed over {as_headroom_mb} MB of address space ({outcome})"
                    elif outcome.startswith(("X:", "BAD:")):
                        what = outcome
                    else:
                        continue
                    report.findings.append(Finding(number, f"{label}: {what}",
                                                   **case_info(number)))
                report.peak_rss_mb = max(report.peak_rss_mb, peak_kb / 1024)
                if growth_kb / 1024 > rss_budget_mb:
                    report.findings.append(Finding(
                        number, f"resident memory grew {growth_kb / 1024:.0f} MB in this case "
                        f"(budget {rss_budget_mb} MB)", **case_info(number)))
        if exit_code == 0 and not stalled:
            return
        stderr = w.err.read_text(errors="replace")
        if started is None or started in finished:
            raise RuntimeError(f"fuzz worker failed outside any case (exit {exit_code}): "
                               f"{_clean(stderr[-800:], 800)}")
        if stalled:
            what = f"stalled: no progress for {stall_timeout:g} s (killed)"
        elif exit_code < 0:
            what = f"crash ({_signal_name(exit_code)})"
        elif "Timeout (" in stderr:               # faulthandler's dump_traceback_later
            what = f"hard timeout (stuck over {hard_timeout:g} s)"
        else:
            what = f"worker exited with {exit_code}"
        report.findings.append(Finding(started, what, detail="worker stderr: " + _clean(
            stderr[-600:], 400), **case_info(started)))
        _, stop, step = w.shard
        if started + step < stop and restarts < max_restarts:
            restarts += 1
            launch((started + step, stop, step))

    try:
        for w in range(min(workers, n_cases)):
            launch((first + w, first + n_cases, workers))
        while active:
            for pid in list(active):
                w = active[pid]
                done_pid, status = os.waitpid(pid, os.WNOHANG)
                stalled = False
                if not done_pid:
                    size = w.out.stat().st_size if w.out.exists() else 0
                    if size != w.last_size:
                        w.last_size, w.last_change = size, time.monotonic()
                        w.last_wait = _runqueue_wait_s(pid)
                    limit = stall_timeout if w.last_size else startup_timeout
                    if w.idle_s(time.monotonic()) < limit:
                        continue
                    w.proc.kill()
                    done_pid, status = os.waitpid(pid, 0)
                    stalled = True
                del active[pid]
                w.proc.returncode = os.waitstatus_to_exitcode(status)
                collect(w, w.proc.returncode, stalled)
            time.sleep(0.02)
    finally:
        for w in active.values():        # only when this function itself failed
            w.proc.kill()
            w.proc.wait()
            w.err_file.close()
    report.seconds = time.perf_counter() - t0
    report.findings.sort(key=lambda f: f.number)
    return report


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Byte-mutation fuzzing of load_image: rebuild "
                                     "or decode one case (worker: used by run_cases).")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="decode a range of cases (started by run_cases)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--cases", required=True, help="start:stop:step")
    w.add_argument("--out", required=True)
    w.add_argument("--soft-timeout", type=float, default=SOFT_TIMEOUT_S)
    w.add_argument("--hard-timeout", type=float, default=HARD_TIMEOUT_S)
    w.add_argument("--as-headroom-mb", type=int, default=AS_HEADROOM_MB)
    w.add_argument("--inject", action="append", help="CASE=raise|hang|stuck|rss|segv (self-test)")
    w.add_argument("--stub-decoder", action="store_true", help="self-test: no real decoder")
    for name in ("show", "run"):
        p = sub.add_parser(name, help="rebuild one case" + (" and decode it here, with "
                                                           "tracebacks" if name == "run" else ""))
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--case", type=int, required=True)
        p.add_argument("--write", help="write the case's bytes to this file")
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker(args)
    import hashlib
    import traceback

    seeds = seed_images()
    case = make_case(args.case, args.seed, seeds)
    print(f"case {case.number} (master seed {args.seed}): seed image {case.seed_name} "
          f"(sha256 {hashlib.sha256(seeds[case.seed_name]).hexdigest()[:12]}), mutation "
          f"{case.mutation}, {len(case.data):,} bytes (sha256 "
          f"{hashlib.sha256(case.data).hexdigest()[:12]})")
    if args.write:
        Path(args.write).write_bytes(case.data)
    if args.command == "run":
        from imagefit.data.images import load_image
        from imagefit.errors import ImageLoadError

        for label, kwargs in zip(DECODE_LABELS, DECODES):
            t0 = time.perf_counter()
            try:
                out = load_image(case.data, **kwargs)
                result = f"ok, shape {out.shape}"
            except ImageLoadError as exc:
                result = f"ImageLoadError {exc}"
            except Exception as exc:
                traceback.print_exc()
                result = f"{type(exc).__name__}: {exc}  <- a defect: only ImageLoadError may escape"
            print(f"{label}: {result} ({time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
