"""`python -m data build <name> --out <dir>` and `python -m data build-fashion-mnist --out <dir>`: the commands
DVC stages run. A missing source or a bad parameter is one `error:` line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data.dataset_dir import DatasetSourceMissingError
from data.images import SOURCES, build, build_fashion_mnist, load_image_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build an image dataset directory (images.npz + meta.json)")
    build_cmd.add_argument("name", choices=sorted(SOURCES))
    build_cmd.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    build_cmd.add_argument("--test-fraction", type=float, default=0.2)
    build_cmd.add_argument("--val-fraction", type=float, default=0.125, help="share of the training images")
    build_cmd.add_argument("--seed", type=int, default=0)
    fashion_cmd = commands.add_parser("build-fashion-mnist", help="Fashion-MNIST from Debian's dataset-fashion-mnist: "
                                      "train/val drawn from the official training set, the official test set")
    fashion_cmd.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    fashion_cmd.add_argument("--train-size", type=int, required=True)
    fashion_cmd.add_argument("--val-size", type=int, required=True)
    fashion_cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            out = build(args.name, args.out, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
                        seed=args.seed)
        else:
            out = build_fashion_mnist(args.out, train_size=args.train_size, val_size=args.val_size, seed=args.seed)
    except (DatasetSourceMissingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = load_image_dataset(out).meta
    counts, dropped = meta["counts"], meta["duplicates_dropped"]
    print(
        f"{meta['name']}: {counts['train']} train / {counts['val']} val / {counts['test']} test images "
        f"{'x'.join(map(str, meta['image_shape']))}, {dropped['val'] + dropped['test']} duplicate(s) dropped -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
