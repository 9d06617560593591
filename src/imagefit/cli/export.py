"""`imagefit export RUN --format onnx [--out FILE]`: a verified model file that runs without
imagefit (ONNX Runtime, or PyTorch for TorchScript)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagefit.workflows.run_folder import RunFolder
from imagefit.export import FORMATS, TOLERANCE

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


def run(args: argparse.Namespace) -> int:
    from imagefit.bundle import resolve_model_dir
    from imagefit.estimator import load_model
    from imagefit.export.onnx import export_model

    model_dir = resolve_model_dir(args.run)
    clf = load_model(model_dir)
    suffix = "onnx" if args.format == "onnx" else "pt"
    out = Path(args.out) if args.out else model_dir.parent / "export" / f"model.{suffix}"
    result = export_model(clf, out, format=args.format,
                          verify_images=RunFolder.of_model(model_dir).validation_paths())
    if not args.quiet:
        source = ("validation images" if result.verified_on == "given images"
                  else result.verified_on + " (no validation images found)")
        what = ("value difference (in standard deviations of the target)"
                if hasattr(clf, "halfwidth_") else "probability difference")
        print(f"Wrote {result.path} ({args.format}); verified on {result.n_verified} {source}: "
              f"largest {what} {result.max_abs_diff:.1e} (tolerance {TOLERANCE:.0e}).")
    return 0
