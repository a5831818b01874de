"""Check a folder dataset before training: counts per class and split, and every problem file.

    python scripts/check_dataset.py --data /datasets --dataset NWPU-RESISC45
    python scripts/check_dataset.py --data /datasets --dataset AID --check-images header --json report.json

Exit status 1 when some file cannot be read (training would stop on it), else 0. Training runs the
same check at start-up (``--check-images header`` by default there; ``full`` here).
"""
import json
import os
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.presets import PRESETS, bands_of, dataset_root, preset_mismatch  # noqa: E402
from errors import InputError, one_line  # noqa: E402
from lib.cli.flags import COUNT, FRACTION, SEED, ArgumentParser, band_list, check_data  # noqa: E402


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder holding <dataset>/<class>/<image>")
    parser.add_argument("--dataset", required=True, help="dataset folder name; known: " + ", ".join(sorted(PRESETS)))
    parser.add_argument("--imgEXT", default=None, help="image extension (default: the preset's, else tif)")
    parser.add_argument("--bands", default=None, type=band_list,
                        help="check the files as N-band TIFFs (tifffile): each must have the band count and data type "
                        "of most (default: the preset's, EuroSAT_MS: all; else 8-bit RGB images)")
    parser.add_argument("--split-seed", type=SEED, default=42, help="seed of the split")
    parser.add_argument("--split", default="reference", choices=("reference", "unseen"),
                        help="the split whose counts, leaks and short classes are reported, as training's --split")
    parser.add_argument("--seen-fraction", type=FRACTION, default=0.8, help="--split unseen: share of seen classes")
    parser.add_argument("--train-fraction", type=FRACTION, default=0.8,
                        help="--split unseen: share of a seen class's images in train")
    parser.add_argument("--check-images", default="full", choices=("header", "full"),
                        help="header: read each header; full: decode each image (finds truncated files)")
    parser.add_argument("--skip-bad-images", action="store_true", help="count the split without the bad files")
    parser.add_argument("--num_workers", type=COUNT, default=8, help="threads reading files")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the full report here")
    return parser


def main():
    args = get_args_parser().parse_args()
    from datasets.check import KINDS, check_dataset, summary  # torch: imported after --help and the flag checks
    from datasets.folder import SPLIT_NAMES

    ext = args.imgEXT or (PRESETS[args.dataset].ext if args.dataset in PRESETS else "tif")
    bands = bands_of(args.dataset, args.bands)
    try:
        check_data(args.data, args.dataset)
        root = dataset_root(args.data, args.dataset)
        report = check_dataset(root, ext, args.split_seed, args.check_images == "full", args.num_workers,
                               args.skip_bad_images, bands, args.split, (args.seen_fraction, args.train_fraction))
    except InputError as error:
        sys.exit(f"error: {one_line(error)}")

    width = max(len(c) for c in report["classes"])
    print(f"{root}: {len(report['classes'])} classes, *.{ext}, {args.split} split, seed {args.split_seed}"
          + (f", {report['bands']} bands per file (most files)" if report["bands"] else ""))
    print(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLIT_NAMES))
    for name, counts in report["counts"].items():
        print(f"{name:<{width}}  " + "  ".join(f"{counts[s]:>6}" for s in SPLIT_NAMES))
    print(f"{'total':<{width}}  " + "  ".join(f"{report['totals'][s]:>6}" for s in SPLIT_NAMES))
    num_images = sum(report["totals"].values()) + (len(report["bad"]) if args.skip_bad_images else 0)
    if mismatch := preset_mismatch(args.dataset, len(report["classes"]), num_images):
        print(f"note: {mismatch}")
    lines = summary(report, root, limit=10, skipping=args.skip_bad_images)
    print("\n".join(lines) if lines else "no problems found")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "kinds": KINDS}, f, indent=2)
    sys.exit(1 if report["bad"] else 0)


if __name__ == "__main__":
    main()
