"""Every dataset shape (data/sources.py, data/arrays.py): labels in file names, folder depths,
tables with chosen columns, fixed splits, groups that never straddle the split, and arrays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import COLOURS, TEST_IMAGE_SIZE, make_image
from imagefit import ImageClassifier, SourceOptions, from_table, open_dataset
from imagefit.cli.main import main
from imagefit.data.arrays import check_image_array, from_arrays, label_names
from imagefit.data.index import ImageIndex, assign_validation
from imagefit.errors import ConfigError, DatasetError
from imagefit.evaluation.issues import stratified_fold_ids
from imagefit.metrics import classification_metrics

SIZE = ["--image-size", str(TEST_IMAGE_SIZE)]
FAST = [*SIZE, "--mode", "probe", "--epochs", "15", "--no-report", "--quiet"]


def cli(args) -> int:
    return main([str(a) for a in args])


def names(index: ImageIndex) -> dict[str, str]:
    return {Path(p).name: label for p, label in zip(index.paths, index.label_names())}


@pytest.fixture
def kaggle(tmp_path) -> Path:
    """Dogs vs Cats: one flat folder, the label in the file name, plus strays."""
    root = tmp_path / "train"
    for name in ("cat", "dog"):
        for i in range(8):
            make_image(root / f"{name}.{i}.jpg", COLOURS[name], seed=i + 50 * (name == "dog"))
    make_image(root / "unknown_1.png", COLOURS["owl"], seed=3)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    """An ImageNet-style hierarchy, three levels deep."""
    root = tmp_path / "tree"
    for path, colour in (("animals/domestic/cat", "cat"), ("animals/domestic/dog", "dog"),
                         ("birds/wild/owl", "owl")):
        for i in range(6):
            make_image(root / path / f"{colour}{i}.png", COLOURS[colour], seed=i + len(path))
    return root


def write_csv(path: Path, rows: list[list[str]], **kwargs) -> Path:
    with open(path, "w", newline="", encoding=kwargs.pop("encoding", "utf-8")) as f:
        csv.writer(f, **kwargs).writerows(rows)
    return path


@pytest.fixture
def scans(tmp_path) -> Path:
    """A CSV with its own column names: file (no extension), diagnosis, patient, fold, notes;
    two images per patient, the last patients marked test."""
    base = tmp_path / "scans"
    rows = [["file", "diagnosis", "patient", "fold", "notes"]]
    for i in range(36):
        label = ("cat", "dog", "owl")[(i // 2) % 3]
        make_image(base / "img" / f"s{i:03d}.png", COLOURS[label], seed=200 + i)
        rows.append([f"img/s{i:03d}", label, f"P{i // 2:02d}", "test" if i >= 30 else "train",
                     "scanned, twice"])
    return write_csv(base / "scans.csv", rows)


# --------------------------------------------------------------------------- file names, depth

def test_labels_from_file_names_list_the_strays(kaggle):
    index = open_dataset(kaggle, SourceOptions(label_regex=r"^(cat|dog)\."))
    assert index.classes == ("cat", "dog") and index.counts().tolist() == [8, 8]
    assert names(index)["dog.3.jpg"] == "dog"
    assert [(Path(b.path).name, b.reason) for b in index.report.bad_files] == \
        [("unknown_1.png", "no_label")]
    assert any("1 file names do not match" in w and "16 matched" in w
               for w in index.report.warnings)


def test_no_matching_file_name_is_an_error_with_examples(kaggle):
    with pytest.raises(DatasetError, match=r"No file name matches .*cat\.0\.jpg"):
        open_dataset(kaggle, SourceOptions(label_regex=r"^(horse)_"))
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        SourceOptions(label_regex="(cat")


def test_label_depth_levels_and_leaf(tree):
    depth = {d: open_dataset(tree, SourceOptions(label_depth=d)).classes for d in (1, 2, "leaf")}
    assert depth[1] == ("animals", "birds")
    assert depth[2] == ("animals/domestic", "birds/wild")
    assert depth["leaf"] == ("cat", "dog", "owl")
    make_image(tree / "animals" / "stray.png", COLOURS["cat"], seed=9)  # above depth 2
    index = open_dataset(tree, SourceOptions(label_depth=2))
    assert any("1 images are not at least 2 folders deep" in w for w in index.report.warnings)
    with pytest.raises(ConfigError, match="'label_depth' parameter"):
        SourceOptions(label_depth=0)
    with pytest.raises(DatasetError, match="No image is at least 5 folders deep"):
        open_dataset(tree, SourceOptions(label_depth=5))
    for one, other in (({"label_regex": "x"}, {"label_depth": 1}),
                       ({"label_regex": "x"}, {"label_col": "c"}),
                       ({"group_regex": "x"}, {"group_col": "g"})):
        with pytest.raises(ConfigError, match="Give either"):
            SourceOptions(**one, **other)


def test_a_train_val_tree_keeps_its_split_under_depth_and_regex(tmp_path):
    for part, n in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            for i in range(n):
                make_image(tmp_path / "t" / part / "animals" / label / f"{label}.{i}.png",
                           COLOURS[label], seed=i + 10 * (part == "val"))
    for options in (SourceOptions(label_depth="leaf"), SourceOptions(label_regex=r"^(\w+)\.")):
        index = open_dataset(tmp_path / "t", options)
        assert index.classes == ("cat", "dog")
        train, val = index.split()
        assert len(train) == 12 and len(val) == 4
        assert all("/val/" in p for p in val.paths.tolist())


def test_two_leaves_with_one_name_are_an_error_that_suggests_a_depth(tree):
    make_image(tree / "birds" / "wild" / "cat" / "x.png", COLOURS["cat"], seed=1)
    with pytest.raises(DatasetError, match=r"'cat' in animals/domestic/cat, birds/wild/cat.*"
                                           r"--label-depth 3"):
        open_dataset(tree, SourceOptions(label_depth="leaf"))


def test_group_regex_keeps_each_patient_on_one_side(tmp_path):
    for p in range(12):
        for k in range(3):
            label = ("cat", "dog")[p % 2]
            make_image(tmp_path / "d" / label / f"patient{p:02d}_{k}.png", COLOURS[label],
                       seed=p * 10 + k)
    make_image(tmp_path / "d" / "cat" / "loose.png", COLOURS["cat"], seed=999)
    index = open_dataset(tmp_path / "d", SourceOptions(group_regex=r"^(patient\d+)_"))
    assert "patient03" in index.groups.tolist()
    assert any("1 file names do not match --group-regex" in w for w in index.report.warnings)
    train, val = index.split(0.3, seed=0)
    assert not set(train.groups.tolist()) & set(val.groups.tolist())
    assert any(w.startswith("Grouped split") for w in index.report.warnings)


# --------------------------------------------------------------------------- tables

def test_table_columns_are_recognised_and_said(tmp_path, scans):
    base = scans.parent
    write_csv(base / "a.csv", [["Filename", "Category"], ["img/s000.png", "cat"],
                               ["img/s002.png", "dog"]])
    index = from_table(base / "a.csv", min_classes=2)
    assert index.classes == ("cat", "dog")
    assert any("'Filename'" in n and "path" in n for n in index.report.notes)
    write_csv(base / "b.csv", [["path", "file", "label"], ["img/s000.png", "x", "cat"]])
    with pytest.raises(DatasetError, match=r"several possible path columns \['path', 'file'\]"):
        from_table(base / "b.csv")
    with pytest.raises(DatasetError, match=r"no label column .*columns are \['file', "
                                           r"'diagnosis', 'patient', 'fold', 'notes'\]"):
        from_table(scans)
    with pytest.raises(DatasetError, match=r"no column 'subject' \(--group-col\)"):
        from_table(scans, label_col="diagnosis", group_col="subject")


def test_table_bad_rows_are_bad_files_never_a_crash(tmp_path):
    base = tmp_path / "t"
    for name, label in (("a", "cat"), ("b", "dog"), ("c", "cat"), ("d, e", "dog")):
        make_image(base / f"{name}.png", COLOURS[label], seed=ord(name[0]))
    make_image(base / "twin.png", COLOURS["cat"], seed=5)
    make_image(base / "twin.jpg", COLOURS["cat"], seed=6)
    rows = [["path", "label"], ["a.png", "cat"], ["a.png", "cat"],   # a duplicate row
            ["b", "dog"],                                            # no extension: b.png
            ["c.png", "cat"], ["c.png", "dog"],                      # conflicting labels
            ["d, e.png", "dog"],                                     # a quoted comma
            ["gone.png", "cat"], ["twin", "cat"], ["", "dog"], ["a.png", ""]]
    table = write_csv(base / "t.csv", rows)
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())          # a BOM, as Excel writes
    index = from_table(table)
    assert names(index) == {"a.png": "cat", "b.png": "dog", "d, e.png": "dog"}
    reasons = {Path(b.path).name: b.reason for b in index.report.bad_files}
    assert reasons["gone.png"] == "missing" and reasons["c.png"] == "conflicting_labels"
    assert reasons["twin"] == "ambiguous" and "t.csv:10" in reasons
    assert any("1 rows repeat an earlier one" in w for w in index.report.warnings)


def test_tables_from_other_tools(tmp_path):
    pd = pytest.importorskip("pandas")
    make_image(tmp_path / "img" / "a.png", COLOURS["cat"], seed=1)
    make_image(tmp_path / "img" / "b.png", COLOURS["dog"], seed=2)
    make_image(tmp_path / "img" / "c.png", COLOURS["dog"], seed=3)
    frame = pd.DataFrame({"path": ["img/a.png", "img/b.png", "img\\c.png"],  # Windows
                          "label": [0, 1, 1], "group": [7, None, 7]})
    index = from_table(frame, root=tmp_path, group_col="group")
    assert index.classes == ("0", "1") and len(index) == 3   # not '0.0', '1.0'
    assert index.groups[0] == index.groups[2] == "7"
    with pytest.raises(DatasetError, match=r"names \['label'\] more than once"):
        from_table(pd.concat([frame, frame[["label"]]], axis=1), root=tmp_path)
    long_name = pd.DataFrame({"path": ["x" * 5000, "img/a.png", "img/b.png"],
                              "label": ["cat", "cat", "dog"]})
    index = from_table(long_name, root=tmp_path)             # a cell of bytes, say
    assert [b.reason for b in index.report.bad_files] == ["io_error"] and len(index) == 2
    with pytest.raises(DatasetError, match=r"None of the files .* exists: 3 are missing .*"
                                           r"--root"):
        from_table(frame, root=tmp_path / "img")


def test_table_errors_name_the_problem(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("path,label\ncaf\xe9.png,cat\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        from_table(tmp_path / "latin1.csv")
    (tmp_path / "long.csv").write_text("path,label\na.png,cat,extra\n")
    with pytest.raises(DatasetError, match="line 2 has 3 fields, the header has 2"):
        from_table(tmp_path / "long.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        from_table(tmp_path / "empty.csv")
    with pytest.raises(ConfigError, match="apply to tables"):
        open_dataset(tmp_path, SourceOptions(path_col="file"))


def test_root_relative_and_absolute_paths(tmp_path):
    images = tmp_path / "images"
    make_image(images / "a.png", COLOURS["cat"], seed=1)
    make_image(images / "b.png", COLOURS["dog"], seed=2)
    elsewhere = tmp_path / "tables"
    elsewhere.mkdir()
    table = write_csv(elsewhere / "t.csv", [["path", "label"], ["a.png", "cat"],
                                            [str(images / "b.png"), "dog"]])
    index = from_table(table, root=images)
    assert [Path(p) for p in index.paths] == [images / "a.png", images / "b.png"]
    assert not from_table(table, check_files=False, min_classes=1).report.bad_files
    with pytest.raises(DatasetError, match="--root"):
        from_table(table, root=tmp_path / "nope")


def test_tsv_parquet_and_dataframe_give_the_same_index(tmp_path, scans):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.read_csv(scans)
    frame.to_csv(scans.with_suffix(".tsv"), sep="\t", index=False)
    frame.to_parquet(scans.with_suffix(".parquet"))
    options = dict(label_col="diagnosis", group_col="patient", split_col="fold")
    reference = from_table(scans, **options)
    for table in (scans.with_suffix(".tsv"), scans.with_suffix(".parquet"), frame):
        other = from_table(table, root=scans.parent, **options)
        assert other.paths.tolist() == reference.paths.tolist()
        assert other.labels.tolist() == reference.labels.tolist()
        assert other.groups.tolist() == reference.groups.tolist()
        assert other.subsets.tolist() == reference.subsets.tolist()


def test_split_column_is_honoured_and_test_rows_never_train(tmp_path, scans):
    index = from_table(scans, label_col="diagnosis", split_col="fold")
    train, val = index.with_hashes().split(0.2, seed=0)
    test = index.test_part()
    assert len(test) == 6 and len(train) + len(val) == 30
    assert not set(test.paths.tolist()) & set(train.paths.tolist() + val.paths.tolist())
    rows = [["path", "label", "split"]] + [[f"img/s{i:03d}.png", "cat", s] for i, s in
                                           ((0, "Train"), (1, "VALID"), (2, "holdout"))]
    with pytest.raises(DatasetError, match=r"line 4: split value 'holdout' is not one of"):
        from_table(write_csv(scans.parent / "s.csv", rows), min_classes=1)
    fixed = from_table(write_csv(scans.parent / "s2.csv", rows[:3]), min_classes=1)
    assert fixed.subsets.tolist() == ["train", "val"]
    all_test = [[r[0], r[1], "test"] for r in list(csv.reader(open(scans)))[1:]]
    with pytest.raises(DatasetError, match="marks every row 'test'"):
        from_table(write_csv(scans.parent / "t.csv", [["file", "label", "split"]] + all_test)
                   ).split()
    owl_test = [[p, label, "test" if label == "owl" else "train"] for p, label, _ in all_test]
    with pytest.raises(DatasetError, match=r"\['owl'\] have only test rows"):
        from_table(write_csv(scans.parent / "o.csv", [["file", "label", "split"]] + owl_test)
                   ).split()


def test_empty_group_cells_become_groups_of_their_own(tmp_path, scans):
    rows = list(csv.reader(open(scans)))
    rows[1][2] = rows[2][2] = ""
    index = from_table(write_csv(scans.parent / "g.csv", rows), label_col="diagnosis",
                       group_col="patient")
    assert any("2 rows have an empty 'patient' (lines 2, 3)" in w
               for w in index.report.warnings)
    assert len(set(index.groups[:2].tolist())) == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2)), min_size=2, max_size=80),
       st.floats(0.1, 0.5), st.integers(0, 5))
def test_no_group_is_ever_on_both_sides(rows, fraction, seed):
    groups = np.array([f"g{g}" for g, _ in rows])
    labels = np.array([c for _, c in rows], np.int64)
    hashes = np.array([f"h{i % 7}" for i in range(len(rows))])  # some shared bytes too
    is_val = assign_validation(hashes, labels, fraction, seed, groups=groups)
    for key in (groups, hashes):
        for value in np.unique(key):
            assert len(set(is_val[key == value].tolist())) == 1
    folds = stratified_fold_ids(labels, 3, seed, groups=groups)
    for value in np.unique(groups):
        assert len(set(folds[groups == value].tolist())) == 1


def test_a_grouped_split_says_how_far_class_shares_moved():
    paths = [f"{i}.png" for i in range(20)]
    index = ImageIndex.from_paths(paths, ["cat"] * 10 + ["dog"] * 10)
    index = ImageIndex(index.paths, index.labels, index.classes,
                       sha256=np.array([f"h{i}" for i in range(20)]),
                       groups=np.array(["big"] * 8 + ["a", "b"] + [f"d{i}" for i in range(10)]))
    train, val = index.split(0.2, seed=0)
    assert not set(train.groups.tolist()) & set(val.groups.tolist())
    line = next(w for w in index.report.warnings if w.startswith("Grouped split"))
    overall = len(val) / 20
    moved = max(abs(v / 10 - overall) for v in val.counts()) * 100  # 10 images per class
    assert moved > 0 and f"moved by up to {moved:.1f} points" in line


# --------------------------------------------------------------------------- arrays

def coloured_arrays(n: int, seed: int, size=(24, 20)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    base = np.array([COLOURS[c] for c in ("cat", "dog", "owl")], float)[y]
    x = np.clip(base[:, None, None, :] + rng.normal(0, 25, (n, *size, 3)), 0, 255)
    return x.astype(np.uint8), y


def test_image_arrays_are_checked_with_a_hint():
    with pytest.raises(ConfigError, match=r"uint8 .* Got dtype float32.*\* 255"):
        check_image_array(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ConfigError, match=r"shape \(N, H, W\) or \(N, H, W, C\)"):
        check_image_array(np.zeros((2, 8, 8, 2), np.uint8))
    assert check_image_array(np.zeros((2, 8, 8), np.uint8)).shape == (2, 8, 8, 1)
    assert label_names(np.array([[10], [2], [10]]), 3)[1] == ("2", "10")  # numeric order
    with pytest.raises(ConfigError, match="one label per image"):
        label_names([1, 2], 3)
    with pytest.raises(ConfigError, match=r"one H x W x C image.*x\[None\]"):
        check_image_array(np.zeros((32, 32, 3), np.uint8))


def test_arrays_are_stored_once_by_content(tmp_path):
    x, y = coloured_arrays(6, 0)
    first = from_arrays(x, y, folder=tmp_path)
    again = from_arrays(x[::-1], y[::-1], folder=tmp_path)
    assert sorted(first.paths.tolist()) == sorted(again.paths.tolist())
    assert len(list((tmp_path / "arrays").rglob("*.png"))) == 6
    from imagefit import load_image
    assert np.array_equal(load_image(first.paths[2]), x[2])
    twice = from_arrays(np.concatenate([x, x[:2], x[3:4]]), np.concatenate([y, y[:2], [9]]),
                        folder=tmp_path)               # x[3] also labelled 9: a conflict
    assert len(twice) == 5 and [b.reason for b in twice.report.bad_files] == \
        ["conflicting_labels"]
    assert any("2 images repeat an earlier one" in w for w in twice.report.warnings)


def test_fit_and_predict_on_arrays(tmp_path):
    x, y = coloured_arrays(60, 0)
    x_test, y_test = coloured_arrays(30, 1)
    clf = ImageClassifier(mode="probe", image_size=TEST_IMAGE_SIZE, epochs=30,
                          cache_dir=str(tmp_path), verbose=False).fit(x, y)
    assert clf.classes_ == ("0", "1", "2")
    assert clf.predict_proba(x_test[..., :1].repeat(3, -1)).shape == (30, 3)
    assert clf.score(x_test, y_test) > 0.9
    gray = from_arrays(x_test[..., 0], folder=tmp_path)  # (N, H, W) works too
    assert len(clf.predict(gray)) == 30


def test_npz_and_svhn_mat_train_with_one_command(tmp_path, capsys):
    x, y = coloured_arrays(45, 0)
    x_test, y_test = coloured_arrays(15, 1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    np.savez(tmp_path / "capital.npz", X_train=x, Y_train=y, X_test=x_test, Y_test=y_test)
    capital = open_dataset(tmp_path / "capital.npz", cache_dir=tmp_path / "cache")
    assert len(capital.test_part()) == 15 and len(capital) == 60
    assert cli(["train", tmp_path / "d.npz", "--out", tmp_path / "run", *FAST]) == 0
    metrics = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    assert metrics["n"] == 15 and metrics["accuracy"] > 0.8
    assert cli(["predict", tmp_path / "run", tmp_path / "d.npz", "--out", tmp_path / "p.csv",
                "--quiet"]) == 0
    with open(tmp_path / "p.csv") as f:
        preds = list(csv.DictReader(f))
    assert [(p["array"], p["row"]) for p in preds[44:46]] == [("x", "44"), ("x_test", "0")]
    assert len(preds) == 60
    assert np.mean([p["label"] == str(t) for p, t in zip(preds, np.concatenate([y, y_test]))]) > 0.8
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "svhn.mat", {"X": np.moveaxis(x, 0, -1), "y": (y + 1)[:, None]})
    index = open_dataset(tmp_path / "svhn.mat", cache_dir=tmp_path / "cache")
    assert index.classes == ("1", "2", "3") and len(index) == 45


def test_array_files_that_cannot_be_read_safely_are_refused(tmp_path, capsys):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    assert cli(["inspect", tmp_path / "obj.npz", "--no-near"]) == 1
    assert "need unpickling" in capsys.readouterr().err
    (tmp_path / "text.npz").write_text("x,y\n")
    with pytest.raises(DatasetError, match="not a zip archive"):
        open_dataset(tmp_path / "text.npz")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
    (tmp_path / "v73.mat").write_bytes(header.ljust(116) + b"\0" * 8 + b"\0\2IM" + b"\0" * 64)
    pytest.importorskip("scipy.io")
    assert cli(["inspect", tmp_path / "v73.mat", "--no-near"]) == 1
    assert "MATLAB v7.3 (HDF5)" in capsys.readouterr().err
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"no array named y or y_train"):
        open_dataset(tmp_path / "nolabels.npz")


# --------------------------------------------------------------------------- hierarchy

def test_accuracy_at_each_level_of_a_class_path():
    classes = ["animals/domestic/cat", "animals/domestic/dog", "birds/wild/owl"]
    proba = np.eye(3)[[1, 0, 0]]                 # cat->dog, dog->cat, owl->cat
    m = classification_metrics(np.array([0, 1, 2]), proba, classes)
    assert m["accuracy"] == 0.0
    assert m["hierarchy_accuracy"] == {"level_1": pytest.approx(2 / 3),
                                       "level_2": pytest.approx(2 / 3)}
    assert "hierarchy_accuracy" not in classification_metrics(np.array([0]), proba[:1],
                                                              ["a", "b", "c"])


# --------------------------------------------------------------------------- end to end

def test_a_csv_with_its_own_column_names_and_a_patient_column(tmp_path, scans, capsys):
    run = tmp_path / "run"
    table_options = ["--path-col", "file", "--label-col", "diagnosis", "--group-col",
                     "patient", "--split-col", "fold"]
    assert cli(["train", scans, "--out", tmp_path / "strict", *table_options, "--strict",
                *FAST]) == 0                          # every row's file is there
    rows = list(csv.reader(open(scans))) + [["img/gone", "cat", "P99", "train", ""]]
    missing = write_csv(scans.parent / "missing.csv", rows)
    assert cli(["train", missing, "--out", tmp_path / "s2", *table_options, "--strict",
                *FAST]) == 3
    assert "missing" in capsys.readouterr().err
    fast = [a for a in FAST if a != "--no-report"]   # the report too: groups in its folds
    assert cli(["train", scans, "--out", run, *table_options, *fast]) == 0
    assert (run / "report" / "index.html").is_file()
    with open(run / "split.csv") as f:
        split = list(csv.DictReader(f))
    sides: dict[str, set] = {}
    for row in split:
        sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {r["split"] for r in split} == {"train", "val", "test"}
    assert json.loads((run / "test" / "metrics.json").read_text())["n"] == 6
    capsys.readouterr()
    assert cli(["evaluate", run, scans, *table_options[:4], "--split-col", "fold"]) == 0
    assert "rows the split column marks 'test'" in capsys.readouterr().out
    out = tmp_path / "preds.csv"
    assert cli(["predict", run, scans, "--path-col", "file", "--out", out, "--quiet"]) == 0
    with open(out) as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 36 and preds[0]["notes"] == "scanned, twice"
    assert [p["file"] for p in preds] == [f"img/s{i:03d}" for i in range(36)]
    assert all(p["label"] == p["diagnosis"] for p in preds[:30])


def test_kaggle_folder_and_imagenet_tree_train_with_one_command(tmp_path, kaggle, tree,
                                                                capsys):
    assert cli(["train", kaggle, "--label-regex", r"^(cat|dog)\.", "--out", tmp_path / "k",
                *FAST]) == 0
    with open(tmp_path / "k" / "bad_files.csv") as f:
        assert [r["reason"] for r in csv.DictReader(f)] == ["no_label"]
    assert cli(["train", tree, "--label-depth", "3", "--out", tmp_path / "t", *FAST]) == 0
    assert cli(["evaluate", tmp_path / "t", tree, "--label-depth", "3", "--json",
                tmp_path / "m.json", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["hierarchy_accuracy"]) == {"level_1", "level_2"}


def test_inspect_reports_groups_and_a_class_with_a_single_group(tmp_path, scans, capsys):
    rows = list(csv.reader(open(scans)))
    for row in rows[1:]:
        if row[1] == "owl":
            row[2] = "P_owl"                    # every owl from one patient
    table = write_csv(scans.parent / "one.csv", rows)
    assert cli(["inspect", table, "--label-col", "diagnosis", "--group-col", "patient",
                "--no-near", "--json", tmp_path / "a.json"]) == 0
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["n_groups"] == 13 and summary["groups_per_class"]["owl"] == 1
    assert any("'owl' comes from a single group" in w for w in summary["warnings"])


def test_a_dataframe_is_accepted_wherever_a_table_path_is(tmp_path, scans):
    pd = pytest.importorskip("pandas")
    import imagefit

    frame = pd.read_csv(scans).rename(columns={"diagnosis": "label", "file": "path"})
    frame["path"] = [str(scans.parent / p) for p in frame["path"]]
    clf = ImageClassifier(mode="probe", image_size=TEST_IMAGE_SIZE, epochs=20,
                          verbose=False).fit(frame)
    assert clf.classes_ == ("cat", "dog", "owl") and len(clf.predict(frame)) == 36
    result = imagefit.evaluate(clf, frame)
    assert result.metrics["n"] == 36 and result.metrics["accuracy"] > 0.8


def test_test_rows_never_train_beside_a_val_folder_and_runs_go_beside_the_table(
        tmp_path, scans, monkeypatch):
    val = tmp_path / "val"
    for label in ("cat", "dog", "owl"):
        for i in range(3):
            make_image(val / label / f"{label}{i}.png", COLOURS[label], seed=700 + i)
    monkeypatch.chdir(scans.parent)               # runs/ beside the table, as in the README
    assert cli(["train", "scans.csv", "--val", val, "--path-col", "file", "--label-col",
                "diagnosis", "--group-col", "patient", "--split-col", "fold",
                "--out", "runs/x", *FAST]) == 0
    with open(scans.parent / "runs" / "x" / "split.csv") as f:
        split = list(csv.DictReader(f))
    test_paths = {r["path"] for r in split if r["split"] == "test"}
    assert len(test_paths) == 6
    assert not test_paths & {r["path"] for r in split if r["split"] != "test"}
    assert sum(r["split"] == "train" for r in split) == 30
    assert cli(["train", "scans.csv", "--label-col", "diagnosis", "--out", "img/run",
                *FAST]) == 2                     # but never among its images


def test_fit_takes_a_table_path(tmp_path, scans):
    clf = ImageClassifier(mode="probe", image_size=TEST_IMAGE_SIZE, epochs=10, verbose=False)
    with pytest.raises(DatasetError, match="no label column"):
        clf.fit(str(scans))                        # read as a table, not as characters
    rows = [["file", "label"]] + [r[:2] for r in list(csv.reader(open(scans)))[1:]]
    assert clf.fit(str(write_csv(scans.parent / "l.csv", rows))).classes_ == \
        ("cat", "dog", "owl")
