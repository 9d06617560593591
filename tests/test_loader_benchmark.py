"""`benchmark_loader` and `imagefit benchmark loader`: the DESIGN §3 JSON keys, figures that are
positive and consistent, bad files skipped and counted, thread settings restored, the dataset
untouched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import make_dataset, tree_digest
from imagefit.cli.main import main
from imagefit.errors import ConfigError
from imagefit.workflows.benchmark import benchmark_loader

CONTRACT_KEYS = ("images_per_sec", "images_per_sec_cached", "decode_images_per_sec",
                 "n_images", "image_size", "augment", "workers")
RATES = ("images_per_sec", "images_per_sec_cached", "decode_images_per_sec", "cache_speedup")


@pytest.fixture
def data(tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 7, "dog": 5})  # 12 good images
    # A JPEG header and nothing else: the scan accepts it, decoding fails at run time.
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    return root


def check_figures(result: dict, *, n_images: int, image_size: int, augment: str) -> None:
    for key in (*CONTRACT_KEYS, "cache_speedup", "n_failed"):
        assert key in result, key
    for key in RATES:
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["cache_speedup"] == pytest.approx(
        result["images_per_sec_cached"] / result["images_per_sec"])
    s = result["seconds"]
    assert result["images_per_sec"] == pytest.approx(n_images / s["cold"])
    assert result["decode_images_per_sec"] == pytest.approx(n_images / s["decode"])
    assert result["n_images"] == n_images
    assert result["image_size"] == image_size
    assert result["augment"] == augment
    assert result["workers"] == 0
    assert result["n_failed"] == 1
    assert [b["path"].rsplit("/", 1)[-1] for b in result["bad_files"]] == ["broken.jpg"]
    assert result["bad_files"][0]["reason"] in ("truncated", "corrupt")
    stages = result["stages_ms"]
    assert list(stages) == ["read", "decode", "resize", "augment", "collate"]
    assert all(math.isfinite(ms) and ms >= 0 for ms in stages.values())
    assert stages["decode"] > 0 and stages["augment"] > 0


def test_benchmark_loader_figures_and_bad_file(data, tmp_path):
    before = tree_digest(data)
    threads = torch.get_num_threads()
    result = benchmark_loader(data, image_size=32, epochs=1, cache_dir=tmp_path / "cache")
    check_figures(result, n_images=12, image_size=32, augment="keras")
    assert len(result["seconds"]["cached"]) == 1
    assert torch.get_num_threads() == threads  # one thread while measuring, then restored
    assert tree_digest(data) == before
    # The decoded-image cache was filled where asked: 12 uint8 rows of 32 x 32 x 3.
    chunks = list((tmp_path / "cache" / "images").rglob("chunk-*.npy"))
    assert sum(len(np.load(c, mmap_mode="r")) for c in chunks) == 12


def test_benchmark_loader_limit_takes_a_subset(data):
    result = benchmark_loader(data, image_size=32, epochs=2, limit=5, augment="light")
    assert result["n_images"] + result["n_failed"] == 5
    assert len(result["seconds"]["cached"]) == 2
    assert result["augment"] == "light"


@pytest.mark.parametrize("options, name", [({"epochs": 0}, "epochs"), ({"workers": -1}, "workers"),
                                           ({"limit": 0}, "limit"), ({"image_size": 8},
                                                                     "image_size")])
def test_benchmark_loader_rejects_bad_parameters(data, options, name):
    with pytest.raises(ConfigError, match=f"'{name}' parameter"):
        benchmark_loader(data, **options)


def test_cli_prints_table_and_writes_json(data, tmp_path, capsys):
    out = tmp_path / "loader.json"
    code = main(["benchmark", "loader", str(data), "--image-size", "32", "--epochs", "1",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "12 images at 32 px, augment keras" in printed
    assert "1 bad files skipped" in printed
    for row in ("decode only", "cold epoch", "cached epochs", "cache speedup",
                "cold draw, ms per image (one core): read "):
        assert row in printed
    check_figures(json.loads(out.read_text()), n_images=12, image_size=32, augment="keras")


def test_cli_quiet_and_bad_option(data, tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["benchmark", "loader", str(data), "--image-size", "32", "--epochs", "1",
                 "--augment", "none", "--quiet", "--json", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["augment"] == "none"
    assert main(["benchmark", "loader", str(data), "--epochs", "0", "--quiet"]) == 2
    assert "'epochs' parameter" in capsys.readouterr().err
