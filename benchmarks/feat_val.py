"""FEAT vs its baselines on the VAL classes: how the `feat` profiles' settings are chosen without looking at the
novel (test) classes.

    python benchmarks/feat_val.py                                       # the tiny profile as configured
    python benchmarks/feat_val.py --set meta.one_shot.query=5 --set meta.one_shot.episodes_per_epoch=300
    python benchmarks/feat_val.py --episodes 2000 --out .paperops/benchmarks/feat-val.json

It runs the `feat` recipe's own `train` (pre-training to its val plateau, then FEAT, ProtoNet and FEAT λ = 0
meta-trained from the same encoder with the 1-shot and, when the profile has them, the 5-shot settings) on the built
stage (`make data`) through the view the pipeline gives training, which withholds the novel classes. Then it scores
every model exactly as `evaluate` does (the recipe's `score_on_episodes`: the same seeded episodes for every model),
but on the val classes, and prints each model's accuracy and the paired differences the profile's decisive criteria
name, with the paired-bootstrap interval over episodes (models/common/stats.py). Val classes also pick each model's
best epoch and the end of pre-training, so every figure is optimistic by the same selection; the paired differences
are the reading. The CPU seconds of `train` are printed too: the tiny profile's budget is spent there.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.common.reporting import RecordingReporter
from models.common.stats import paired_bootstrap, verdict
from recipes import built_dataset_views, get_recipe, load_config
from recipes.feat import score_on_episodes, seeded_episodes
from settings.config import ConfigError

# (method, baseline, setting) pairs read off the val classes: the decisive criteria's and the λ ablation's
COMPARISONS = (("feat", "protonet", 1), ("feat", "feat_lambda0", 1), ("feat_5shot", "protonet_5shot", 5),
               ("feat_5shot", "feat_lambda0_5shot", 5))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--episodes", type=int, default=2000, help="val episodes per setting")
    parser.add_argument("--set", action="append", default=[], help="config overrides, key=value")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    overrides = [f"evaluate.episodes={args.episodes}"] + args.set
    try:
        resolved = load_config("feat", args.profile, overrides)
        cfg, recipe = resolved.config, get_recipe("feat")
        data = recipe.load_data(built_dataset_views(recipe, cfg, "train"), cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    started, cpu_started = time.perf_counter(), cpu_seconds()
    model = recipe.build_model(cfg)
    reporter = RecordingReporter()
    result = recipe.train(model, data, cfg, reporter)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started

    way = cfg.evaluate.way
    episodes = seeded_episodes(data.val, cfg)
    scored = {name: score_on_episodes(module, data.val, episodes, cfg)
              for name, module in ({"feat": model} | {n: c.module for n, c in result.companions.items()}).items()}
    print(f"\nVAL classes, {way}-way, {args.episodes} paired episodes per setting; train {seconds:.0f} s wall, "
          f"{cpu:.0f} s CPU; overrides {args.set}")
    print("  pre-training: " + ", ".join(f"{k.split('.', 1)[1]} {v:g}" for k, v in result.metrics.items()
                                         if k.startswith("pretrain.")))
    curves = {"pretrain": reporter.series("pretrain_val_protonet_acc")}
    curves |= {name: reporter.series(f"{name}.val_acc") for name in scored if f"{name}.best_epoch" in result.metrics}
    for name, curve in curves.items():
        print(f"  val accuracy per epoch, {name}: " + " ".join(f"{acc:.1f}" for acc in curve))
    rows: dict[str, dict[str, float]] = {}
    for name, (metrics, _) in scored.items():
        rows[name] = {k: v for k, v in metrics.items() if k.startswith("acc_")}
        figures = "  ".join(f"{k} {v:6.2f}" for k, v in rows[name].items())
        best = result.metrics.get(f"{name}.best_epoch")
        print(f"  {name:20s} {figures}" + (f"   best epoch {best:g}" if best is not None else ""))
    differences = {}
    for method, baseline, shot in COMPARISONS:
        key = f"acc_{way}w{shot}s"
        if method not in scored or baseline not in scored or key not in scored[method][1]:
            continue
        interval = paired_bootstrap(scored[method][1][key], scored[baseline][1][key])
        differences[f"{method}-{baseline}.{key}"] = [interval.estimate, interval.low, interval.high]
        print(f"  {method} − {baseline} ({key}): {interval} → {verdict(interval)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"profile": args.profile, "overrides": overrides, "seconds": seconds,
                                        "cpu_seconds": cpu, "train_metrics": result.metrics, "val_curves": curves, "val": rows,
                                        "differences": differences}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
