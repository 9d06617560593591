"""`imagefit export RUN --format onnx [--out FILE]`: a verified model file that runs without
imagefit (ONNX Runtime, or PyTorch for TorchScript)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from imagefit.bundle import load_model, resolve_model_dir
from imagefit.export.onnx import FORMATS, TOLERANCE, export_model

EXAMPLES = """examples:
  imagefit export runs/cats --format onnx                  # -> runs/cats/export/model.onnx
  imagefit export runs/cats --format onnx --out cats.onnx
  imagefit export runs/cats --format torchscript

The ONNX model takes uint8 RGB images of shape (batch, S, S, 3), already resized to S x S
(S = image_size in its metadata), and returns calibrated probabilities; class names are in its
metadata (imagefit.classes). See the README for a 10-line onnxruntime example.
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("export", parents=[common], help="export a model to ONNX or TorchScript",
                       description="Export a model and verify the export against PyTorch on the "
                       f"run's validation images (probabilities within {TOLERANCE:.0e}).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or model folder")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
    p.add_argument("--out", metavar="FILE", help="default RUN/export/model.<format>")
    p.set_defaults(handler=run)


def validation_paths(run_path: Path) -> list[str]:
    """The validation images of a run folder (from split.csv), if there are any."""
    for folder in (run_path, run_path.parent):
        split = folder / "split.csv"
        if split.is_file():
            with open(split, newline="", encoding="utf-8") as f:
                return [row["path"] for row in csv.DictReader(f) if row.get("split") == "val"]
    return []


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_dir(args.run)
    clf = load_model(model_dir)
    suffix = "onnx" if args.format == "onnx" else "pt"
    out = Path(args.out) if args.out else model_dir.parent / "export" / f"model.{suffix}"
    result = export_model(clf, out, format=args.format, verify_images=validation_paths(model_dir))
    if not args.quiet:
        source = ("validation images" if result.verified_on == "given images"
                  else result.verified_on + " (no validation images found)")
        print(f"Wrote {result.path} ({args.format}); verified on {result.n_verified} {source}: "
              f"largest probability difference {result.max_abs_diff:.1e} "
              f"(tolerance {TOLERANCE:.0e}).")
    return 0
