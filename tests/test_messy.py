"""End to end on the generated messy folder (`tests/fixtures/messy.py`): every input row A1-A16
of the reliability reference goes through the real CLI, in-process, at TEST_IMAGE_SIZE with a
probe head. One training run is shared by the tests that only read it. Expectations are exact:
which files are bad and why, how many images each class keeps, what clutter was ignored.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import TEST_IMAGE_SIZE, make_dataset, tree_digest
from fixtures.messy import (
    EXIF_STORED_SIZE,
    GIF_FRAMES,
    RAMP_SIZE,
    STRUCTURE_CASES,
    MessyExpectations,
    bomb_side,
    make_messy,
    make_structure_case,
    noise_image,
)
from imagefit.cli.main import main
from imagefit.data.audit import preflight
from imagefit.data.images import load_image
from imagefit.data.sources import scan_folder
from imagefit.estimator import load_model
from imagefit.features.extract import ImageFiles, model_key
from imagefit._fileio import default_cache_dir
from imagefit.features.store import FeatureStore
from imagefit.models.backbones import preprocessing_for, to_input
from imagefit.workflows.inspect import inspect_dataset

FAST = ["--image-size", TEST_IMAGE_SIZE, "--mode", "probe", "--epochs", 2, "--no-report"]
GHOSTSCRIPT = {"gs", "gsc", "gswin32c", "gswin64c", "gswin32", "gswin64"}


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def tree_state(root: Path) -> tuple[str, list[tuple[str, str, int]]]:
    """conftest.tree_digest plus what it leaves out: link targets and modification times."""
    extra = []
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else ""
            extra.append((os.path.relpath(path, root), target, st.st_mtime_ns))
    return tree_digest(root), sorted(extra)


def ignored_line(ignored: dict[str, int]) -> str:
    parts = ", ".join(f"{k} x{v}" for k, v in sorted(ignored.items()))
    return f"Ignored {sum(ignored.values())} non-image entries ({parts})."


def _program(args) -> str:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
    first = os.fsdecode(first)
    return Path(first.split()[0] if isinstance(args, str) else first).name.lower()


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> MessyExpectations:
    return make_messy(tmp_path_factory.mktemp("messy") / "data")


@pytest.fixture(scope="module")
def trained(messy, tmp_path_factory):
    """`imagefit train` on the messy folder, with every subprocess start recorded."""
    before = tree_state(messy.root)
    run = tmp_path_factory.mktemp("messy-run") / "run"
    started: list = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, args, *more, **kwargs):
            started.append(args)
            super().__init__(args, *more, **kwargs)

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", RecordingPopen)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(["train", messy.root, "--out", run, *FAST,
                        "--max-pixels", messy.max_pixels])
    return {"code": code, "run": run, "out": out.getvalue(), "err": err.getvalue(),
            "started": started, "before": before}


# --------------------------------------------------------------------------- train

def test_train_succeeds_and_lists_exactly_the_bad_files(trained, messy):
    assert trained["code"] == 0, trained["err"]
    rows = read_csv(trained["run"] / "bad_files.csv")
    got = {rel(r["path"], messy.root): r["reason"] for r in rows}
    assert got == messy.bad
    assert len(rows) == len(messy.bad)  # each file once
    messages = {rel(r["path"], messy.root): r["message"] for r in rows}
    assert all(messages.values())
    assert "20 bytes" in messages["dog/junk_20.png"]   # A4: tiny files say how tiny
    assert "0 bytes" in messages["dog/empty.jpg"]
    assert "EPS" in messages["猫/eps_as.png"] and "HEIF" in messages["dog/iphone.heic"]
    side = bomb_side(messy.max_pixels)
    bomb = messages["猫/bomb.png"]       # A8: sizes and limit, legible even for a low cap
    assert f"{side}x{side}" in bomb and f"{messy.max_pixels:,}" in bomb
    assert f"{side * side:,}" in bomb and "--max-pixels" in bomb
    n_bad = len(messy.bad)
    assert f"Skipped: {n_bad} files, listed in {trained['run'] / 'bad_files.csv'}" in trained["out"]


def test_eps_never_reaches_ghostscript(trained, messy):
    assert trained["code"] == 0
    assert messy.bad["猫/eps_as.png"] == "format_not_allowed"
    assert not [args for args in trained["started"] if _program(args) in GHOSTSCRIPT]


def test_scan_of_the_link_loop_is_fast_and_exact(messy, monkeypatch):
    """A11: a link loop neither hangs nor repeats. Counted, not timed: every directory listing
    the scan asks for is recorded, and each real folder is listed a bounded number of times
    (a followed loop would list the same folders again and again, up to the kernel's limit)."""
    listed: Counter = Counter()
    real_scandir = os.scandir

    def counting_scandir(path="."):
        listed[os.path.realpath(path)] += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    index = scan_folder(messy.root)
    monkeypatch.undo()
    real_dirs = {os.path.realpath(d) for d, _, _ in os.walk(messy.root)}   # links not followed
    assert set(listed) <= real_dirs, set(listed) - real_dirs
    assert max(listed.values()) <= 2, listed   # the root twice: layout detection, then the walk
    assert dict(index.report.ignored) == messy.ignored
    assert index.report.extension_mismatch == messy.extension_mismatch
    assert sorted(index.report.warnings) == sorted(messy.warnings)


def test_split_holds_exactly_the_usable_images_labelled_by_location(trained, messy):
    rows = read_csv(trained["run"] / "split.csv")
    counts = Counter(r["label"] for r in rows)
    assert dict(counts) == messy.usable
    assert len(rows) == messy.n_usable
    paths = [rel(r["path"], messy.root) for r in rows]
    assert len(set(paths)) == len(paths)
    # Each physical file once, under its real location's class (links never relabel).
    assert len({os.path.realpath(r["path"]) for r in rows}) == len(rows)
    for r, p in zip(rows, paths):
        assert r["label"] == p.split("/")[0], p
        assert not os.path.islink(r["path"]), p
        assert not any(part.startswith((".", "__")) for part in p.split("/")), p
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
    assert not set(paths) & set(messy.bad)
    assert set(messy.odd.values()) <= set(paths)
    for label in messy.classes:  # stratified: every class is trained and validated on
        assert {"train", "val"} <= {r["split"] for r in rows if r["label"] == label}
    side = {p: r["split"] for p, r in zip(paths, rows)}
    for group in messy.duplicates:  # A13: copies never straddle the split
        assert len({side[p] for p in group}) == 1, group


def test_train_reports_ignored_clutter_and_link_warnings(trained, messy):
    lines = trained["out"].splitlines()
    assert ignored_line(messy.ignored) in lines
    warned = trained["err"].splitlines()   # warnings go to stderr, info lines to stdout
    for warning in messy.warnings:
        assert f"warning: {warning}" in warned
    scanned = _scanned_counts(messy)
    found = (f"Found {sum(scanned)} images in {len(messy.classes)} classes: "
             + ", ".join(f"{c} ({n})" for c, n in zip(messy.classes, scanned)))
    assert found in lines



def test_train_writes_the_scan_summary_for_machines(trained, messy):
    summary = json.loads((trained["run"] / "scan.json").read_text(encoding="utf-8"))
    assert summary["ignored"] == messy.ignored
    assert summary["bad_files"] == dict(Counter(messy.bad.values()))
    assert sorted(summary["warnings"]) == sorted(messy.warnings)
    assert summary["extension_mismatch"] == messy.extension_mismatch

def _scanned_counts(messy: MessyExpectations) -> list[int]:
    """Per class, usable images plus the bad files the scan cannot tell from images (the ones
    only decoding rejects: truncated and too large)."""
    late = Counter(p.split("/")[0] for p, reason in messy.bad.items()
                   if reason in ("truncated", "too_large", "corrupt"))
    return [messy.usable[c] + late[c] for c in messy.classes]


def test_model_keeps_class_names_verbatim(trained, messy):
    meta = json.loads((trained["run"] / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == list(messy.classes)   # NFD, CJK, spaces: byte for byte
    assert meta["max_pixels"] == messy.max_pixels
    config = yaml.safe_load((trained["run"] / "config.yaml").read_text(encoding="utf-8"))
    assert config["resolved"]["n_train"] + config["resolved"]["n_val"] == messy.n_usable


def test_strict_stops_before_anything_is_trained_and_lists_all(messy, tmp_path, capsys):
    before = tree_state(messy.root)
    run = tmp_path / "strict"
    code = cli(["train", messy.root, "--out", run, *FAST, "--max-pixels", messy.max_pixels,
                "--strict", "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert f"--strict: {len(messy.bad)} files cannot be used; nothing was trained." in err
    listed = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(listed) == len(messy.bad)
    for path, reason in messy.bad.items():
        assert any(line.startswith(f"  {messy.root / path}: {reason} (") for line in listed), path
    assert not (run / "model").exists()
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.safetensors"))
    assert not (run / "split.csv").exists()
    assert {rel(r["path"], messy.root): r["reason"]
            for r in read_csv(run / "bad_files.csv")} == messy.bad
    assert tree_state(messy.root) == before


def test_output_inside_the_dataset_is_refused(messy, capsys):
    before = tree_state(messy.root)
    assert cli(["train", messy.root, "--out", messy.root / "cat" / "run", *FAST,
                "--quiet"]) == 2
    assert "never writes into your data" in capsys.readouterr().err
    assert tree_state(messy.root) == before


# --------------------------------------------------------------------------- inspect

def test_inspect_cli_reports_clutter_counts_and_bad_files(trained, messy, tmp_path):
    out = tmp_path / "audit.json"
    assert cli(["inspect", messy.root, "--json", out, "--no-near", "--image-size",
                TEST_IMAGE_SIZE, "--max-pixels", messy.max_pixels, "--quiet"]) == 0
    audit = json.loads(out.read_text(encoding="utf-8"))
    assert audit["ignored"] == messy.ignored
    assert audit["extension_mismatch"] == messy.extension_mismatch
    assert audit["exif_rotated"] == messy.exif_rotated
    assert audit["multi_frame"] == messy.multi_frame
    assert sorted(audit["warnings"]) == sorted(messy.warnings)
    # with the pixel cap training used, inspect refuses the same "bomb"
    assert {rel(b["path"], messy.root): b["reason"] for b in audit["bad_files"]} == messy.bad
    assert audit["classes"] == messy.usable
    assert tree_state(messy.root) == trained["before"]


def test_inspect_with_the_training_pixel_cap_matches_training_exactly(messy):
    summary = inspect_dataset(messy.root, near=False, image_size=TEST_IMAGE_SIZE,
                              max_pixels=messy.max_pixels).summary
    assert {rel(b["path"], messy.root): b["reason"] for b in summary["bad_files"]} == messy.bad
    assert summary["classes"] == messy.usable
    assert summary["n_images"] == messy.n_usable
    groups = sorted(tuple(sorted(rel(p, messy.root) for p in g)) for g in summary["duplicates"])
    assert groups == sorted(messy.duplicates)
    conflicts = sorted(tuple(sorted(rel(p, messy.root) for p in g))
                       for g in summary["label_conflicts"])
    assert conflicts == sorted(messy.label_conflicts)
    assert summary["modes"] == {"RGB": 32, "P": 2, "1": 1, "CMYK": 1, "L": 1, "RGBA": 1,
                                "I;16": 1}
    assert summary["formats"] == {"JPEG": 19, "PNG": 17, "WEBP": 1, "GIF": 1, "BMP": 1}


# --------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def predicted(trained, messy, tmp_path_factory):
    """`imagefit predict` on the whole messy folder (clutter, links and bad files included)."""
    assert trained["code"] == 0
    out = tmp_path_factory.mktemp("messy-predict") / "p.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(["predict", trained["run"], messy.root, "--out", out, "--quiet"])
    return {"code": code, "rows": read_csv(out)}


def test_predict_lists_every_image_once_at_its_real_path(predicted, messy):
    assert predicted["code"] == 0
    listed = [rel(r["path"], messy.root) for r in predicted["rows"]]
    assert len(listed) == len(set(listed))
    # A file link keeps its own row (the user asked for that path); a folder link into the
    # folder is not walked twice, and its files keep their real paths.
    expected = _usable_paths(messy) | set(messy.bad) | {"dog/x.jpg", "cat/y.jpg"}
    assert sorted(listed) == sorted(expected)


def _usable_paths(messy: MessyExpectations) -> set[str]:
    paths = set()
    for dirpath, dirs, files in os.walk(messy.root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))
                   and not os.path.islink(os.path.join(dirpath, d))]
        for name in files:
            path = os.path.join(dirpath, name)
            r = rel(path, messy.root)
            if (r.count("/") == 1 and not name.startswith(".") and not os.path.islink(path)
                    and ":" not in name and r not in messy.bad
                    and Path(name).suffix.lower() in (".jpg", ".jpeg", ".png", ".gif")):
                paths.add(r)
    assert len(paths) == messy.n_usable
    return paths


def test_predict_gives_bad_files_the_reasons_training_gave(predicted, messy):
    errors = {rel(r["path"], messy.root): r["error"] for r in predicted["rows"]}
    for path, reason in messy.bad.items():
        assert errors[path].startswith(f"{reason}: "), (path, errors[path])
    for r in predicted["rows"]:
        if rel(r["path"], messy.root) not in messy.bad:
            assert r["error"] == "", r


def test_predict_probabilities_equal_the_training_features(trained, predicted, messy):
    """predict decodes afresh; training cached its features by content. Same numbers."""
    model = load_model(trained["run"])
    split = read_csv(trained["run"] / "split.csv")
    keys = np.array([r["sha256"] for r in split])
    store = FeatureStore(default_cache_dir(), model_key(model.net_.backbone, model.preprocessing_),
                         model.net_.backbone.num_features)
    assert not store.missing(keys).any()
    expected = model.proba_from_features(store.get(keys))
    by_path = {r["path"]: r for r in predicted["rows"]}
    for row, p in zip(split, expected):
        got = by_path[row["path"]]
        probs = [float(got[f"prob_{c}"]) for c in model.classes_]
        np.testing.assert_allclose(probs, p, atol=1e-5, err_msg=row["path"])
        assert got["label"] == model.classes_[int(p.argmax())]


def _train_and_predict_decoders(trained):
    """The decode of training (settings from config.yaml) and of predict (the saved model)."""
    config = yaml.safe_load((trained["run"] / "config.yaml").read_text(encoding="utf-8"))
    train_prep = preprocessing_for(config["backbone"], config["image_size"])
    model = load_model(trained["run"])
    return ((train_prep, int(config["max_pixels"])),
            (model.preprocessing_, int(model.max_pixels)), model)


def test_odd_files_decode_identically_for_training_and_predict(trained, messy):
    (train_prep, train_cap), (pred_prep, pred_cap), model = _train_and_predict_decoders(trained)
    paths = np.array([str(messy.root / p) for p in messy.odd.values()])
    train_set = ImageFiles(paths, train_prep, train_cap)
    pred_set = ImageFiles(paths, pred_prep, pred_cap)
    store = FeatureStore(default_cache_dir(), model_key(model.net_.backbone, model.preprocessing_),
                         model.net_.backbone.num_features)
    for i, (role, path) in enumerate(messy.odd.items()):
        (a, err_a), (b, err_b) = train_set[i], pred_set[i]
        assert err_a is None and err_b is None, (role, err_a, err_b)
        assert a.shape == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), role
        x_train, x_pred = to_input(a[None], train_prep), to_input(b[None], pred_prep)
        assert np.array_equal(x_train, x_pred), role
        # The features training stored for this file came from this very decode.
        key = np.array([hashlib.sha256(Path(paths[i]).read_bytes()).hexdigest()])
        np.testing.assert_allclose(store.get(key)[0], model.embed(a[None])[0], atol=1e-5,
                                   err_msg=role)


# --------------------------------------------------------------------------- odd pixels

def _both_paths(trained, messy, role: str) -> list[np.ndarray]:
    (train_prep, train_cap), (pred_prep, pred_cap), _ = _train_and_predict_decoders(trained)
    path = np.array([str(messy.root / messy.odd[role])])
    return [ImageFiles(path, train_prep, train_cap)[0][0],
            ImageFiles(path, pred_prep, pred_cap)[0][0]]


def test_exif_rotation_applies_in_both_paths(trained, messy):
    full = load_image(messy.root / messy.odd["exif"])
    w, h = EXIF_STORED_SIZE
    assert full.shape == (w, h, 3)                      # stored 40x20 -> shown 20 wide, 40 high
    assert full[:4, -4:, 0].min() > 200 and full[:4, -4:, 1].max() < 60  # marker: top-right
    for out in _both_paths(trained, messy, "exif"):
        assert out[:3, -3:, 0].min() > 200 and out[:3, -3:, 1].max() < 60
        assert abs(int(out[:3, :3, 0].mean()) - 128) < 10     # stored corner is grey now
    raw = np.asarray(Image.open(messy.root / messy.odd["exif"]))
    assert raw.shape == (h, w, 3)                       # the file itself is unchanged
    garbage = load_image(messy.root / messy.odd["garbage_exif"])
    assert garbage.shape == (30, 40, 3)                 # A6: bad EXIF loads, unrotated


def test_16bit_ramp_keeps_its_levels(trained, messy):
    full = load_image(messy.root / messy.odd["ramp16"])
    assert full.shape == (RAMP_SIZE[1], RAMP_SIZE[0], 3)
    levels = full[0, :, 0]
    assert len(np.unique(levels)) >= 200
    assert (np.diff(levels.astype(int)) >= 0).all() and levels[0] < 3 and levels[-1] > 252
    for out in _both_paths(trained, messy, "ramp16"):
        row = out[TEST_IMAGE_SIZE // 2, :, 0].astype(int)
        assert (np.diff(row) >= 0).all() and row[-1] - row[0] > 200
        assert len(np.unique(row)) >= TEST_IMAGE_SIZE - 2


def test_gif_gives_the_first_frame(trained, messy):
    for out in _both_paths(trained, messy, "gif"):
        assert (out == np.array(GIF_FRAMES[0], np.uint8)).all()


def test_transparency_is_composited_over_white(trained, messy):
    rgba = load_image(messy.root / messy.odd["rgba"])
    assert (rgba[:, :20] == 255).all()                  # transparent half: background, exactly
    assert not (rgba[:, 20:] == 255).all()
    palette = load_image(messy.root / messy.odd["palette"])
    assert (palette[:10] == 255).all()
    assert (palette[10:] == np.array([40, 200, 60], np.uint8)).all()
    for role in ("rgba", "palette"):
        a, b = _both_paths(trained, messy, role)
        assert np.array_equal(a, b)


def test_cmyk_is_close_to_its_rgb_source(messy):
    got = load_image(messy.root / messy.odd["cmyk"]).astype(float)
    source = np.asarray(noise_image((220, 60, 40), 7), float)
    assert got.shape == source.shape
    assert np.abs(got - source).mean() < 6


# --------------------------------------------------------------------------- user data

def test_input_tree_is_untouched_by_train_inspect_and_predict(trained, predicted, messy):
    assert cli(["inspect", messy.root, "--no-near", "--image-size", TEST_IMAGE_SIZE,
                "--quiet"]) == 0
    assert tree_state(messy.root) == trained["before"]


# --------------------------------------------------------------------------- structure

@pytest.mark.parametrize("case", STRUCTURE_CASES)
def test_structure_cases(case, tmp_path, capsys):
    spec = make_structure_case(tmp_path / "data", case)
    before = tree_state(spec.root)
    run = tmp_path / "run"
    if spec.error is not None:
        code = cli(["train", spec.root, "--out", run, *FAST, "--quiet"])
        err = capsys.readouterr().err
        assert code == 1, err
        if spec.error_lines:
            lines = err.rstrip("\n").split("\n")
            assert lines[0] == f"error: {spec.error}"
            assert len(lines) == 1 + len(spec.error_lines)
            for line, start in zip(lines[1:], spec.error_lines):
                assert line.startswith(start), line
        else:
            assert err == f"error: {spec.error}\n"
        assert not (run / "model").exists()
    else:
        index = scan_folder(spec.root)
        checked = preflight(index, image_size=TEST_IMAGE_SIZE).index
        assert dict(zip(checked.classes, checked.counts().tolist())) == spec.counts
        assert spec.warning in checked.report.warnings
    assert tree_state(spec.root) == before


def test_links_inside_the_dataset_never_move_images_between_classes_or_splits(tmp_path):
    """A11 with a train/ + val/ layout: a link from train into val (leakage), a link back to
    the dataset folder (it holds val/ and an unused test/) and a class-level link to another
    class are not followed; every file counts once, where it really is."""
    root = tmp_path / "data"
    for part, n in (("train", 3), ("val", 2), ("test", 1)):
        for c, colour in (("cat", (220, 60, 40)), ("dog", (40, 200, 60))):
            for i in range(n):
                path = root / part / c / f"{c}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise_image(colour, 7000 + 10 * i + n).save(path)
    os.symlink(os.path.join("..", "..", "val", "cat"), root / "train" / "cat" / "from_val")
    os.symlink(os.path.join("..", ".."), root / "train" / "dog" / "loop")
    os.symlink("cat", root / "train" / "kitty")
    index = scan_folder(root)
    assert index.classes == ("cat", "dog")
    placed = sorted((rel(p, root), s) for p, s in zip(index.paths, index.subsets))
    assert placed == sorted([(f"{s}/{c}/{c}_{i}.png", s) for s, n in (("train", 3), ("val", 2))
                             for c in ("cat", "dog") for i in range(n)])
    assert index.report.ignored["folder link cycle or repeat"] == 3
    assert (f"{root}/train/kitty is a link to a folder already indexed under class 'cat'; it "
            f"is not followed (its images count once, as 'cat').") in index.report.warnings


def test_file_corrupted_after_preflight_is_skipped_at_run_time(tmp_path, monkeypatch):
    """A1 regression: the pre-flight passed, then a file broke before its features were
    computed. The run still completes and the file is listed with its reason."""
    import imagefit.workflows.train as workflow

    root = tmp_path / "data"
    for c, colour in (("cat", (220, 60, 40)), ("dog", (40, 200, 60))):
        for i in range(4):
            path = root / c / f"{c}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise_image(colour, 8100 + 10 * i + len(c)).save(path, quality=90)
    victim = root / "dog" / "dog_2.jpg"
    real_preflight = workflow._preflight

    def preflight_then_corrupt(*args, **kwargs):
        result = real_preflight(*args, **kwargs)
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        return result

    monkeypatch.setattr(workflow, "_preflight", preflight_then_corrupt)
    run = tmp_path / "run"
    assert cli(["train", root, "--out", run, *FAST, "--quiet"]) == 0
    rows = read_csv(run / "bad_files.csv")
    assert [(rel(r["path"], root), r["reason"]) for r in rows] == [("dog/dog_2.jpg", "truncated")]
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["resolved"]["n_train"] + config["resolved"]["n_val"] == 7
    assert (run / "model" / "model.json").is_file()


_FAULT_ON: dict = {}  # the file that breaks its pre-flight process, and how


def _check_or_fail(job):
    """The pre-flight's checker, except that one file kills its process (as a segfault in a
    C decoder would) or never finishes (as a decoder loop would).

    Only that file runs under the lowered hang watchdog: every other file's watchdog is set
    back to the real HANG_SECONDS, so a good file that a loaded machine makes slow (a second
    is nothing then) is never taken for a hung one."""
    import faulthandler
    import signal

    if job[0] == _FAULT_ON.get("path"):
        if _FAULT_ON["fault"] == "crash":
            # The worker inherited pytest's fault handler, which would print "Fatal Python
            # error: Segmentation fault" and pytest's stack into the session's output: a crash
            # this test causes on purpose must not read as the test runner crashing.
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(600)   # past the watchdog; were it waited out, the file would check as good
    elif _FAULT_ON["audit"]._DEVNULL is not None:   # in a pre-flight worker, under its watchdog
        faulthandler.dump_traceback_later(_FAULT_ON["hang_seconds"], exit=True,
                                          file=_FAULT_ON["audit"]._DEVNULL)
    return _FAULT_ON["real"](job)


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_file_that_crashes_or_hangs_its_decoder_is_listed_and_the_rest_checked(
        tmp_path, monkeypatch, fault):
    """The patched checker reaches the forked pre-flight workers; a hang is cut after
    HANG_SECONDS (lowered here to 1 s for the victim; see `_check_or_fail`). Not timed: had
    the watchdog not cut the hang, the victim's sleep would end and it would check as good."""
    from imagefit.data import audit
    from imagefit.data.sources import scan_folder

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("needs forked pre-flight workers")
    data = make_dataset(tmp_path / "data", {"cat": 150, "dog": 150})
    victim = sorted((data / "dog").iterdir())[40]
    monkeypatch.setitem(_FAULT_ON, "path", str(victim))
    monkeypatch.setitem(_FAULT_ON, "fault", fault)
    monkeypatch.setitem(_FAULT_ON, "real", audit._check_file)
    monkeypatch.setitem(_FAULT_ON, "audit", audit)
    monkeypatch.setitem(_FAULT_ON, "hang_seconds", audit.HANG_SECONDS)
    monkeypatch.setattr(audit, "_check_file", _check_or_fail)
    monkeypatch.setattr(audit, "HANG_SECONDS", 1.0)
    handed = []  # what a caller taking the pixels gets: each good file once, none twice
    result = audit.preflight(scan_folder(data), image_size=TEST_IMAGE_SIZE, workers=2,
                             on_decoded=lambda key, image: handed.append(key))
    assert [(b.path, b.reason) for b in result.bad_files] == [(str(victim), "corrupt")]
    assert "crashed or hung" in result.bad_files[0].message
    assert len(result.index) == 299
    assert sorted(handed) == sorted(result.index.sha256.tolist())
