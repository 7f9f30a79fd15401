"""OVOR's phase-(d) schedule chosen on VAL: how the `ovor` profile's `vor.head_passes` / `vor.head_lr` are picked
without looking at the test digits.

    python benchmarks/ovor_val.py                                   # the tiny profile, seeds 0 1 2
    python benchmarks/ovor_val.py --seeds 0 --set stream.prompt_epochs=3

It runs the `ovor` recipe's own `train` (glyph pre-training, then the OVOR stream and the OnePrompt stream) on the
built stages (`make data`) through the view the pipeline gives training, which withholds the test split: every
figure is measured on the val split after the last task. Each candidate schedule is an OVOR head variant sharing
phase (a), so one prompt training per seed measures them all (cil.py: the variants are exactly what separate runs
would give). The schedule with the highest mean val A_N over the seeds wins; the OnePrompt baseline's val A_N
(official schedule, no knob to tune) is printed beside them. Candidates: the official schedule (one pass on the
tail of the task's E1 + E2 cosine) and fresh cosines from lr 1e-3 with 1, 3 and 10 passes over each epoch's
stored features.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from models.common.reporting import RecordingReporter
from recipes import built_dataset_views, get_recipe, load_config
from settings.config import ConfigError

# name -> (head_passes, head_lr); None = the official tail of the E1 + E2 cosine
CANDIDATES = {"official_tail": (1, None), "p1_lr1e-3": (1, 1e-3), "p3_lr1e-3": (3, 1e-3), "p10_lr1e-3": (10, 1e-3)}


def candidate_ablations() -> str:
    """The candidates as the `vor.ablations` override: OVOR's settings with each schedule."""
    rows = [f"{{name: cand_{i}, head_passes: {passes}" + (f", head_lr: {lr}}}" if lr is not None else "}")
            for i, (passes, lr) in enumerate(CANDIDATES.values())]
    return f"vor.ablations=[{', '.join(rows)}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="config overrides, key=value")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    recipe = get_recipe("ovor")
    rows: dict[str, list[float]] = {name: [] for name in [*CANDIDATES, "oneprompt"]}
    seconds: list[float] = []
    for seed in args.seeds:
        try:
            cfg = load_config("ovor", args.profile, [*args.set, candidate_ablations(), f"seed={seed}"]).config
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 2
        started = time.perf_counter()
        data = recipe.load_data(built_dataset_views(recipe, cfg, "train"), cfg)
        metrics = recipe.train(recipe.build_model(cfg), data, cfg, RecordingReporter()).metrics
        seconds.append(time.perf_counter() - started)
        for i, name in enumerate(CANDIDATES):
            rows[name].append(metrics[f"cand_{i}.a_n"])
        rows["oneprompt"].append(metrics["oneprompt.a_n"])
        print(f"seed {seed} ({seconds[-1]:.0f} s): " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()),
              flush=True)
    means = {name: float(np.mean(values)) for name, values in rows.items()}
    best = max(CANDIDATES, key=lambda name: means[name])
    print("val A_N, mean over seeds " + " ".join(map(str, args.seeds)) + ":")
    for name, mean in means.items():
        print(f"  {name:14s} {mean:5.1f}  " + " ".join(f"{v:5.1f}" for v in rows[name])
              + ("  <- chosen" if name == best else ""))
    passes, lr = CANDIDATES[best]
    print(f"set vor.head_passes={passes} vor.head_lr={'null' if lr is None else lr}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seeds": args.seeds, "val_a_n": rows, "mean": means, "chosen": best,
                                        "train_seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
