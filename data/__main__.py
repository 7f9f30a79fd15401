"""`python -m data build <name> --out <dir>`: the command DVC stages run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data.dataset_dir import DatasetSourceMissingError
from data.images import SOURCES, build, load_image_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build an image dataset directory (images.npz + meta.json)")
    build_cmd.add_argument("name", choices=sorted(SOURCES))
    build_cmd.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    build_cmd.add_argument("--test-fraction", type=float, default=0.2)
    build_cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        out = build(args.name, args.out, test_fraction=args.test_fraction, seed=args.seed)
    except DatasetSourceMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = load_image_dataset(out).meta
    print(
        f"{args.name}: {meta['counts']['train']} train / {meta['counts']['test']} test images "
        f"{'x'.join(map(str, meta['image_shape']))}, {meta['test_duplicates_dropped']} duplicate(s) dropped -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
