"""The model folder format, and nothing else: `model.safetensors` (weights only) and
`model.json` (the metadata an estimator rebuilds itself from). Reading verifies the format
version and the weights' SHA-256 and never unpickles anything; pickle-based files are refused.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from imagefit._fileio import atomic_write_bytes, remove_orphans, sha256_file
from imagefit._version import __version__
from imagefit.errors import ModelFormatError, ModelNotFoundError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".tar")


def write_model_folder(path: str | os.PathLike, state: dict[str, torch.Tensor],
                       meta: dict) -> Path:
    """Write `state` (tensors) and `meta` (JSON values) as a model folder; returns it. Each file
    is replaced atomically; the versions, the weights' checksum and the time are added."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder.glob(".tmp-*"))  # what a killed save left
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save_safetensors(tensors))
    meta = {"format_version": FORMAT_VERSION, **meta,
            "versions": {"imagefit": __version__, "torch": torch.__version__,
                         "timm": _package_version("timm")},
            "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(folder / META_FILE, json.dumps(meta, indent=2, ensure_ascii=True).encode())
    return folder


def read_model_folder(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(metadata, tensors, folder) of a model folder or of a run folder holding `model/`.

    Raises:
        ModelNotFoundError: no model folder there.
        ModelFormatError: a pickle file, invalid JSON, another format version, or weights that
            do not match their checksum.
    """
    folder = resolve_model_dir(path)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelFormatError(f"{folder / META_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ModelFormatError(f"{folder} has model format {found!r}; this imagefit reads "
                               f"format {FORMAT_VERSION}.")
    if sha256_file(folder / WEIGHTS_FILE) != meta.get("weights_sha256"):
        raise ModelFormatError(f"{folder / WEIGHTS_FILE} does not match the checksum in "
                               f"{META_FILE}: the file was changed or damaged.")
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own types
        raise ModelFormatError(f"{folder / WEIGHTS_FILE} could not be read: "
                               f"{type(exc).__name__}: {exc}") from None
    return meta, state, folder


def model_task(path: str | os.PathLike) -> str:
    """"regress", "multilabel" or "classify": what the model folder (or run folder) predicts,
    from its model.json alone (a command can read its data accordingly before loading the
    weights)."""
    try:
        meta = json.loads((resolve_model_dir(path) / META_FILE).read_text(encoding="utf-8"))
    except ValueError:
        return "classify"  # read_model_folder reports the damage when the model is loaded
    task = meta.get("task") if isinstance(meta, dict) else None
    return task if task in ("regress", "multilabel") else "classify"


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """Accept a model folder or a run folder holding `model/`; refuse pickle files."""
    p = Path(path)
    if p.is_file() or p.suffix.lower() in PICKLE_SUFFIXES:
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelFormatError(
                f"Refusing to load {p.name!r}: it is not an imagefit model folder. Pickle-based "
                f"files ({', '.join(PICKLE_SUFFIXES)}) can run arbitrary code when loaded, so "
                f"imagefit never opens them. Use a folder with {WEIGHTS_FILE} and {META_FILE} "
                f"(written by 'imagefit train' or ImageClassifier.save).")
        raise ModelNotFoundError(f"{p} is a file; expected a model folder with {WEIGHTS_FILE} "
                                 f"and {META_FILE}, or a run folder that holds model/.")
    for candidate in (p, p / "model"):
        if (candidate / META_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise ModelNotFoundError(f"No model found in {p}: expected {META_FILE} and {WEIGHTS_FILE} "
                             f"there or in {p / 'model'}.")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
