"""APIServe / InferCept: every interception policy on the same seeded workload, swept over arrival rates, in the
discrete-event simulator (language.md §1.10a), with the paper's GPT-J constants and with constants measured on
this machine.

    python benchmarks/apiserve.py                      # GPT-J: 15 virtual minutes per point; measured: 5
    python benchmarks/apiserve.py --quick              # smoke: 2 virtual minutes per point, fewer rates
    python benchmarks/apiserve.py --calibration gptj --window 1800 --rates 1,1.5,2,2.5,3,3.5,4   # the paper's sweep
    python benchmarks/apiserve.py --calibration measured --saturation 384   # measured a, c; S as on the A100
    python benchmarks/apiserve.py --calibration measured --a-ms 0.1 --c-ms 3 --saturation 16 --swap-gbps 4

The workload mixes the six call types of Table 1 uniformly, Poisson arrivals; request k has the same content at
every rate. A policy's sweep stops at the first rate whose mean normalised latency exceeds 3× the bound (it has
collapsed; higher rates only take longer to simulate). Sustainable rate = the highest rate whose mean normalised
latency stays within --latency-bound-ms, interpolated between swept rates. The paper's expected outcomes
(§1.11) are printed PASS/FAIL, not asserted. `--mlflow` logs the JSON, the plots and the headline metrics to the
`paperops-apiserve` experiment.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.apiserve.costs import GPTJ_6B_A100, IterationTimeModel, ServingPreset, from_fit
from models.apiserve.scheduler import POLICIES
from models.apiserve.simulator import SimulationResult, simulate, sustainable_rate
from models.apiserve.workload import generate_workload
from settings import state_dir

GPTJ_RATES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
QUICK_RATES = (1.0, 2.0, 3.0, 4.0, 5.0)
COLLAPSE_FACTOR = 3.0
LONG_CALLS = {"chatbot": 1.0, "image": 1.0, "tts": 1.0}
CALIBRATION_COUNTS = [16, 32, 64, 128, 192, 256, 384, 512, 768]


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


def report(preset: ServingPreset, grid: dict[str, list[SimulationResult]], long_calls: dict[str, SimulationResult],
           bound_s: float, reference_rate: float) -> tuple[dict[str, float], list[tuple[str, bool]]]:
    rates = sorted({r.rate_per_s for results in grid.values() for r in results})
    sustainable = {p: sustainable_rate([(r.rate_per_s, r.latency_mean) for r in results], bound_s)
                   for p, results in grid.items()}
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
        at = min(results, key=lambda r: abs(r.rate_per_s - reference_rate))
        ratio = f"{sustainable[policy] / sustainable['vllm']:.2f}" if sustainable["vllm"] else "—"
        print(f"| {policy} | {sustainable[policy]:.2f} | {ratio} | {at.rate_per_s:g} | {at.completed_per_s:.2f} "
              f"| {ms(at.latency_p50)} | {ms(at.latency_p90)} | {ms(at.latency_p99)} | {at.ttft_mean:.2f} "
              f"| {at.recompute_share:.1%} | {at.memory_waste:.1%} |")
    if long_calls:
        rate = next(iter(long_calls.values())).rate_per_s
        print(f"\nChatbot/Image/TTS only, {rate:g} req/s: mean normalised latency "
              + ", ".join(f"{p} {ms(r.latency_mean)}" for p, r in long_calls.items()) + " ms/token")

    def at_reference(policy: str) -> SimulationResult:
        return min(grid[policy], key=lambda r: abs(r.rate_per_s - reference_rate))

    checks = [
        ("InferCept sustainable rate >= 1.5x vLLM's (paper: 1.6-2x)",
         sustainable["infercept"] >= 1.5 * sustainable["vllm"]),
        ("sustainable rate: InferCept >= ImprovedDiscard >= vLLM",
         sustainable["infercept"] >= sustainable["improved_discard"] >= sustainable["vllm"]),
        ("vLLM recomputes >= 25% of forward time, InferCept < 10%",
         at_reference("vllm").recompute_share >= 0.25 and at_reference("infercept").recompute_share < 0.10),
        ("memory waste falls > 5x from vLLM to InferCept",
         at_reference("infercept").memory_waste * 5 < at_reference("vllm").memory_waste),
    ]
    if long_calls:
        checks.append(("Preserve collapses when Chatbot/Image/TTS dominate (> 5x vLLM's latency)",
                       long_calls["preserve"].latency_mean > 5 * long_calls["vllm"].latency_mean))
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return sustainable, checks


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


def log_to_mlflow(out: dict, artifacts: list[Path]) -> None:
    import mlflow

    from tasks.tracking import configure_tracking, ensure_experiment

    client = configure_tracking()
    with mlflow.start_run(experiment_id=ensure_experiment(client, "apiserve"), run_name="benchmark-simulator"):
        mlflow.log_params({"seed": out["seed"], "latency_bound_ms": out["bound_ms"]})
        for name, calibration in out["calibrations"].items():
            mlflow.log_param(f"{name}.window_s", calibration["window_s"])
            for policy, rate in calibration["sustainable_rate"].items():
                mlflow.log_metric(f"{name}.sustainable_rate.{policy}", rate)
        for path in artifacts:
            mlflow.log_artifact(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", choices=("gptj", "measured", "both"), default="both")
    parser.add_argument("--rates", default=None, help="comma-separated GPT-J arrival rates, req/s")
    parser.add_argument("--window", type=float, default=None, help="virtual seconds of arrivals per point (GPT-J)")
    parser.add_argument("--measured-window", type=float, default=None,
                        help="the same for the measured constants: a CPU iteration is several times shorter than an "
                             "A100 one, so a virtual second costs as many times more iterations to simulate")
    parser.add_argument("--seed", type=int, default=0)
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
    windows = {GPTJ_6B_A100.name: args.window or (120.0 if args.quick else 900.0)}
    measured_window = args.measured_window or (120.0 if args.quick else 300.0)
    base_rates = [float(r) for r in args.rates.split(",")] if args.rates else list(
        QUICK_RATES if args.quick else GPTJ_RATES)
    policies = args.policies.split(",")
    for required in ("vllm", "improved_discard", "infercept", "preserve"):
        if required not in policies:
            parser.error(f"--policies must include {required} (the checks compare it)")
    bound = args.latency_bound_ms / 1000
    presets = [GPTJ_6B_A100] if args.calibration in ("gptj", "both") else []
    if args.calibration in ("measured", "both"):
        measured = measured_preset(args)
        presets += [measured] if measured else []

    started = time.perf_counter()
    out: dict = {"seed": args.seed, "bound_ms": args.latency_bound_ms, "calibrations": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    artifacts = [args.out]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for preset in presets:
            window = windows.get(preset.name, measured_window)
            scale = rate_scale(preset)
            rates = [round(r * scale, 3) for r in base_rates]
            sweeps = {p: pool.submit(sweep_policy, p, preset, rates, window, args.seed, bound) for p in policies}
            long_rate = round(1.5 * scale, 3)
            longs = {p: pool.submit(long_call_check, p, preset, long_rate, window, args.seed)
                     for p in ("vllm", "preserve", "infercept")}
            grid = {p: f.result() for p, f in sweeps.items()}
            long_calls = {p: f.result() for p, f in longs.items()}
            sustainable, checks = report(preset, grid, long_calls, bound, round(args.reference_rate * scale, 3))
            figure = args.out.with_name(f"{args.out.stem}-{preset.name}.png")
            plot(figure, preset, grid, bound)
            artifacts.append(figure)
            out["calibrations"][preset.name] = {
                "preset": {**asdict(preset)}, "window_s": window, "rates": rates, "sustainable_rate": sustainable,
                "checks": [{"check": t, "pass": ok} for t, ok in checks],
                "grid": {p: [r.as_dict() for r in results] for p, results in grid.items()},
                "long_calls": {p: r.as_dict() for p, r in long_calls.items()}}
    out["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{out['seconds']:.0f} s; wrote {args.out} and plots beside it")
    if args.mlflow:
        log_to_mlflow(out, artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
