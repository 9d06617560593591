"""`imagefit explain RUN IMAGE [--out DIR] [--true-label NAME]`: why the model predicted what it
did for one image (activations of every backbone stage and Grad-CAM), as PNGs and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagefit.errors import ConfigError
from imagefit.progress import printable

EXAMPLES = """examples:
  imagefit explain runs/cats photos/tabby.jpg              # -> runs/cats/explain/tabby/
  imagefit explain runs/cats photos/tabby.jpg --true-label cat --out why-tabby
  imagefit explain runs/cats/model photos/tabby.jpg --quiet
  imagefit explain runs/tags photos/beach.jpg --label dog   # multi-label: each predicted
                                                           # label's map, and dog's

Written: input.png (the image as the model sees it), activations/stage_<i>_<name>.png (up to
32 channels of each backbone stage), gradcam_pred_<class>.png (Grad-CAM of the predicted class
over the image; also gradcam_true_<class>.png when --true-label differs) and explain.json
(prediction, calibrated probabilities, files, notes).
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("explain", parents=[common], help="explain one prediction (activations, "
                       "Grad-CAM)", description="Explain the prediction for one image: the "
                       "activations of each backbone stage as image grids and Grad-CAM heatmaps "
                       "of the predicted (and true) class, written as PNGs plus explain.json.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or model folder")
    p.add_argument("image", metavar="IMAGE", help="the image file to explain")
    p.add_argument("--out", metavar="DIR", help="default RUN/explain/<image name>")
    p.add_argument("--true-label", metavar="NAME",
                   help="the image's known class: also draw Grad-CAM for it")
    p.add_argument("--label", metavar="NAME", help="also draw Grad-CAM for this class (a "
                   "multi-label model's label: every predicted label gets one anyway)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.bundle import resolve_model_dir
    from imagefit.estimator import load_model
    from imagefit.explain import explain_image, safe_name

    model_dir = resolve_model_dir(args.run)
    clf = load_model(model_dir)
    if (args.true_label or args.label) is not None and hasattr(clf, "halfwidth_"):
        raise ConfigError("--true-label and --label name a class; this model is a regression "
                          "(its Grad-CAM is of the predicted value).")
    out = (Path(args.out) if args.out
           else model_dir.parent / "explain" / safe_name(Path(args.image).stem))
    result = explain_image(clf, args.image, out, true_label=args.true_label, label=args.label)
    if not args.quiet:
        detail = (f"[{result.interval[0]:.6g}, {result.interval[1]:.6g}]" if result.interval
                  else "" if result.value is not None or result.labels is not None
                  else f"({result.confidence:.3f})")
        if result.labels == []:
            result.label = "no label"
        print(f"Predicted {printable(result.label)}{' ' + detail if detail else ''} "
              f"for {printable(args.image)}.")
        for note in result.notes:
            print(f"note: {printable(note)}")
        print(f"Wrote {len(result.files)} files to {printable(result.out_dir)}:")
        for path in result.files:
            print(f"  {printable(path.relative_to(result.out_dir).as_posix())}")
    return 0
