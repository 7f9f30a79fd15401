"""APIServe / InferCept: every interception policy on the same seeded workload, swept over arrival rates, in the
discrete-event simulator (this project's miniature), with the paper's GPT-J constants and with constants measured on
this machine.

    python benchmarks/apiserve.py                      # GPT-J: 15 virtual minutes per point; measured: 5
    python benchmarks/apiserve.py --quick              # smoke: 2 virtual minutes per point, fewer rates
    python benchmarks/apiserve.py --calibration gptj --window 1800 --rates 1,1.5,2,2.5,3,3.5,4   # the paper's sweep
    python benchmarks/apiserve.py --calibration gptj --window 1800 --seeds 3 --mlflow   # a reproduction over seeds
    python benchmarks/apiserve.py --calibration measured --saturation 384   # measured a, c; S as on the A100
    python benchmarks/apiserve.py --calibration measured --a-ms 0.1 --c-ms 3 --saturation 16 --swap-gbps 4

The workload mixes the six call types of Table 1 uniformly, Poisson arrivals; request k has the same content at
every rate. A policy's sweep stops at the first rate whose mean normalised latency exceeds 3× the bound (it has
collapsed; higher rates only take longer to simulate). Sustainable rate = the highest rate whose mean normalised
latency stays within --latency-bound-ms, interpolated between swept rates. The paper's expected outcomes
(from its claims, arXiv 2402.01869) are printed PASS/FAIL, not asserted.

`--seeds N` runs seeds 0..N-1, each on its own seeded workload, and reports every policy's figures per seed. With
N >= 2 it is a reproduction: each figure's mean with its Student-t interval over the seeds, the InferCept / vLLM
ratios with theirs, and the decisive comparisons below judged on the paired per-seed differences
(models/common/stats.py, as `paperops reproduce` judges a paper's criteria). `--mlflow` logs one run to the
`paperops-apiserve` experiment: a single seed as a `benchmark` run, several as a `reproduction` run in the shape
`paperops reproduce` gives (tasks/reproduce.py: `reproduction.json`, `<policy>.<metric>.mean/.low/.high`,
`ours.<figure>.*`, `decisive.<name>.*`, `headline.*`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.apiserve.costs import GPTJ_6B_A100, IterationTimeModel, ServingPreset, from_fit
from models.apiserve.scheduler import POLICIES
from models.apiserve.simulator import SimulationResult, simulate, sustainable_rate
from models.apiserve.workload import generate_workload
from models.common.stats import Interval
from settings import state_dir

GPTJ_RATES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
QUICK_RATES = (1.0, 2.0, 3.0, 4.0, 5.0)
COLLAPSE_FACTOR = 3.0
LONG_CALLS = {"chatbot": 1.0, "image": 1.0, "tts": 1.0}
CALIBRATION_COUNTS = [16, 32, 64, 128, 192, 256, 384, 512, 768]
PAPER = "apiserve"
CLAIMED_RATE_RATIO = 1.5  # our miniature's check: InferCept sustains >= 1.5x vLLM's rate (the paper: 1.6-2x)


def workload_seed(seed: int) -> int:
    """The workload generator draws arrivals from Random(s) and contents from Random(s + 1): even seeds keep the
    streams of different reproduction seeds disjoint (seed 0 is the single-seed runs' workload)."""
    return 2 * seed


# The comparisons the paper's claims make (arXiv 2402.01869), fixed here before any reproduction ran:
# (name, metric, method, baseline, claim, higher_is_better). Judged on the paired per-seed figures.
CRITERIA = (
    ("infercept_sustains_more_than_vllm", "sustainable_rate", "infercept", "vllm", "better", True),
    ("improved_discard_sustains_more_than_vllm", "sustainable_rate", "improved_discard", "vllm", "better", True),
    ("infercept_not_below_improved_discard", "sustainable_rate", "infercept", "improved_discard", "not_worse", True),
    ("infercept_recomputes_less_than_vllm", "recompute_share", "infercept", "vllm", "better", False),
    ("infercept_wastes_less_memory_than_vllm", "memory_waste", "infercept", "vllm", "better", False),
    ("vllm_beats_preserve_on_long_calls", "long_call_latency_ms", "vllm", "preserve", "better", False),
)
HEADLINE = ("headline", "sustainable_rate", "infercept", "vllm", "better", True)


def measured_preset(args: argparse.Namespace) -> ServingPreset | None:
    """Constants of this machine: from the command line, else fitted by calibration.py on a tiny LLaMA of the CBQ
    profile's shape (timing does not depend on the weights). KV pools in tokens as in the GPT-J preset, so the
    two calibrations differ only in time."""
    if args.a_ms is not None:
        model = IterationTimeModel(args.a_ms, args.c_ms, args.saturation)
        return from_fit(model, name="given", kv_bytes_per_token=args.kv_bytes,
                        bandwidth_bytes_per_s=args.swap_gbps * 1e9,
                        gpu_kv_tokens=GPTJ_6B_A100.gpu_kv_tokens, host_kv_tokens=GPTJ_6B_A100.host_kv_tokens,
                        source="--a-ms/--c-ms/--saturation/--swap-gbps")
    try:
        import torch
        from transformers import LlamaForCausalLM

        from models.apiserve.calibration import fit_iteration_time, measure_iteration_times, measure_swap_bandwidth
        from models.apiserve.runner import PagedKVCache
        from models.common.lm import LMConfig, llama_config
    except ImportError as err:
        print(f"measured calibration skipped ({err}); pass --a-ms --c-ms --saturation instead", file=sys.stderr)
        return None
    torch.manual_seed(0)
    lm = LlamaForCausalLM(llama_config(LMConfig())).eval()
    # One thread, and at each n the fastest of three passes: on a shared 2-core machine the other jobs' load only
    # ever adds time, so the minimum is the estimate least disturbed by it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            passes = [measure_iteration_times(lm, CALIBRATION_COUNTS, repeats=3, warmup=1) for _ in range(3)]
            times = [min(at_n) for at_n in zip(*passes)]
            model = fit_iteration_time(CALIBRATION_COUNTS, times)
            kv = PagedKVCache.for_model(lm, gpu_blocks=64, host_blocks=64, block_size=GPTJ_6B_A100.block_size)
            bandwidth = measure_swap_bandwidth(kv, blocks=64, repeats=5)
    finally:
        torch.set_num_threads(threads)
    kv_bytes = kv.shape.bytes_per_token(kv.gpu_keys.dtype)
    print(f"measured on this machine (tiny LLaMA, CPU, 1 thread): T(n) = {model.a_ms_per_token:.4f}·n + "
          f"{model.c_ms:.2f} ms, S = {model.saturation_tokens}; swap {bandwidth / 1e9:.1f} GB/s at "
          f"{kv_bytes} B/token; times {[round(t, 1) for t in times]} ms at n = {CALIBRATION_COUNTS}")
    if model.a_ms_per_token <= 0 or model.c_ms < 0:
        print("measured calibration skipped: the fit is not physical (the machine was too busy to time it); "
              "rerun, or pass --a-ms --c-ms --saturation", file=sys.stderr)
        return None
    if args.saturation is not None:  # the saturation rule finds no flat region on a CPU: S is its smallest n
        model = replace(model, saturation_tokens=args.saturation)
    return from_fit(model, name=f"measured-cpu-S{model.saturation_tokens}", kv_bytes_per_token=kv_bytes,
                    bandwidth_bytes_per_s=bandwidth,
                    gpu_kv_tokens=GPTJ_6B_A100.gpu_kv_tokens, host_kv_tokens=GPTJ_6B_A100.host_kv_tokens,
                    source="calibration.py on a random tiny LLaMA (LMConfig defaults), this machine's CPU")


def rate_scale(preset: ServingPreset) -> float:
    """Rates for a preset relative to GPT-J's: the ratio of decode throughputs at a 128-token iteration, so both
    sweeps cover a comparable range of load."""
    return GPTJ_6B_A100.time_model.forward_ms(128) / preset.time_model.forward_ms(128)


def sweep_policy(policy: str, preset: ServingPreset, rates: list[float], window_s: float, seed: int,
                 bound_s: float) -> list[SimulationResult]:
    results = []
    for rate in rates:
        result = simulate(generate_workload(rate, window_s, seed), policy, preset, window_s=window_s)
        results.append(replace(result, rate_per_s=rate))
        if result.latency_mean > COLLAPSE_FACTOR * bound_s:
            break
    return results


def long_call_check(policy: str, preset: ServingPreset, rate: float, window_s: float, seed: int) -> SimulationResult:
    workload = generate_workload(rate, window_s, seed, mix=LONG_CALLS)
    return replace(simulate(workload, policy, preset, window_s=window_s), rate_per_s=rate)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def at_reference(results: list[SimulationResult], reference_rate: float) -> SimulationResult:
    """The point of a sweep at the reference rate, or at the highest rate run for a policy that collapsed below it."""
    return min(results, key=lambda r: abs(r.rate_per_s - reference_rate))


def seed_figures(grid: dict[str, list[SimulationResult]], long_calls: dict[str, SimulationResult], bound_s: float,
                 reference_rate: float) -> dict[str, dict[str, float]]:
    """policy -> figure of one seed: the sustainable rate, the reference-rate point's latency, completions,
    recompute share and memory waste, and the mean latency of the long-calls-only mix."""
    figures = {}
    for policy, results in grid.items():
        at = at_reference(results, reference_rate)
        figures[policy] = {
            "sustainable_rate": sustainable_rate([(r.rate_per_s, r.latency_mean) for r in results], bound_s),
            "latency_mean_ms": at.latency_mean * 1000, "completed_per_s": at.completed_per_s,
            "recompute_share": at.recompute_share, "memory_waste": at.memory_waste}
        if policy in long_calls:
            figures[policy]["long_call_latency_ms"] = long_calls[policy].latency_mean * 1000
    return figures


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def ours(figures: dict[str, dict[str, float]]) -> dict[str, float]:
    """One seed's values of the paper's figures: how many times vLLM's rate the others sustain, and by what factor
    InferCept cuts vLLM's recomputation and memory waste."""
    vllm, infercept = figures["vllm"], figures["infercept"]
    return {"infercept_rate_ratio_vs_vllm": ratio(infercept["sustainable_rate"], vllm["sustainable_rate"]),
            "improved_discard_rate_ratio_vs_vllm": ratio(figures["improved_discard"]["sustainable_rate"],
                                                         vllm["sustainable_rate"]),
            "memory_waste_ratio_vllm_vs_infercept": ratio(vllm["memory_waste"], infercept["memory_waste"]),
            "recompute_share_vllm": vllm["recompute_share"], "recompute_share_infercept": infercept["recompute_share"]}


def checks(figures: dict[str, dict[str, float]]) -> list[tuple[str, bool]]:
    """The paper's expected outcomes (arXiv 2402.01869) on one seed's figures."""
    rate = {p: f["sustainable_rate"] for p, f in figures.items()}
    vllm, infercept = figures["vllm"], figures["infercept"]
    return [
        (f"InferCept sustainable rate >= {CLAIMED_RATE_RATIO}x vLLM's (paper: 1.6-2x)",
         rate["infercept"] >= CLAIMED_RATE_RATIO * rate["vllm"]),
        ("sustainable rate: InferCept >= ImprovedDiscard >= vLLM",
         rate["infercept"] >= rate["improved_discard"] >= rate["vllm"]),
        ("vLLM recomputes >= 25% of forward time, InferCept < 10%",
         vllm["recompute_share"] >= 0.25 and infercept["recompute_share"] < 0.10),
        ("memory waste falls > 5x from vLLM to InferCept", infercept["memory_waste"] * 5 < vllm["memory_waste"]),
        ("Preserve collapses when Chatbot/Image/TTS dominate (> 5x vLLM's latency)",
         figures["preserve"]["long_call_latency_ms"] > 5 * vllm["long_call_latency_ms"]),
    ]


def print_seed(preset: ServingPreset, grid: dict[str, list[SimulationResult]],
               long_calls: dict[str, SimulationResult], bound_s: float, reference_rate: float) -> None:
    """One seed's tables: latency by rate, then each policy's sustainable rate and reference-rate point."""
    rates = sorted({r.rate_per_s for results in grid.values() for r in results})
    figures = seed_figures(grid, long_calls, bound_s, reference_rate)
    tm = preset.time_model
    print(f"\n## {preset.name}: T(n) = {tm.a_ms_per_token:.4f}·n + {tm.c_ms:.2f} ms, S = {tm.saturation_tokens}, "
          f"PCIe {preset.swap_model.bandwidth_bytes_per_s / 1e9:.1f} GB/s, GPU KV {preset.gpu_kv_tokens} tokens")
    print("\nmean normalised latency (ms/token) by arrival rate (req/s); '—' = not run, policy collapsed earlier")
    print("| policy | " + " | ".join(f"{r:g}" for r in rates) + " |")
    print("|---|" + "---|" * len(rates))
    for policy, results in grid.items():
        by_rate = {r.rate_per_s: r for r in results}
        print(f"| {policy} | " + " | ".join(ms(by_rate[r].latency_mean) if r in by_rate else "—" for r in rates) + " |")
    print(f"\nsustainable rate at mean normalised latency <= {ms(bound_s)} ms/token; the other columns at "
          f"{reference_rate:g} req/s, or at the highest rate run for a policy that collapsed below it")
    print("| policy | sustainable req/s | × vLLM | at req/s | completed req/s | p50 | p90 | p99 ms/token | TTFT s "
          "| recompute share | memory waste |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for policy, results in grid.items():
        at = at_reference(results, reference_rate)
        sustainable = figures[policy]["sustainable_rate"]
        times = ratio(sustainable, figures["vllm"]["sustainable_rate"])
        print(f"| {policy} | {sustainable:.2f} | {times:.2f} | {at.rate_per_s:g} | {at.completed_per_s:.2f} "
              f"| {ms(at.latency_p50)} | {ms(at.latency_p90)} | {ms(at.latency_p99)} | {at.ttft_mean:.2f} "
              f"| {at.recompute_share:.1%} | {at.memory_waste:.1%} |")
    rate = next(iter(long_calls.values())).rate_per_s
    print(f"\nChatbot/Image/TTS only, {rate:g} req/s: mean normalised latency "
          + ", ".join(f"{p} {ms(r.latency_mean)}" for p, r in long_calls.items()) + " ms/token")
    print()
    for text, ok in checks(figures):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def reproduction(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Every policy's figures and our paper figures over the seeds (mean and Student-t interval), and the decisive
    comparisons and the headline judged on the paired per-seed differences: the `variants`, `ours`, `criteria` and
    `headline` of a `paperops reproduce` aggregation (tasks/reproduce.py)."""
    from tasks.evidence import Comparison, judge_seeds
    from tasks.reproduce import interval_over_seeds

    def over_seeds(values: dict[int, float]) -> dict[str, Any] | None:
        finite = {seed: v for seed, v in values.items() if math.isfinite(v)}
        return interval_over_seeds(finite) if finite else None

    variants: dict[str, dict[str, Any]] = {}
    for policy in sorted({p for figures in per_seed.values() for p in figures}):
        for metric in sorted({m for figures in per_seed.values() for m in figures.get(policy, {})}):
            aggregated = over_seeds({seed: f[policy][metric] for seed, f in per_seed.items()
                                     if metric in f.get(policy, {})})
            if aggregated is not None:
                variants.setdefault(policy, {})[metric] = aggregated
    ours_per_seed = {seed: ours(figures) for seed, figures in per_seed.items()}
    figures = {name: aggregated for name in sorted(next(iter(ours_per_seed.values())))
               if (aggregated := over_seeds({seed: v[name] for seed, v in ours_per_seed.items()})) is not None}

    def judged(spec: tuple) -> dict[str, Any]:
        name, metric, method, baseline, claim, higher_is_better = spec
        judgement = judge_seeds(Comparison(name, metric, method, baseline, claim, 0.0, higher_is_better), per_seed)
        pairs = {str(seed): [f.get(method, {}).get(metric), f.get(baseline, {}).get(metric)]
                 for seed, f in sorted(per_seed.items())}
        return judgement.as_dict() | {"per_seed": pairs}

    return {"variants": variants, "ours": figures, "criteria": [judged(spec) for spec in CRITERIA],
            "headline": judged(HEADLINE)}


def print_reproduction(preset: ServingPreset, result: dict[str, Any], seeds: list[int]) -> None:
    def cell(over_seeds: dict[str, Any] | None, fmt: str) -> str:
        if over_seeds is None:
            return "—"
        i = over_seeds["interval"]
        return f"{i['estimate']:{fmt}} [{i['low']:{fmt}}, {i['high']:{fmt}}]"

    print(f"\n## {preset.name}: {len(seeds)} seeds, mean [95 % Student-t interval over seeds]")
    print("| policy | sustainable req/s | latency ms/token | recompute share | memory waste |")
    print("|---|---|---|---|---|")
    for policy, by_metric in result["variants"].items():
        print(f"| {policy} | {cell(by_metric.get('sustainable_rate'), '.2f')} "
              f"| {cell(by_metric.get('latency_mean_ms'), '.1f')} | {cell(by_metric.get('recompute_share'), '.3f')} "
              f"| {cell(by_metric.get('memory_waste'), '.3f')} |")
    print()
    for name, over_seeds in result["ours"].items():
        print(f"{name}: {cell(over_seeds, '.3f')}")
    ratio_interval = result["ours"].get("infercept_rate_ratio_vs_vllm")
    if ratio_interval is not None:
        low = ratio_interval["interval"]["low"]
        print(f"{'PASS' if low >= CLAIMED_RATE_RATIO else 'FAIL'}  the ratio's interval lies above "
              f"{CLAIMED_RATE_RATIO} (low end {low:.3f})")
    print()
    for row in result["criteria"] + [result["headline"]]:
        print(f"{row['name']}: {row['outcome']} — {row.get('verdict', row['note'])}")


def config_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def plot(path: Path, preset: ServingPreset, grid: dict[str, list[SimulationResult]], bound_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for policy, results in grid.items():
        rates = [r.rate_per_s for r in results]
        axes[0].plot(rates, [r.latency_mean * 1000 for r in results], marker="o", label=policy)
        axes[1].plot(rates, [r.recompute_share for r in results], marker="o", label=policy)
        axes[2].plot(rates, [r.memory_waste for r in results], marker="o", label=policy)
    axes[0].axhline(bound_s * 1000, color="grey", linestyle="--", linewidth=1)
    axes[0].set(yscale="log", ylabel="mean normalised latency (ms/token)")
    axes[1].set(ylabel="recompute share of forward time")
    axes[2].set(ylabel="GPU memory waste (fraction)")
    for ax in axes:
        ax.set(xlabel="arrival rate (req/s)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"InferCept policies, {preset.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_benchmark(out: dict, artifacts: list[Path]) -> None:
    """One seed: the JSON, the plots and each calibration's sustainable rates, as a `benchmark` run."""
    import mlflow

    from tasks.tracking import configure_tracking, ensure_experiment

    client = configure_tracking()
    with mlflow.start_run(experiment_id=ensure_experiment(client, PAPER), run_name="benchmark-simulator",
                          tags={"paperops.step": "benchmark", "paperops.paper": PAPER}):
        mlflow.log_params({"seeds": json.dumps(out["seeds"]), "latency_bound_ms": out["bound_ms"]})
        for name, calibration in out["calibrations"].items():
            mlflow.log_param(f"{name}.window_s", calibration["window_s"])
            for policy, figures in calibration["per_seed"][str(out["seeds"][0])].items():
                mlflow.log_metric(f"{name}.sustainable_rate.{policy}", figures["sustainable_rate"])
        for path in artifacts:
            mlflow.log_artifact(str(path))


def log_reproduction(profile: str, result: dict[str, Any], settings: dict[str, Any], artifacts: list[Path]) -> str:
    """A `reproduction` run of the paperops-apiserve experiment, tagged and named as tasks/reproduce.py's (the
    calibration preset is its profile; the workloads are generated, so it has no dataset tags and no pipeline runs).
    Returns its run id."""
    from mlflow.entities import Metric

    from tasks.evidence import Comparison, Judgement, log_judgements
    from tasks.lineage import git_commit
    from tasks.reproduce import REPRODUCTION_ARTIFACT, REPRODUCTION_STEP
    from tasks.tracking import configure_tracking, ensure_experiment

    client = configure_tracking()
    record = result | {"paper": PAPER, "profile": profile, "seeds": settings["seeds"],
                       "overrides": settings["overrides"], "config_digest": config_digest(settings),
                       "git_commit": git_commit(), "data": {}, "pipeline_run_ids": {}}
    run = client.create_run(ensure_experiment(client, PAPER), run_name=f"reproduce-{PAPER}-{profile}", tags={
        "paperops.step": REPRODUCTION_STEP, "paperops.paper": PAPER, "paperops.profile": profile,
        "paperops.seeds": json.dumps(record["seeds"]), "paperops.overrides": json.dumps(record["overrides"]),
        "paperops.config_digest": record["config_digest"], "paperops.git_commit": record["git_commit"],
        "paperops.pipeline_run_ids": json.dumps({})})
    run_id = run.info.run_id
    try:
        figures: dict[str, float] = {}
        named = [(f"{policy}.{metric}", over_seeds) for policy, by_metric in record["variants"].items()
                 for metric, over_seeds in by_metric.items()]
        named += [(f"ours.{figure}", over_seeds) for figure, over_seeds in record["ours"].items()]
        for key, over_seeds in named:
            i = over_seeds["interval"]
            figures |= {f"{key}.mean": i["estimate"], f"{key}.low": i["low"], f"{key}.high": i["high"]}
        client.log_batch(run_id, metrics=[Metric(k, v, int(run.info.start_time), 0) for k, v in figures.items()
                                          if math.isfinite(v)])

        def judgement(row: dict[str, Any]) -> Judgement:
            comparison = Comparison(row["name"], row["metric"], row["method"], row["baseline"], row["claim"],
                                    row["margin"], row["higher_is_better"])
            interval = Interval(**row["interval"]) if row["interval"] is not None else None
            return Judgement(comparison, interval, row["holds"], row["note"], row["mcnemar_p"])

        log_judgements(client, run_id, [judgement(row) for row in record["criteria"]], judgement(record["headline"]))
        client.log_dict(run_id, record, REPRODUCTION_ARTIFACT)
        for path in artifacts:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def submit_seed(pool: ProcessPoolExecutor, preset: ServingPreset, policies: list[str], rates: list[float],
                long_rate: float, window_s: float, seed: int, bound_s: float
                ) -> tuple[dict[str, Future], dict[str, Future]]:
    workload = workload_seed(seed)
    sweeps = {p: pool.submit(sweep_policy, p, preset, rates, window_s, workload, bound_s) for p in policies}
    longs = {p: pool.submit(long_call_check, p, preset, long_rate, window_s, workload)
             for p in ("vllm", "preserve", "infercept")}
    return sweeps, longs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", choices=("gptj", "measured", "both"), default="both")
    parser.add_argument("--rates", default=None, help="comma-separated GPT-J arrival rates, req/s")
    parser.add_argument("--window", type=float, default=None, help="virtual seconds of arrivals per point (GPT-J)")
    parser.add_argument("--measured-window", type=float, default=None,
                        help="the same for the measured constants: a CPU iteration is several times shorter than an "
                             "A100 one, so a virtual second costs as many times more iterations to simulate")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds 0..N-1, one seeded workload each; N >= 2 is a reproduction over seeds")
    parser.add_argument("--latency-bound-ms", type=float, default=50.0)
    parser.add_argument("--reference-rate", type=float, default=2.0, help="GPT-J rate the per-policy table shows")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--a-ms", type=float, default=None)
    parser.add_argument("--c-ms", type=float, default=None)
    parser.add_argument("--saturation", type=int, default=None,
                        help="S; alone, it replaces the saturation point the measured calibration found")
    parser.add_argument("--swap-gbps", type=float, default=10.0, help="with --a-ms: host<->device GB/s")
    parser.add_argument("--kv-bytes", type=int, default=8192, help="with --a-ms: KV bytes per token")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=state_dir() / "benchmarks" / "apiserve.json")
    parser.add_argument("--mlflow", action="store_true")
    args = parser.parse_args(argv)
    if args.a_ms is not None and (args.c_ms is None or args.saturation is None):
        parser.error("--a-ms needs --c-ms and --saturation")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    windows = {GPTJ_6B_A100.name: args.window or (120.0 if args.quick else 900.0)}
    measured_window = args.measured_window or (120.0 if args.quick else 300.0)
    base_rates = [float(r) for r in args.rates.split(",")] if args.rates else list(
        QUICK_RATES if args.quick else GPTJ_RATES)
    policies = args.policies.split(",")
    for required in ("vllm", "improved_discard", "infercept", "preserve"):
        if required not in policies:
            parser.error(f"--policies must include {required} (the checks compare it)")
    bound = args.latency_bound_ms / 1000
    seeds = list(range(args.seeds))
    presets = [GPTJ_6B_A100] if args.calibration in ("gptj", "both") else []
    if args.calibration in ("measured", "both"):
        measured = measured_preset(args)
        presets += [measured] if measured else []

    started = time.perf_counter()
    out: dict = {"seeds": seeds, "bound_ms": args.latency_bound_ms, "calibrations": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    artifacts = [args.out]
    reproductions = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for preset in presets:
            window = windows.get(preset.name, measured_window)
            scale = rate_scale(preset)
            rates = [round(r * scale, 3) for r in base_rates]
            reference = round(args.reference_rate * scale, 3)
            runs = {seed: submit_seed(pool, preset, policies, rates, round(1.5 * scale, 3), window, seed, bound)
                    for seed in seeds}
            per_seed: dict[int, dict[str, dict[str, float]]] = {}
            calibration: dict[str, Any] = {"preset": asdict(preset), "window_s": window, "rates": rates,
                                           "reference_rate": reference, "per_seed": {}, "seeds": {}}
            for seed, (sweeps, longs) in runs.items():
                grid = {p: f.result() for p, f in sweeps.items()}
                long_calls = {p: f.result() for p, f in longs.items()}
                per_seed[seed] = seed_figures(grid, long_calls, bound, reference)
                if len(seeds) == 1:
                    print_seed(preset, grid, long_calls, bound, reference)
                else:
                    print(f"{preset.name} seed {seed}: sustainable req/s "
                          + ", ".join(f"{p} {f['sustainable_rate']:.2f}" for p, f in per_seed[seed].items()))
                figure = args.out.with_name(f"{args.out.stem}-{preset.name}-seed{seed}.png")
                plot(figure, preset, grid, bound)
                artifacts.append(figure)
                calibration["per_seed"][str(seed)] = per_seed[seed]
                calibration["seeds"][str(seed)] = {
                    "checks": [{"check": t, "pass": ok} for t, ok in checks(per_seed[seed])],
                    "grid": {p: [r.as_dict() for r in results] for p, results in grid.items()},
                    "long_calls": {p: r.as_dict() for p, r in long_calls.items()}}
            if len(seeds) > 1:
                calibration["reproduction"] = reproduction(per_seed)
                print_reproduction(preset, calibration["reproduction"], seeds)
                reproductions.append((preset, calibration))
            out["calibrations"][preset.name] = calibration
    out["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{out['seconds']:.0f} s; wrote {args.out} and plots beside it")
    if args.mlflow and len(seeds) == 1:
        log_benchmark(out, artifacts)
    for preset, calibration in reproductions if args.mlflow else []:
        settings = {"seeds": seeds, "overrides": list(sys.argv[1:] if argv is None else argv),
                    "preset": calibration["preset"], "window_s": calibration["window_s"], "rates": calibration["rates"],
                    "reference_rate": calibration["reference_rate"], "bound_ms": args.latency_bound_ms,
                    "policies": policies}
        run_id = log_reproduction(preset.name, calibration["reproduction"], settings, artifacts)
        print(f"logged the {preset.name} reproduction as run {run_id} of paperops-{PAPER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
