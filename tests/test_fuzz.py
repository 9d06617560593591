"""Fuzzing of the one decoder, `load_image` (reliability.md §4 T-mutate and T-replay, row C3).

Byte mutations of small valid images of every allowed format are decoded in worker processes
under an address-space cap and per-decode timeouts (tests/fuzz_runner.py): only ImageLoadError
may escape, no decode may hang or take more than 2 s of CPU time (CPU, not wall time: a loaded
machine must not turn a case into a finding), no case may crash its process or add more than
1 GB of resident memory. A failure lists each bad case with the command that rebuilds it.

    IMAGEFIT_FUZZ_CASES=20000 IMAGEFIT_FUZZ_SEED=1 pytest tests/test_fuzz.py   # a bigger run

(benchmarks/fuzz_load_image.py prints the same run's figures.)
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import fuzz_runner
from conftest import TEST_IMAGE_SIZE
from fuzz_runner import MUTATIONS, make_case, run_cases, seed_images
from imagefit.data.images import ALLOWED_FORMATS, IMAGE_SUFFIXES, load_image, sniff_format
from imagefit.errors import ImageLoadError

N_CASES = int(os.environ.get("IMAGEFIT_FUZZ_CASES", "5000"))
MASTER_SEED = int(os.environ.get("IMAGEFIT_FUZZ_SEED", "0"))
WORKERS = min(os.cpu_count() or 1, 4)
RESIZE = fuzz_runner.RESIZE_TO


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return seed_images()


def test_seeds_are_valid_files_of_every_allowed_format(seeds):
    formats = {name: sniff_format(data[:32]) for name, data in seeds.items()}
    assert set(formats.values()) == set(ALLOWED_FORMATS)
    for name, data in seeds.items():
        assert formats[name].lower().startswith(name.split("-")[0][:3]), name
        out = load_image(data, size=RESIZE)
        assert out.shape == (RESIZE, RESIZE, 3) and out.dtype == np.uint8, name
    # Cases are rebuilt from (master seed, number) alone: the seeds must not vary between runs.
    again = seed_images()
    assert {k: hashlib.sha256(v).digest() for k, v in again.items()} == \
        {k: hashlib.sha256(v).digest() for k, v in seeds.items()}



def test_cases_are_reproducible_and_cover_every_seed_and_mutation(seeds):
    n_pairs = len(seeds) * len(MUTATIONS)
    cases = [make_case(n, 0, seeds) for n in range(n_pairs)]
    assert {(c.seed_name, c.mutation) for c in cases} == \
        {(s, m) for s in seeds for m in MUTATIONS}
    assert [make_case(n, 0, seeds).data for n in range(40)] == [c.data for c in cases[:40]]
    other_seed = [make_case(n, 1, seeds).data for n in range(40)]
    assert sum(a != b for a, b in zip(other_seed, (c.data for c in cases))) >= 30


def test_mutations_do_what_they_say(seeds):
    by_kind: dict[str, list] = {m: [] for m in MUTATIONS}
    for n in range(len(seeds) * len(MUTATIONS) * 6):
        case = make_case(n, 3, seeds)
        by_kind[case.mutation].append((seeds[case.seed_name], case.data))

    def n_diff(a, b):
        return sum(x != y for x, y in zip(a, b))

    for seed, data in by_kind["flip"] + by_kind["bitflip"]:
        assert len(data) == len(seed) and n_diff(seed, data) <= 8
    assert sum(seed != data for seed, data in by_kind["bitflip"]) == len(by_kind["bitflip"])
    for seed, data in by_kind["truncate"]:
        assert len(data) < len(seed) and seed.startswith(data)
    for seed, data in by_kind["insert"]:
        assert 1 <= len(data) - len(seed) <= 256
    for seed, data in by_kind["delete"]:
        assert 1 <= len(seed) - len(data) <= 256
    for seed, data in by_kind["duplicate"]:
        assert 1 <= len(data) - len(seed) <= 512
    for seed, data in by_kind["header"]:
        assert len(data) == len(seed) and data[64:] == seed[64:]
    for seed, data in by_kind["magic+random"]:
        assert data[:8] == seed[:8]
    lengths = [len(data) for _, data in by_kind["random"]]
    assert max(lengths) <= fuzz_runner.MAX_RANDOM_BYTES and max(lengths) > 16 * 1024


def test_fuzz_load_image_in_limited_worker_processes(tmp_path):
    report = run_cases(N_CASES, master_seed=MASTER_SEED, workers=WORKERS, work_dir=tmp_path)
    print(report.summary())
    assert not report.findings, report.summary()
    assert report.n_run == N_CASES
    assert report.worker_starts == min(WORKERS, N_CASES)          # no worker died
    assert report.baseline_rss_mb > 0
    assert report.peak_growth[0] < fuzz_runner.RSS_BUDGET_MB
    assert sum(report.outcomes.values()) == N_CASES * len(fuzz_runner.DECODES)
    if N_CASES >= 1000:
        # The mutations neither always break nor always spare the decoders, and they reach
        # every reason a decode of bytes can give.
        assert report.outcomes["ok"] > 0.1 * N_CASES
        for reason in ("corrupt", "truncated", "unidentified", "too_large", "empty"):
            assert report.outcomes[f"E:{reason}"] > 0, reason


def test_harness_reports_every_kind_of_failure(tmp_path):
    """Faults injected into a worker (with a stub decoder, so it starts fast) are each charged
    to the right case; a worker that dies is restarted after the case that killed it.

    No fault races another limit: the soft timeout counts CPU time, which the "rss" case's
    300 MB of page faults (up to ~0.7 s of CPU and seconds of wall time on a busy VM) stays
    far below, and the hard timeout here is only a hang guard; the one fault the hard timeout
    must end ("stuck", asleep with the soft timer's signal blocked) uses no CPU, so it runs in a
    second, short-limit run of its own."""
    report = run_cases(8, work_dir=tmp_path / "a", workers=1, soft_timeout=3.0,
                       hard_timeout=600.0, rss_budget_mb=200, stub_decoder=True,
                       inject={1: "raise", 2: "hang", 4: "rss", 6: "segv"})
    found = {f.number: f.what for f in report.findings}
    assert sorted(found) == [1, 2, 4, 6], report.summary()
    assert found[1].endswith("X:KeyError:'injected'")
    assert "soft timeout" in found[2]
    assert found[4].startswith("resident memory grew 3") and "budget 200 MB" in found[4]
    assert found[6] == f"crash ({signal.SIGSEGV.name})"
    # Only the hang ran out of time (the dict above keeps one finding per case; the "rss" case
    # also has its stub's BAD:array outcome, and must not have a timeout).
    assert [f.number for f in report.findings if "timeout" in f.what] == [2], report.summary()
    assert report.n_run == 7                # every case but the one that killed its worker
    assert report.worker_starts == 2
    growth_mb, case = report.peak_growth
    assert case == 4 and 280 < growth_mb < 400
    text = report.summary()

    stuck = run_cases(3, work_dir=tmp_path / "b", workers=1, hard_timeout=2.0,
                      stub_decoder=True, inject={1: "stuck"})
    assert [(f.number, f.what) for f in stuck.findings] == \
        [(1, "hard timeout (stuck over 2 s)")], stuck.summary()
    assert stuck.n_run == 2 and stuck.worker_starts == 2
    for number, summary in [*((n, text) for n in found), (1, stuck.summary())]:
        assert f"reproduce: python tests/fuzz_runner.py run --seed 0 --case {number}" in summary


def test_a_worker_that_stops_making_progress_is_killed_and_charged(tmp_path):
    """The parent's own watchdog, for a worker whose hard timeout did not fire. Its clock starts
    at the worker's READY line (start-up is not progress on a case) and leaves out the time the
    worker waited for a CPU, so only the stuck case, asleep, can run it out."""
    report = run_cases(3, work_dir=tmp_path, workers=1, hard_timeout=60, stall_timeout=1.5,
                       stub_decoder=True, inject={1: "stuck"})
    assert [(f.number, f.what) for f in report.findings] == \
        [(1, "stalled: no progress for 1.5 s (killed)")]
    assert report.n_run == 2 and report.worker_starts == 2


def test_a_case_is_rebuilt_and_decoded_from_its_number(tmp_path, capsys, seeds):
    number = 2 * len(seeds) + 1      # a truncated progressive JPEG
    case = make_case(number, 0, seeds)
    assert (case.seed_name, case.mutation) == ("jpeg-progressive", "truncate")
    path = tmp_path / "case.bin"
    assert fuzz_runner.main(["show", "--case", str(number), "--write", str(path)]) == 0
    assert path.read_bytes() == case.data
    assert fuzz_runner.main(["run", "--case", str(number)]) == 0
    out = capsys.readouterr().out
    assert f"case {number} (master seed 0): seed image jpeg-progressive" in out
    with pytest.raises(ImageLoadError) as info:
        load_image(case.data, size=RESIZE)
    assert f"load_image(data, size={RESIZE}): ImageLoadError {info.value}" in out


# --------------------------------------------------------------------------- Hypothesis

def test_hypothesis_bytes_only_raise_image_load_error(seeds):
    """Hypothesis' own byte strings (st.binary), in this process: plain, behind a seed's
    magic number, and as edits of a seed. Its shrinking gives a minimal failing input."""
    import hypothesis  # the dev extra installs it
    from hypothesis import strategies as st
    names = sorted(seeds)

    def edited(name: str, edits: list[tuple[int, int]], cut: int | None) -> bytes:
        data = bytearray(seeds[name])
        for pos, value in edits:
            data[pos % len(data)] = value
        return bytes(data[:cut])

    inputs = st.one_of(
        st.binary(max_size=64 * 1024),
        st.builds(lambda name, tail: seeds[name][:16] + tail, st.sampled_from(names),
                  st.binary(max_size=4096)),
        st.builds(edited, st.sampled_from(names),
                  st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                           max_size=8),
                  st.none() | st.integers(0, 1 << 16)))
    seen = {"ok": 0, "error": 0}

    @hypothesis.settings(max_examples=300, derandomize=True, database=None, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(inputs)
    def check(data: bytes) -> None:
        try:
            # In-process, so a lowered pixel cap keeps a header mutated into a huge canvas
            # cheap; the worker processes above fuzz under the default cap.
            out = load_image(data, size=RESIZE, max_pixels=1_000_000)
        except ImageLoadError as exc:
            assert exc.reason in ImageLoadError.REASONS
            seen["error"] += 1
        else:
            assert out.shape == (RESIZE, RESIZE, 3) and out.dtype == np.uint8
            seen["ok"] += 1

    check()
    assert seen["ok"] > 0 and seen["error"] > 0, seen


# --------------------------------------------------------------------------- replay

def test_replay_every_file_of_the_messy_fixture(tmp_path):
    """T-replay: every file of the generated messy folder (tests/fixtures/messy.py) through
    `load_image`, from its path and from its bytes: the bad ones give their expected reason,
    the images decode, and clutter gives nothing but ImageLoadError."""
    from fixtures.messy import make_messy

    exp = make_messy(tmp_path / "messy")
    outcomes: dict[str, str] = {}
    for path in sorted(exp.root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(exp.root).as_posix()
        results = []
        for source in (path, path.read_bytes()):
            try:
                out = load_image(source, size=TEST_IMAGE_SIZE, max_pixels=exp.max_pixels)
            except ImageLoadError as exc:
                results.append(exc.reason)
            else:
                assert out.shape == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3), rel
                assert out.dtype == np.uint8, rel
                results.append("ok")
        assert results[0] == results[1], rel
        outcomes[rel] = results[0]
    assert {rel: outcomes[rel] for rel in exp.bad} == exp.bad
    assert all(outcomes[rel] == "ok" for rel in exp.odd.values())
    images = [rel for rel in outcomes
              if Path(rel).suffix.lower() in IMAGE_SUFFIXES and rel not in exp.bad
              and not any(part.startswith((".", "__MACOSX")) for part in Path(rel).parts)]
    assert len(images) >= exp.n_usable - 2     # usable, less the two linked duplicates
    assert all(outcomes[rel] == "ok" for rel in images), {r: outcomes[r] for r in images}
    # The clutter (hidden files, resource forks, notes) reaches the decoder too: no crash.
    assert len(outcomes) > len(images) + len(exp.bad)
