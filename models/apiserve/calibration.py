"""Measure the runner's iteration time on this machine and fit the scheduler's cost model `T(n) = a·n + c` and
saturation point S (InferCept profiles a, c per model and GPU in its exps/*_bench.sh scripts, with S = 384 on an
A100 in vllm/core/scheduler_v2.py; official code WukLab/InferCept).

Measurement: for each token count n, one iteration of fresh prefill chunks totalling n tokens (chunks of at most
`chunk_tokens`, so attention over long contexts does not bend the line), timed as the fastest of `repeats` runs
after `warmup` runs (other processes on a shared machine only ever add time, so the minimum is the least
disturbed estimate).

Saturation rule. Below S an iteration is bound by fixed costs (kernel launches, weight reads) and extra tokens are
almost free; past S every token costs its share of compute. S is the largest measured n before the first one
whose time exceeds the time of the smallest measured n by more than `FLAT_TOLERANCE` (10 %): iterations of up to
S tokens cost about what the smallest one costs. On a GPU that is the flat region under the compute roof; on a
CPU, where time grows from the first token, it is the smallest measured n (or a little more while the constant
c dominates). Then a and c are the least-squares line through the points past S, so the flat region does not
tilt it. Comparing times with a 10 % band, rather than slopes between neighbouring points, keeps the rule steady
under the timing noise of a shared machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from models.apiserve.costs import IterationTimeModel
from models.apiserve.runner import ModelRunner, PagedKVCache
from models.apiserve.scheduler import ScheduledChunk

FLAT_TOLERANCE = 0.10


@dataclass(frozen=True)
class Calibration:
    token_counts: list[int]
    times_ms: list[float]           # fastest iteration time at each token count
    model: IterationTimeModel


def least_squares_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) minimising the squared error of y ≈ slope·x + intercept."""
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct x values")
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x


def saturation_point(token_counts: list[int], times_ms: list[float]) -> int:
    """The rule of this module's docstring, on measurements sorted by token count."""
    flat_limit = (1 + FLAT_TOLERANCE) * times_ms[0]
    saturation = token_counts[0]
    for n, t in zip(token_counts, times_ms):
        if t > flat_limit:
            break
        saturation = n
    return saturation


def fit_iteration_time(token_counts: list[int], times_ms: list[float]) -> IterationTimeModel:
    """S by the saturation rule, then a, c by least squares on the points past S (at least the last two)."""
    if len(token_counts) < 3:
        raise ValueError("the fit needs at least three token counts")
    order = sorted(range(len(token_counts)), key=token_counts.__getitem__)
    counts, times = [token_counts[i] for i in order], [times_ms[i] for i in order]
    saturation = saturation_point(counts, times)
    first = min(counts.index(saturation) + 1, len(counts) - 2)
    a, c = least_squares_line(counts[first:], times[first:])
    return IterationTimeModel(a_ms_per_token=a, c_ms=c, saturation_tokens=saturation)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_iteration_times(lm: LlamaForCausalLM, token_counts: list[int], block_size: int = 16,
                            chunk_tokens: int = 128, repeats: int = 5, warmup: int = 2) -> list[float]:
    """Fastest wall time (ms) of one runner iteration of n prefill tokens, for each n of `token_counts`."""
    blocks_per_chunk = -(-chunk_tokens // block_size)
    most_chunks = -(-max(token_counts) // chunk_tokens)
    kv = PagedKVCache.for_model(lm, gpu_blocks=most_chunks * blocks_per_chunk, host_blocks=0, block_size=block_size)
    runner = ModelRunner(lm, kv)
    vocab = lm.config.vocab_size
    times = []
    for n in token_counts:
        chunks = []
        for index, start in enumerate(range(0, n, chunk_tokens)):
            length = min(chunk_tokens, n - start)
            table = list(range(index * blocks_per_chunk, (index + 1) * blocks_per_chunk))
            chunks.append(ScheduledChunk(seq_id=f"calibration-{index}", start=0,
                                         token_ids=[(start + i) % vocab for i in range(length)],
                                         block_table=table, samples_next_token=True, kind="prefill"))
        samples = []
        for run in range(warmup + repeats):
            _synchronize(kv.device)
            began = time.perf_counter()
            runner.forward(chunks)
            _synchronize(kv.device)
            if run >= warmup:
                samples.append((time.perf_counter() - began) * 1000)
        times.append(min(samples))
    return times


def measure_swap_bandwidth(kv: PagedKVCache, blocks: int, repeats: int = 5) -> float:
    """Bytes per second of moving `blocks` KV blocks out to the host pool and back (fastest of `repeats`)."""
    mapping = [(block, block) for block in range(blocks)]
    block_bytes = kv.shape.bytes_per_token(kv.gpu_keys.dtype) * kv.block_size
    samples = []
    for _ in range(repeats):
        _synchronize(kv.device)
        began = time.perf_counter()
        kv.copy_out(mapping)
        kv.copy_in(mapping)
        _synchronize(kv.device)
        samples.append(time.perf_counter() - began)
    return 2 * blocks * block_bytes / min(samples)


def calibrate(lm: LlamaForCausalLM, token_counts: list[int], block_size: int = 16, chunk_tokens: int = 128,
              repeats: int = 5, warmup: int = 2) -> Calibration:
    times = measure_iteration_times(lm, token_counts, block_size, chunk_tokens, repeats, warmup)
    return Calibration(list(token_counts), times, fit_iteration_time(list(token_counts), times))
