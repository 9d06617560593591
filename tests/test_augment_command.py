"""`imagefit augment` and its library functions: copies in class folders at the original size and
pixel range, --per-image and --balance counts, the manifest, reproducibility, resuming without
overwriting, bad files, refusals, the preview grid, and the in-process command."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, tree_digest
from imagefit.cli.main import main
from imagefit.errors import ConfigError
from imagefit.workflows.augment import augment_folder, preview_grid

COUNTS = {"cat": 14, "dog": 9, "owl": 6}


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "source", "class", "seed", "params"]
        return list(reader)


def output_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.name != "manifest.csv")


@pytest.fixture
def small(tmp_path) -> Path:
    return make_dataset(tmp_path / "small", {"cat": 4, "dog": 2})


def test_per_image_writes_copies_at_original_size_with_manifest(dataset, tmp_path):
    before = tree_digest(dataset)
    out = tmp_path / "aug"
    result = augment_folder(dataset, out, per_image=2, seed=0)

    assert tree_digest(dataset) == before
    assert (result.n_written, result.n_reused) == (58, 0)
    assert result.per_class == {"cat": 28, "dog": 18, "owl": 12}
    assert result.originals == COUNTS
    files = output_files(out)
    assert Counter(f.split("/")[0] for f in files) == {"cat": 28, "dog": 18, "owl": 12}
    for name in ("cat", "dog", "owl"):
        for source in sorted((dataset / name).iterdir()):
            ext = ".jpg" if source.suffix == ".jpg" else ".png"  # JPEG stays JPEG, else PNG
            for k in range(2):
                copy = out / name / f"{source.stem}_aug{k}{ext}"
                assert copy.is_file(), copy
                with Image.open(copy) as im, Image.open(source) as original:
                    assert im.format == ("JPEG" if ext == ".jpg" else "PNG")
                    assert im.size == original.size == (40, 30)

    rows = read_manifest(out)
    assert sorted(r["path"] for r in rows) == files
    for r in rows:
        assert r["class"] == r["path"].split("/")[0] == Path(r["source"]).parent.name
        assert Path(r["source"]).is_absolute() and Path(r["source"]).is_file()
        assert re.fullmatch(rf"{Path(r['source']).stem}_aug[01]\.(jpg|png)",
                            r["path"].split("/")[1])
        assert r["seed"] == "0"
        params = json.loads(r["params"])
        assert len(params["matrix"]) == 2 and len(params["matrix"][0]) == 3
        assert -40 <= params["keras"]["theta"] <= 40  # the keras preset's rotation range
    # Every copy of an image got its own parameters.
    assert len({r["params"] for r in rows}) == len(rows)


def test_copies_keep_the_pixel_range(tmp_path):
    # Keras' save_to_dir min-max stretches every image to 0-255; a dim image must stay dim.
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        pixels = rng.integers(100, 121, (30, 40, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(data / name / "dim.png")
    augment_folder(data, tmp_path / "aug", per_image=3, augment="light")
    for copy in (tmp_path / "aug").rglob("*.png"):
        pixels = np.asarray(Image.open(copy))
        assert pixels.shape == (30, 40, 3)
        assert 100 <= pixels.min() and pixels.max() <= 120, copy


def test_balance_tops_every_class_up_to_the_largest(dataset, tmp_path):
    out = tmp_path / "aug"
    result = augment_folder(dataset, out, balance=True, seed=3)

    assert result.per_class == {"cat": 0, "dog": 5, "owl": 8}
    assert {c: result.originals[c] + n for c, n in result.per_class.items()} == {
        "cat": 14, "dog": 14, "owl": 14}
    files = output_files(out)
    assert Counter(f.split("/")[0] for f in files) == {"dog": 5, "owl": 8}
    # Round-robin: 5 copies over 9 dog images are on 5 different images; 8 over 6 owls is
    # two each for two of them and one each for the other four.
    per_source = Counter(r["source"] for r in read_manifest(out))
    dog = sorted(n for s, n in per_source.items() if "/dog/" in s)
    owl = sorted(n for s, n in per_source.items() if "/owl/" in s)
    assert dog == [1] * 5
    assert owl == [1, 1, 1, 1, 2, 2]


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    digests = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        augment_folder(small, tmp_path / name, per_image=2, seed=seed)
        digests[name] = tree_digest(tmp_path / name)
    assert digests["a"] == digests["b"]
    assert digests["a"] != digests["c"]
    assert output_files(tmp_path / "a") == output_files(tmp_path / "c")  # same names


def test_rerun_keeps_files_extends_and_never_overwrites(small, tmp_path):
    out = tmp_path / "aug"
    augment_folder(small, out, per_image=1)
    first = {f: (out / f).read_bytes() for f in output_files(out)}

    again = augment_folder(small, out, per_image=1)
    assert (again.n_written, again.n_reused) == (0, 6)
    more = augment_folder(small, out, per_image=2)  # adds the _aug1 copies only
    assert (more.n_written, more.n_reused) == (6, 6)
    assert len(read_manifest(out)) == 12
    assert all((out / f).read_bytes() == data for f, data in first.items())

    state = tree_digest(out)
    with pytest.raises(ConfigError, match="never overwrites"):
        augment_folder(small, out, per_image=1, seed=5)
    with pytest.raises(ConfigError, match="never overwrites"):  # same seed, other settings
        augment_folder(small, out, per_image=1, augment="strong")
    assert tree_digest(out) == state


def test_bad_files_are_skipped_and_reported(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"cat": 3, "dog": 3})
    good = (data / "cat" / "cat_000.jpg").read_bytes()
    (data / "cat" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (data / "dog" / "empty.png").write_bytes(b"")
    before = tree_digest(data)

    result = augment_folder(data, tmp_path / "aug", per_image=1)
    reasons = {Path(b.path).name: b.reason for b in result.bad_files}
    assert reasons == {"broken.jpg": "truncated", "empty.png": "empty"}
    assert result.bad_summary() == "2 skipped (empty x1, truncated x1)"
    assert result.n_written == 6
    assert not any("broken" in f or "empty" in f for f in output_files(tmp_path / "aug"))
    assert tree_digest(data) == before

    assert cli(["augment", data, "--out", tmp_path / "aug2", "--per-image", 1]) == 0
    out = capsys.readouterr().out
    assert "6 images usable, 2 skipped (empty x1, truncated x1)." in out
    assert "broken.jpg: truncated" in out


def test_output_inside_data_or_foreign_folder_is_refused(small, tmp_path):
    before = tree_digest(small)
    for inside in (small, small / "aug", small / "cat" / "aug"):
        with pytest.raises(ConfigError, match="never writes into your data"):
            augment_folder(small, inside, per_image=1)
    with pytest.raises(ConfigError, match="never writes into your data"):
        preview_grid(small, small / "preview.png")
    assert tree_digest(small) == before

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no manifest.csv"):
        augment_folder(small, foreign, per_image=1)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("options, message", [
    ({"per_image": 0}, "The 'per_image' parameter must be an int >= 1. Got 0 instead."),
    ({"per_image": 2, "balance": True}, "Exactly one of"),
    ({}, "Exactly one of"),
    ({"per_image": 1, "seed": -1}, "The 'seed' parameter must be an int >= 0"),
    ({"per_image": 1, "augment": "none"}, "would write exact copies"),
    ({"per_image": 1, "augment": "wild"}, "The 'augment' parameter must be one of"),
])
def test_bad_parameters_name_the_fix(small, tmp_path, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        augment_folder(small, tmp_path / "aug", **options)
    assert not (tmp_path / "aug").exists()


def test_preview_grid_size_and_rows(dataset, tmp_path):
    path = preview_grid(dataset, tmp_path / "p.png", size=32, seed=0)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (8 * 32, 8 * 32)
        grid = np.asarray(im.convert("RGB")).astype(int)
    cells = grid.reshape(8, 32, 8, 32, 3).transpose(0, 2, 1, 3, 4)
    # Round-robin over classes: the first three rows are a cat, a dog and an owl (by colour).
    dominant = [int(np.argmax(cells[r, 0].reshape(-1, 3).mean(0))) for r in range(3)]
    assert dominant == [0, 1, 2]
    for r in range(8):  # every version differs from the original
        assert all(np.abs(cells[r, c] - cells[r, 0]).mean() > 1 for c in range(1, 8))

    small = preview_grid(dataset, tmp_path / "q.png", n_images=2, n_versions=3, size=16)
    assert Image.open(small).size == (4 * 16, 2 * 16)
    with pytest.raises(ConfigError, match=r"\.png"):
        preview_grid(dataset, tmp_path / "p.jpg")


def test_cli_writes_copies_and_preview(dataset, tmp_path, capsys):
    out, preview = tmp_path / "aug", tmp_path / "preview.png"
    assert cli(["augment", dataset, "--out", out, "--balance", "--preview", preview,
                "--seed", 1]) == 0
    text = capsys.readouterr().out
    assert "Wrote 13 augmented images" in text
    assert "cat 14 + 0 = 14, dog 9 + 5 = 14, owl 6 + 8 = 14" in text
    assert "Originals are not copied" in text
    assert len(read_manifest(out)) == 13
    assert Image.open(preview).size == (8 * 128, 8 * 128)

    assert cli(["augment", dataset, "--preview", tmp_path / "only.png", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "only.png").is_file()


@pytest.mark.parametrize("extra, message", [
    ([], "Nothing to do"),
    (["--out", "OUT"], "--out needs --per-image N or --balance"),
    (["--balance"], "need --out DIR"),
    (["--out", "OUT", "--per-image", "0"], "'per_image' parameter must be an int >= 1"),
])
def test_cli_bad_options_exit_2(small, tmp_path, capsys, extra, message):
    argv = [str(tmp_path / "aug") if a == "OUT" else a for a in extra]
    assert cli(["augment", small, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "aug").exists()


def test_cli_per_image_and_balance_are_exclusive(small, tmp_path, capsys):
    assert cli(["augment", small, "--out", tmp_path / "aug", "--per-image", 1,
                "--balance"]) == 2
    assert "not allowed with" in capsys.readouterr().err
