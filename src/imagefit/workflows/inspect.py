"""`imagefit inspect`: audit a dataset before training. Class counts and imbalance, bad and
ignored files, formats, modes and sizes, exact duplicates (same bytes) and near-duplicates
(backbone embeddings), label conflicts and train/validation leakage, and suggested settings.
Reads the dataset only; the embeddings it computes land in the feature store for later runs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from imagefit.data.audit import preflight
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.labels import UNGROUPED, groups_per_class
from imagefit.data.sources import open_dataset
from imagefit.data.sampling import AUTO_IMBALANCE_RATIO, AUTO_SAMPLER_RATIO, imbalance_ratio
from imagefit.evaluation.issues import (
    NEAR_DUPLICATE_THRESHOLD,
    exact_duplicate_groups,
    group_pairs,
    near_duplicate_pairs,
)
from imagefit.features.extract import BackboneRunner, StoreFiller, compute_features
from imagefit._fileio import cache_folder
from imagefit.models.backbones import create_backbone, preprocessing_for, resolve_device

SMALL_CLASS = 20


@dataclass
class InspectionResult:
    """`summary` holds the `inspect --json` keys (a contract); `lines` the printed report."""

    summary: dict
    lines: list[str]


def inspect_dataset(data: str | os.PathLike, *, near: bool = True,
                    backbone: str = "efficientnet_lite0", image_size: int | None = None,
                    threshold: float = NEAR_DUPLICATE_THRESHOLD, device: str = "auto",
                    workers: int | None = None, progress: bool = False,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> InspectionResult:
    """Audit `data` (a folder or CSV, as for training) without training anything.

    `max_pixels` is the decompression-bomb cap, as `train --max-pixels`: larger images are
    listed as bad files (too_large), exactly as training would skip them.

    Example:
        >>> result = inspect_dataset("data/")                       # doctest: +SKIP
        >>> result.summary["classes"], result.summary["imbalance_ratio"]  # doctest: +SKIP
        ({'cat': 120, 'dog': 12}, 10.0)
    """
    index = open_dataset(data)
    prep = preprocessing_for(backbone, image_size)
    device = resolve_device(device)
    fill = StoreFiller(lambda: BackboneRunner(create_backbone(backbone,
                                                              image_size=prep.image_size),
                                              prep, device=device, cache_dir=cache_folder()),
                       cache_folder())
    near = near and len(index) > 1
    with fill if near else contextlib.nullcontext():  # embeddings from the pre-flight's pixels
        checked = preflight(index, image_size=prep.image_size, workers=workers,
                            max_pixels=max_pixels, progress=progress,
                            on_decoded=fill if near else None, background=prep.background)
    good = checked.index
    counts = good.counts()
    hashes = good.sha256
    exact = exact_duplicate_groups(hashes)
    subsets = good.subsets if good.subsets is not None else np.full(len(good), "", dtype=str)
    near_pairs = np.zeros((0, 3))
    if near and len(good) > 1:
        runner = fill.runner  # made by now, unless no image was decoded
        result = compute_features(good.paths, runner, keys=hashes, store=fill.store,
                                  workers=workers if workers is not None else 0,
                                  max_pixels=max_pixels, progress=progress)
        rows = np.flatnonzero(result.ok)
        near_pairs = near_duplicate_pairs(result.features[rows], threshold=threshold)
        if len(near_pairs):
            near_pairs[:, :2] = rows[near_pairs[:, :2].astype(int)]
            first, second = near_pairs[:, 0].astype(int), near_pairs[:, 1].astype(int)
            same_bytes = hashes[first] == hashes[second]
            near_pairs = near_pairs[~same_bytes]
    paths, labels = good.paths, good.labels
    conflicts = [g for g in exact if len(set(labels[g].tolist())) > 1]
    similar = exact + group_pairs(near_pairs, len(good))
    leak_groups = [g for g in similar if len(set(subsets[g].tolist()) - {""}) > 1]
    # With groups (patients...), copies in two groups can land on both sides of any split.
    across_groups = ([g for g in similar if len(set(good.groups[g].tolist())) > 1]
                     if good.groups is not None else [])
    summary = {
        "n_images": int(len(good)),
        "classes": {c: int(n) for c, n in zip(good.classes, counts)},
        "imbalance_ratio": round(imbalance_ratio(counts), 3),
        "bad_files": [{"path": b.path, "reason": b.reason, "message": b.message}
                      for b in checked.bad_files],
        "ignored": dict(index.report.ignored),
        "duplicates": [[str(paths[i]) for i in g] for g in exact],
        "near_duplicates": [[str(paths[int(i)]), str(paths[int(j)]), round(float(s), 4)]
                            for i, j, s in near_pairs] if near else None,
        "label_conflicts": [[str(paths[i]) for i in g] for g in conflicts],
        "leakage": [[str(paths[i]) for i in g] for g in leak_groups],
        "modes": dict(checked.modes),
        "formats": dict(checked.formats),
        "extension_mismatch": int(index.report.extension_mismatch),
        "exif_rotated": int(checked.exif_rotated),
        "multi_frame": int(checked.multi_frame),
        "sizes": {f"{w}x{h}": n for (w, h), n in checked.sizes.most_common(10)},
        "median_size": _median_size(checked.sizes),
        "warnings": list(index.report.warnings),
    }
    if good.groups is not None:
        named = good.groups[~np.char.startswith(good.groups, UNGROUPED)]
        summary["n_groups"] = int(len(np.unique(named)))
        summary["groups_per_class"] = groups_per_class(good)
        summary["duplicates_across_groups"] = [[str(paths[i]) for i in g]
                                               for g in across_groups]
        for name, n in summary["groups_per_class"].items():
            if n == 1:
                summary["warnings"].append(
                    f"Class '{name}' comes from a single group: a split keeps it on one side, "
                    f"so no honest validation exists for it. Add images from other groups.")
    summary["suggestions"] = _suggestions(summary, good.classes, counts)
    return InspectionResult(summary, _lines(summary, threshold))


def _median_size(sizes) -> list[int] | None:
    if not sizes:
        return None
    widths = np.repeat([w for w, _ in sizes], list(sizes.values()))
    heights = np.repeat([h for _, h in sizes], list(sizes.values()))
    return [int(np.median(widths)), int(np.median(heights))]


def _suggestions(s: dict, classes, counts) -> list[str]:
    tips = []
    if s["imbalance_ratio"] > AUTO_IMBALANCE_RATIO:
        fix = ("a balanced sampler" if s["imbalance_ratio"] > AUTO_SAMPLER_RATIO
               else "class weights")
        tips.append(f"Classes are imbalanced ({s['imbalance_ratio']:g}:1): 'imagefit train' "
                    f"corrects this with {fix} (--balance auto) and selects the model "
                    f"on balanced accuracy.")
    for name, n in zip(classes, counts):
        if n < SMALL_CLASS:
            tips.append(f"Class '{name}' has only {n} images: its metrics will be noisy; add "
                        f"images if you can.")
    if s["label_conflicts"]:
        tips.append(f"{len(s['label_conflicts'])} files appear with the same bytes under "
                    f"different classes: fix their labels before training.")
    if s["leakage"]:
        tips.append(f"{len(s['leakage'])} groups of (near-)identical images straddle train and "
                    f"validation: remove the copies from val/, or validation scores will be "
                    f"too optimistic.")
    if s.get("duplicates_across_groups"):
        tips.append(f"{len(s['duplicates_across_groups'])} sets of (near-)identical images "
                    f"belong to different groups: a group split can put them on both sides. "
                    f"Check their group names (the same patient under two IDs?).")
    if s["bad_files"]:
        tips.append(f"{len(s['bad_files'])} files cannot be used; training skips them "
                    f"(--strict stops instead).")
    median = s["median_size"]
    if median and max(median) < 96:
        tips.append(f"Images are small (median {median[0]}x{median[1]}): --image-size 96 "
                    f"trains about 3x faster than the default 224, usually at a small cost in "
                    f"accuracy.")
    return tips


def _lines(s: dict, threshold: float) -> list[str]:
    classes = ", ".join(f"{c} ({n})" for c, n in s["classes"].items())
    lines = [f"{s['n_images']:,} usable images in {len(s['classes'])} classes: {classes}",
             f"Imbalance ratio (largest/smallest class): {s['imbalance_ratio']:g}",
             "Modes: " + ", ".join(f"{m} {n}" for m, n in s["modes"].items())
             + " | formats: " + ", ".join(f"{f} {n}" for f, n in s["formats"].items()),
             "Sizes (most common): " + ", ".join(f"{k} x{n}" for k, n in s["sizes"].items()),
             f"EXIF-rotated: {s['exif_rotated']} | multi-frame (first frame used): "
             f"{s['multi_frame']} | extension does not match content: "
             f"{s['extension_mismatch']}"]
    if s["ignored"]:
        lines.append("Ignored: " + ", ".join(f"{k} x{n}" for k, n in s["ignored"].items()))
    lines.append(f"Bad files: {len(s['bad_files'])}"
                 + "".join(f"\n  {b['path']}: {b['reason']}" for b in s["bad_files"][:10]))
    lines.append(f"Exact duplicate groups: {len(s['duplicates'])}; label conflicts: "
                 f"{len(s['label_conflicts'])}; groups straddling train/val: {len(s['leakage'])}")
    if "groups_per_class" in s:
        lines.append(f"Groups: {s['n_groups']:,}; per class: " + ", ".join(
            f"{c} {n}" for c, n in s["groups_per_class"].items())
            + f"; (near-)duplicates across groups: {len(s['duplicates_across_groups'])}")
    if s["near_duplicates"] is not None:
        lines.append(f"Near-duplicate pairs (cosine >= {threshold:g}): {len(s['near_duplicates'])}"
                     + "".join(f"\n  {a}  ~  {b}  ({sim:.3f})"
                               for a, b, sim in s["near_duplicates"][:10]))
    lines += [f"warning: {w}" for w in s["warnings"]]
    lines += [f"Suggestion: {t}" for t in s["suggestions"]]
    return lines
