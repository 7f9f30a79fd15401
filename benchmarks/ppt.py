"""PPT vs ToMe vs EViT on a timm DeiT: MACs and measured throughput, side by side in one run.

    python benchmarks/ppt.py --model deit_small_patch16_224 --batch 64 --img 224 --runs 6 --threads 2 \
        --out .paperops/benchmarks/ppt.json
    python benchmarks/ppt.py --quick          # deit_tiny, batch 8, 2 runs: a smoke run

Random init (pretrained=False, nothing is downloaded) and random input: speed and MACs do not depend on the weights, but
the prune/pool decision does. At random init every image pools at the default tau (measured: the scores' variance stays
below tau = 7e-5 at blocks 3/6/9), so the two forced variants (tau=0: all prune, tau=inf: all pool) bracket PPT's cost.

Timed runs are interleaved round-robin across variants (with a rotating start), so machine noise falls on all
of them alike. The targets are printed PASS/FAIL, not asserted: timings belong to the machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: pretrained=False, but be sure

import timm
import torch

from models import ppt
from models.common.profiling import count_macs, device_fingerprint, latency_summary, time_forward

PPT_BLOCKS = (3, 6, 9)
TARGET_MACS_RATIO = 0.65       # PPT-prune MACs <= 0.65 x dense
TARGET_THROUGHPUT_RATIO = 1.3  # PPT-prune throughput >= 1.3 x dense
# Our reference counts (FlopCounterMode on a re-implementation of the same schedules, GMACs per image), not the
# paper's figures
SPEC_GMACS = {
    "deit_small_patch16_224": {"dense": 4.599, "ppt_prune": 2.941, "ppt_pool": 2.942, "tome_r13": 2.706},
    "deit_tiny_patch16_224": {"dense": 1.254, "ppt_prune": 0.798, "ppt_pool": 0.800, "tome_r13": 0.735},
}


def variants(r: int) -> list[tuple[str, ppt.TokenReductionConfig | None]]:
    def cfg(method: str, r_: int, blocks: tuple[int, ...], tau: float | None = None) -> ppt.TokenReductionConfig:
        return ppt.TokenReductionConfig(method=method, r=r_, blocks=blocks, tau=tau,
                                        prop_attn=method in ppt.METHODS_WITH_TOKEN_SIZES)

    return [
        ("dense", None),
        ("ppt_prune", cfg("ppt", r, PPT_BLOCKS, tau=0.0)),
        ("ppt_pool", cfg("ppt", r, PPT_BLOCKS, tau=math.inf)),
        ("ppt_default_tau", cfg("ppt", r, PPT_BLOCKS)),
        ("tome_r13", cfg("tome", 13, ())),
        ("tome_equal_budget", cfg("tome", r, PPT_BLOCKS)),
        ("evit_equal_budget", cfg("evit", r, PPT_BLOCKS)),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224", help="timm architecture (random init)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--runs", type=int, default=6, help="timed runs per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    p.add_argument("--r", type=int, default=50, help="tokens removed per reduction block (PPT, equal budget)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--macs-batch", type=int, default=2, help="images the MACs are counted on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".paperops/benchmarks/ppt.json", help="JSON results path")
    p.add_argument("--quick", action="store_true", help="smoke run: deit_tiny, batch 8, 2 runs")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.runs, args.warmup = "deit_tiny_patch16_224", 8, 2, 1
    return args


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    dense = timm.create_model(args.model, pretrained=False, img_size=args.img).eval().to(device)
    batch = torch.randn(args.batch, 3, args.img, args.img, generator=torch.Generator().manual_seed(args.seed))
    batch = batch.to(device)
    macs_batch = batch[: args.macs_batch]

    models = {}
    for name, cfg in variants(args.r):
        models[name] = (dense if cfg is None else ppt.compress(copy.deepcopy(dense), cfg), cfg)

    rows = {}
    for name, (model, cfg) in models.items():
        rows[name] = {"variant": name, "method": cfg.method if cfg else "dense",
                      "config": {"r": cfg.r, "blocks": list(cfg.blocks),
                                 "tau": ppt.current_config(model).tau if cfg.method == "ppt" else None}
                      if cfg else {},
                      "macs_per_image": count_macs(model, macs_batch) / len(macs_batch)}

    for _ in range(args.warmup):
        for model, _cfg in models.values():
            time_forward(model, batch)
    for model, cfg in models.values():
        if cfg is not None:
            ppt.reset_reduction_stats(model)  # the pool/prune split of the timed batch only

    names = list(models)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter()
    for i in range(args.runs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            seconds[name].append(time_forward(models[name][0], batch))
        print(f"  round {i + 1}/{args.runs} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    base = rows["dense"]
    base.update(latency_summary(seconds["dense"], args.batch))
    for name in names:
        row = rows[name]
        row.update(latency_summary(seconds[name], args.batch))
        row["seconds"] = seconds[name]
        row["gmacs_per_image"] = row["macs_per_image"] / 1e9
        row["macs_ratio"] = row["macs_per_image"] / base["macs_per_image"]
        row["throughput_ratio"] = row["throughput_per_s"] / base["throughput_per_s"]
        # The same round's dense and variant runs are minutes apart at most, so slow drifts in machine speed
        # cancel in their ratio; the median over rounds is the noise-robust companion of the ratio of medians.
        row["throughput_ratio_paired"] = statistics.median(d / t for d, t in zip(seconds["dense"], seconds[name]))
        row["throughput_best_per_s"] = args.batch / min(seconds[name])
        model, cfg = models[name]
        row["reduction"] = ppt.reduction_stats(model) if cfg else []
        spec = SPEC_GMACS.get(args.model, {}).get(name) if args.img == 224 else None
        row["spec_gmacs_per_image"] = spec

    prune = rows["ppt_prune"]
    targets = {
        "ppt_prune_macs_ratio": {"value": prune["macs_ratio"], "target": f"<= {TARGET_MACS_RATIO}",
                                 "pass": prune["macs_ratio"] <= TARGET_MACS_RATIO},
        "ppt_prune_throughput_ratio": {"value": prune["throughput_ratio"], "target": f">= {TARGET_THROUGHPUT_RATIO}",
                                       "pass": prune["throughput_ratio"] >= TARGET_THROUGHPUT_RATIO},
        "ppt_prune_throughput_ratio_paired": {"value": prune["throughput_ratio_paired"],
                                              "target": f">= {TARGET_THROUGHPUT_RATIO}",
                                              "pass": prune["throughput_ratio_paired"] >= TARGET_THROUGHPUT_RATIO},
    }
    return {"model": args.model, "batch": args.batch, "img": args.img, "runs": args.runs, "warmup": args.warmup,
            "r": args.r, "blocks": list(PPT_BLOCKS), "device": device_fingerprint(device),
            "variants": [rows[n] for n in names], "targets": targets}


def markdown(result: dict) -> str:
    lines = [f"{result['model']}, batch {result['batch']}, {result['img']} px, {result['runs']} interleaved runs, "
             f"{result['device']['device']} ({result['device']['device_name']}, "
             f"{result['device']['threads']} threads, torch {result['device']['torch']})", "",
             "| variant | GMACs/img | spec GMACs | MACs vs dense | img/s (p50) | img/s (best) | throughput vs dense "
             "| paired vs dense | p50 ms | p95 ms | pool fraction per block |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in result["variants"]:
        spec = f"{v['spec_gmacs_per_image']:.3f}" if v["spec_gmacs_per_image"] else "-"
        pool = ", ".join(f"{s['block']}: {s['pool_fraction']:.2f}" for s in v["reduction"]
                         if not math.isnan(s["pool_fraction"])) or "-"
        if v["method"] == "tome" and len(v["reduction"]) > 3:
            pool = "1.00 (all blocks)"
        lines.append(f"| {v['variant']} | {v['gmacs_per_image']:.3f} | {spec} | {v['macs_ratio']:.3f} "
                     f"| {v['throughput_per_s']:.1f} | {v['throughput_best_per_s']:.1f} | {v['throughput_ratio']:.2f} "
                     f"| {v['throughput_ratio_paired']:.2f} | {v['latency_p50_ms']:.0f} "
                     f"| {v['latency_p95_ms']:.0f} | {pool} |")
    lines.append("")
    for name, t in result["targets"].items():
        lines.append(f"- {name} = {t['value']:.3f} (target {t['target']}): {'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)


def _json_safe(value):
    """Strict JSON has no NaN/inf: inf (tau of the all-pool variant) as a string, NaN (no decision) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
