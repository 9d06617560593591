"""`imagefit augment DATA --out DIR [--per-image N | --balance] [--preview FILE.png]`: write
augmented copies into class sub-folders, with a manifest, and/or a preview grid."""

from __future__ import annotations

import argparse

from imagefit.cli.source import add_source_options, open_data
from imagefit._fileio import check_output_file
from imagefit.errors import ConfigError
from imagefit.progress import printable

EXAMPLES = """examples:
  imagefit augment data/ --preview preview.png              # look before writing anything
  imagefit augment data/ --out data-aug/ --balance          # top up every class to the largest
  imagefit augment data/ --out data-aug/ --per-image 3 --augment light --seed 1
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("augment", parents=[common], help="save augmented copies of a dataset",
                       description="Write augmented copies of DATA's images into DIR/<class>/"
                       "<name>_aug<k>.<ext> at their original size and pixel range (JPEG "
                       "sources as JPEG quality 95, others as PNG), with DIR/manifest.csv "
                       "(path,source,class,seed,params). Originals are not copied: train on "
                       "DATA plus DIR, or merge them. DATA is never written to and no file is "
                       "overwritten; running again into DIR with the same settings keeps what "
                       "is there. --preview draws a grid (one row per image: the original, "
                       "then 7 versions) to check the settings.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="dataset folder or table")
    p.add_argument("--out", metavar="DIR", help="output folder (new, empty, or an earlier "
                   "augment output)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--per-image", type=int, metavar="N", help="N copies of every image")
    how.add_argument("--balance", action="store_true", help="copies of each class's images "
                     "until every class has as many images as the largest (originals included "
                     "in the count, not copied)")
    p.add_argument("--preview", metavar="FILE.png", help="write a preview grid")
    p.add_argument("--augment", default="keras", metavar="keras|light|strong|FILE.yaml",
                   help="augmentation preset or YAML file (default: keras)")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    add_source_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.workflows.augment import augment_folder, preview_grid

    if args.out is None and (args.per_image is not None or args.balance):
        raise ConfigError("--per-image and --balance need --out DIR (where to write the copies).")
    if args.out is None and args.preview is None:
        raise ConfigError("Nothing to do: pass --out DIR (with --per-image N or --balance) "
                          "and/or --preview FILE.png.")
    if args.out is not None and args.per_image is None and not args.balance:
        raise ConfigError("--out needs --per-image N or --balance (how many copies to write).")
    if args.preview is not None:
        check_output_file(args.preview, "--preview")
    data = open_data(args, args.data)
    if args.out is not None:
        result = augment_folder(data, args.out, augment=args.augment,
                                per_image=args.per_image, balance=args.balance, seed=args.seed,
                                progress=not args.quiet)
        if not args.quiet:
            for line in result.warnings:
                print(printable(f"warning: {line}"))
            n_sources = sum(result.originals.values())
            print(f"{n_sources:,} images usable"
                  + (f", {result.bad_summary()}" if result.bad_files else "") + ".")
            for bad in result.bad_files[:5]:
                print(printable(f"  {bad.path}: {bad.reason}: {bad.message}"))
            per_class = ", ".join(f"{printable(c)} {result.originals[c]} + {n} = "
                                  f"{result.originals[c] + n}"
                                  for c, n in result.per_class.items())
            kept = f" ({result.n_reused:,} already there, kept)" if result.n_reused else ""
            print(f"Wrote {result.n_written:,} augmented images to {printable(args.out)}{kept}: "
                  f"{per_class}.")
            print(f"Originals are not copied: train on {printable(args.data)} plus "
                  f"{printable(args.out)}. Manifest: {printable(result.manifest)}")
    if args.preview is not None:
        path = preview_grid(data, args.preview, augment=args.augment, seed=args.seed)
        if not args.quiet:
            print(f"Preview: {printable(path)}")
    return 0
