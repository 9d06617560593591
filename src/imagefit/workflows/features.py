"""`imagefit features`: dataset-level feature extraction: scan, pre-flight, then stream the
backbone's features into `features.npy` through a memory map, reusing and filling the feature
store. The pre-flight hands each image it decodes to the backbone (`StoreFiller`), so each file
is decoded once. Memory stays bounded by a few batches plus one store chunk, whatever the
number of images.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagefit.data.audit import preflight
from imagefit.data.sources import open_dataset
from imagefit.features.extract import BackboneRunner, StoreFiller, compute_features
from imagefit._fileio import cache_folder
from imagefit.models.backbones import create_backbone, preprocessing_for, resolve_device
from imagefit.workflows.run_folder import write_bad_files


@dataclass
class FeatureFiles:
    out_dir: Path
    features_path: Path
    n_rows: int
    dim: int
    n_computed: int
    n_bad: int


def extract_dataset_features(data: str | os.PathLike, out: str | os.PathLike, *,
                             backbone: str = "efficientnet_lite0", image_size: int | None = None,
                             weights: str | None = None, batch_size: int = 64,
                             workers: int | None = None, device: str = "auto",
                             cache_dir: str | os.PathLike | None = None,
                             progress: bool = False) -> FeatureFiles:
    """Write `out/features.npy` (N x D float32), `out/index.csv` (path,label) and
    `out/bad_files.csv` for every usable image of `data`.

    Example:
        >>> files = extract_dataset_features("data/", "feats/")   # doctest: +SKIP
        >>> np.load(files.features_path, mmap_mode="r").shape     # doctest: +SKIP
        (1000, 1280)
    """
    prep = preprocessing_for(backbone, image_size)
    device, cache = resolve_device(device), cache_folder(cache_dir)
    scanned = open_dataset(data)

    def make_runner() -> BackboneRunner:
        return BackboneRunner(create_backbone(backbone, image_size=prep.image_size,
                                              weights=weights), prep, device=device,
                              cache_dir=cache)

    with StoreFiller(make_runner, cache, batch_size) as fill:
        checked = preflight(scanned, image_size=prep.image_size, workers=workers,
                            progress=progress, on_decoded=fill, background=prep.background)
    index, runner, store = checked.index, fill.runner, fill.store
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    features_path = out_dir / "features.npy"
    matrix = np.lib.format.open_memmap(features_path, mode="w+", dtype=np.float32,
                                       shape=(len(index), runner.dim))
    n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    result = compute_features(index.paths, runner, keys=index.sha256, store=store,
                              batch_size=batch_size, workers=n_workers, progress=progress,
                              out=matrix)
    matrix.flush()
    del matrix
    with open(out_dir / "index.csv", "w", newline="", encoding="utf-8",
              errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(zip(index.paths, index.label_names()))
    bad = checked.bad_files + result.failed
    write_bad_files(bad, out_dir / "bad_files.csv")  # the run folder's format
    return FeatureFiles(out_dir, features_path, len(index), runner.dim,
                        fill.n_computed + result.n_computed, len(bad))
