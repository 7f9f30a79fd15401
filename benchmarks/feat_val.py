"""FEAT vs ProtoNet on the VAL classes: how the `feat` profiles' meta-training settings are chosen without looking
at the novel (test) classes.

    python benchmarks/feat_val.py                                       # the tiny profile as configured
    python benchmarks/feat_val.py --set meta.one_shot.query=15 --set meta.one_shot.epochs=20
    python benchmarks/feat_val.py --episodes 2000 --out .paperops/benchmarks/feat-val.json

It runs the `feat` recipe's own `train` (pre-training, then FEAT, ProtoNet and FEAT λ = 0 meta-trained from the same
encoder, on the same episodes) on the built stage (`make data`) through the view the pipeline gives training, which
withholds the novel classes: train draws its episodes from the val classes. Val classes also pick each model's best
epoch, so both figures are optimistic by the same selection; only the paired FEAT − ProtoNet difference is the
reading.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recipes import get_recipe
from models.common.reporting import RecordingReporter
from recipes import built_dataset_views, load_config
from settings.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--episodes", type=int, default=2000, help="val test episodes per setting")
    parser.add_argument("--set", action="append", default=[], help="config overrides, key=value")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    overrides = [f"evaluate.episodes={args.episodes}", "evaluate.shots=[1]"] + args.set
    resolved = load_config("feat", args.profile, overrides)
    cfg, recipe = resolved.config, get_recipe("feat")
    try:
        data = recipe.load_data(built_dataset_views(recipe, cfg, "train"), cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    started = time.perf_counter()
    metrics = recipe.train(recipe.build_model(cfg), data, cfg, RecordingReporter()).metrics
    seconds = time.perf_counter() - started

    way = cfg.evaluate.way
    rows = {name: (metrics[f"{name}.acc_{way}w1s"], metrics[f"{name}.ci95_{way}w1s"])
            for name in ("pretrain_protonet", "protonet", "feat_lambda0", "feat") if f"{name}.acc_{way}w1s" in metrics}
    print(f"\nVAL classes, {way}-way 1-shot, {args.episodes} paired episodes ({seconds:.0f} s); overrides {args.set}")
    for name, (acc, ci) in rows.items():
        print(f"  {name:18s} {acc:6.2f} ± {ci:.2f}")
    diff = (metrics[f"feat_minus_protonet.acc_{way}w1s"], metrics[f"feat_minus_protonet.ci95_{way}w1s"])
    print(f"  FEAT − ProtoNet    {diff[0]:+6.2f} ± {diff[1]:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"profile": args.profile, "overrides": overrides, "seconds": seconds,
                                        "val": rows, "feat_minus_protonet": diff}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
