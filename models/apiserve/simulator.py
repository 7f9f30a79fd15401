"""Discrete-event execution of the Scheduler on a virtual clock (this project's miniature): the same scheduling code the
engine runs, with the model forward replaced by its iteration-time model T(n) = a·n + c, synchronous swaps by their PCIe
time, and calls by their stated durations. Metrics follow the official driver (WukLab/InferCept,
benchmarks/final_tput_bench_real.py).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence as Seq
from dataclasses import asdict, dataclass

from models.apiserve.blocks import BlockManager
from models.apiserve.costs import ServingPreset
from models.apiserve.scheduler import Scheduler, Sequence
from models.apiserve.workload import RequestSpec

PLACEHOLDER_TOKEN = 0  # only timing matters here, as with the official driver's dummy weights


@dataclass(frozen=True)
class SimulationResult:
    policy: str
    rate_per_s: float  # arrivals per second of the window: the offered load this workload realised
    requests: int
    completed: int  # finished before the horizon
    virtual_s: float  # when the last request finished (or the horizon)
    # Finished during the second half of the arrival window, per second: the first half is warm-up, as a request
    # spends minutes inside its calls before it can complete.
    completed_per_s: float
    tokens_per_s: float  # generated tokens per virtual second
    # Normalised latency (the official driver's): (end − arrival − time inside calls) / generated tokens, seconds per
    # token. Requests still unfinished at the horizon count with end = horizon, a lower bound.
    latency_mean: float
    latency_p50: float
    latency_p90: float
    latency_p99: float
    ttft_mean: float  # arrival → first token
    recompute_share: float  # of forward time
    memory_waste: float  # wasted GPU token·seconds / (GPU capacity × time)
    paused_waste: float
    stall_waste: float
    recompute_waste: float
    swap_blocks: int
    preemptions: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def percentile(values: Seq[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def simulate(workload: Seq[RequestSpec], policy: str, preset: ServingPreset, *, window_s: float,
             max_model_len: int = 2048, horizon_s: float | None = None,
             scheduler_options: dict | None = None) -> SimulationResult:
    """Serve `workload` (arrivals inside [0, window_s)) under `policy` until every request finished or the virtual
    clock passes `horizon_s` (default: window + 10 minutes, enough to drain a stable load: a request spends at
    most a few minutes inside its calls; an overloaded one is left with latencies that are lower bounds)."""
    if preset.time_model.a_ms_per_token < 0 or preset.time_model.c_ms < 0:
        raise ValueError(f"{preset.name}: iteration time {preset.time_model} is not physical (negative a or c)")
    horizon = horizon_s if horizon_s is not None else window_s + 600.0
    blocks = BlockManager(preset.gpu_blocks, preset.host_blocks, preset.block_size)
    scheduler = Scheduler(policy, blocks, preset.time_model, preset.swap_model, max_model_len,
                          **(scheduler_options or {}))
    sequences = [Sequence(f"r{i}", spec.arrival_s, [PLACEHOLDER_TOKEN] * spec.prompt_tokens, list(spec.segments))
                 for i, spec in enumerate(sorted(workload, key=lambda r: r.arrival_s))]
    returns: list[tuple[float, str, int]] = []  # (time the call returns, sequence, result length)
    now, next_arrival = 0.0, 0
    while next_arrival < len(sequences) or scheduler.has_unfinished():
        if now > horizon:
            break
        while next_arrival < len(sequences) and sequences[next_arrival].arrival_s <= now:
            scheduler.add(sequences[next_arrival])
            next_arrival += 1
        while returns and returns[0][0] <= now:
            returned_s, seq_id, n_tokens = heapq.heappop(returns)
            scheduler.resume(seq_id, [PLACEHOLDER_TOKEN] * n_tokens, returned_s)
        plan = scheduler.schedule(now)
        if plan.is_empty:
            upcoming = [sequences[next_arrival].arrival_s] if next_arrival < len(sequences) else []
            upcoming += [returns[0][0]] if returns else []
            if not upcoming:
                raise RuntimeError(f"{policy}: nothing to run and nothing to wait for at t={now:.3f}s, "
                                   "yet requests are unfinished")
            now = max(now, min(upcoming))
            continue
        now += preset.time_model.forward_s(plan.num_tokens) + plan.stall_s
        sampled = {c.seq_id: PLACEHOLDER_TOKEN for c in plan.chunks if c.samples_next_token}
        for event in scheduler.finish_iteration(plan, sampled, now):
            if event.kind == "intercept":
                call = event.call
                heapq.heappush(returns, (now + (call.duration_s or 0.0), event.seq_id, call.returned_tokens or 0))
    return _summarise(policy, sequences, scheduler, window_s, min(now, horizon))


def _summarise(policy: str, sequences: list[Sequence], scheduler: Scheduler, window_s: float,
               end_s: float) -> SimulationResult:
    stats = scheduler.stats
    latencies, ttfts = [], []
    for seq in sequences:
        end = seq.finish_s if seq.finish_s is not None else end_s
        inside_calls = seq.intercepted_s + (end - seq.call_started_s if seq.call is not None else 0.0)
        latencies.append((end - seq.arrival_s - inside_calls) / max(seq.generated, 1))
        ttfts.append((seq.first_token_s if seq.first_token_s is not None else end) - seq.arrival_s)
    finished = [s for s in sequences if s.finish_s is not None]
    capacity = stats.capacity_token_s or math.nan
    rate = len(sequences) / window_s
    return SimulationResult(
        policy=policy, rate_per_s=rate, requests=len(sequences), completed=len(finished), virtual_s=end_s,
        completed_per_s=sum(1 for s in finished if window_s / 2 < s.finish_s <= window_s) / (window_s / 2),
        tokens_per_s=sum(s.generated for s in sequences) / end_s if end_s else 0.0,
        latency_mean=sum(latencies) / len(latencies) if latencies else math.nan,
        latency_p50=percentile(latencies, 50), latency_p90=percentile(latencies, 90),
        latency_p99=percentile(latencies, 99),
        ttft_mean=sum(ttfts) / len(ttfts) if ttfts else math.nan,
        recompute_share=stats.recompute_s / stats.forward_s if stats.forward_s else 0.0,
        memory_waste=stats.waste_token_s / capacity, paused_waste=stats.paused_waste_token_s / capacity,
        stall_waste=stats.stall_waste_token_s / capacity, recompute_waste=stats.recompute_waste_token_s / capacity,
        swap_blocks=stats.swap_out_blocks + stats.swap_in_blocks, preemptions=stats.preemptions)


def sustainable_rate(points: Iterable[tuple[float, float]], latency_bound: float) -> float:
    """The highest request rate whose normalised latency stays within the bound, from (rate, latency) points of a
    sweep: linear interpolation between the last point inside the bound and the first one past it. 0 when even
    the lowest rate misses it; the highest rate swept when none does."""
    ordered = sorted(points)
    if not ordered or ordered[0][1] > latency_bound:
        return 0.0
    for (r0, l0), (r1, l1) in zip(ordered, ordered[1:]):
        if l1 > latency_bound:
            return r0 + (r1 - r0) * (latency_bound - l0) / (l1 - l0)
    return ordered[-1][0]
