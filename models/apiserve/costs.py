"""The cost model InferCept schedules with (Abhyankar et al., ICML 2024, arXiv 2402.01869, §3.2 and §4.1–§4.2; the
official WukLab/InferCept vllm/core/scheduler_v2.py): iteration time, swap time, the per-iteration swap budget, and the
GPU-memory waste of each way to hold a paused request's KV cache.

Waste is in token·seconds (KV tokens held idle × seconds). Multiplying by the KV bytes per token gives the paper's
byte·seconds; every comparison between actions is invariant to that factor, so the formulas leave it out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class IterationTimeModel:
    """T(n) = a·n + c for one forward iteration over n query tokens; past `saturation_tokens` (S) the GPU is
    compute-bound, which is why a chunk of recomputation is sized to fill an iteration up to S and no further."""

    a_ms_per_token: float
    c_ms: float
    saturation_tokens: int

    def forward_ms(self, n_tokens: float) -> float:
        return self.a_ms_per_token * n_tokens + self.c_ms

    def forward_s(self, n_tokens: float) -> float:
        return self.forward_ms(n_tokens) / 1000.0


@dataclass(frozen=True)
class SwapTimeModel:
    """T_swap(n) = n·M / bandwidth: moving n tokens of KV between GPU and host memory."""

    bytes_per_token: int
    bandwidth_bytes_per_s: float

    def seconds(self, n_tokens: float) -> float:
        return n_tokens * self.bytes_per_token / self.bandwidth_bytes_per_s

    def tokens_within(self, seconds: float) -> int:
        return int(seconds * self.bandwidth_bytes_per_s // self.bytes_per_token)


def swap_budget_tokens(time_model: IterationTimeModel, swap_model: SwapTimeModel, batch_tokens: int) -> int:
    """N_i: the KV tokens that can cross PCIe while one iteration of `batch_tokens` runs, i.e. T_swap(N_i) =
    T_fwd(B_i) (paper §4.1). Swaps within it are hidden behind compute (layer-pipelined copies on another stream)."""
    return swap_model.tokens_within(time_model.forward_s(batch_tokens))


@dataclass(frozen=True)
class ServingPreset:
    """One model on one accelerator: what the scheduler and the simulator need to know about it."""

    name: str
    time_model: IterationTimeModel
    swap_model: SwapTimeModel
    block_size: int
    gpu_kv_tokens: int
    host_kv_tokens: int
    source: str

    @property
    def gpu_blocks(self) -> int:
        return self.gpu_kv_tokens // self.block_size

    @property
    def host_blocks(self) -> int:
        return self.host_kv_tokens // self.block_size


GPTJ_KV_BYTES_PER_TOKEN = 28 * 2 * 4096 * 2  # layers × (K, V) × hidden × fp16 bytes = 458,752 B
# The official bench scripts (exps/6B_bench.sh) patch a swap model into scheduler_v2 under which about 605 KV tokens
# (t_sin + t_sout at the 384-token iteration) cross PCIe during one saturated GPT-J iteration T(384) = 27.8 ms:
# 605 × 458,752 B / 27.8 ms ≈ 10 GB/s effective (a PCIe 4.0 x16 link peaks near 25 GB/s; pinned, layer-split
# copies reach less). We use the effective figure.
GPTJ_EFFECTIVE_PCIE_BYTES_PER_S = 10e9

GPTJ_6B_A100 = ServingPreset(
    name="gptj-6b-a100",
    time_model=IterationTimeModel(a_ms_per_token=0.0463, c_ms=10.0, saturation_tokens=384),
    swap_model=SwapTimeModel(GPTJ_KV_BYTES_PER_TOKEN, GPTJ_EFFECTIVE_PCIE_BYTES_PER_S),
    block_size=16,
    # A100-40GB at 90 % utilisation minus 12.1 GB of fp16 GPT-J weights and ~1.5 GB activations ≈ 22 GB of KV
    # ≈ 48k tokens. Host pool: the bench scripts' 128 GB swap space ≈ 279k tokens.
    gpu_kv_tokens=48_000,
    host_kv_tokens=279_000,
    source="a, c: exps/6B_bench.sh (GPT-J-6B, 1×A100); S = 384 and block 16: scheduler_v2.py; "
           "PCIe and KV pool sizes: derived, see costs.py",
)


def from_fit(time_model: IterationTimeModel, *, name: str = "measured", kv_bytes_per_token: int,
             bandwidth_bytes_per_s: float, block_size: int = 16, gpu_kv_tokens: int, host_kv_tokens: int,
             source: str = "fitted on this machine") -> ServingPreset:
    """A preset around an iteration-time model measured on this machine (calibration.py fits a, c and S)."""
    return ServingPreset(name, time_model, SwapTimeModel(kv_bytes_per_token, bandwidth_bytes_per_s), block_size,
                         gpu_kv_tokens, host_kv_tokens, source)


# ---- waste of each action for one paused request (paper §3.2) -------------------------------------------------
# C = the paused request's context tokens; the iteration and swap models give T_fwd and T_swap in seconds.

def preserve_waste(interception_s: float, context_tokens: float) -> float:
    """W_P = T_int · C: the context sits idle in GPU memory for the whole call."""
    return interception_s * context_tokens


def discard_waste(context_tokens: float, other_tokens: float, time_model: IterationTimeModel) -> float:
    """W_D = T_fwd(C)·C + T_fwd(C)·C_other: recomputing all C tokens in one iteration holds the context and stalls
    every other request's memory for that iteration."""
    t = time_model.forward_s(context_tokens)
    return t * context_tokens + t * other_tokens


def swap_waste(context_tokens: float, batch_tokens: float, swap_model: SwapTimeModel) -> float:
    """W_S = 2·T_swap(C)·C_batch: a synchronous swap out and back in stalls the whole batch twice."""
    return 2 * swap_model.seconds(context_tokens) * batch_tokens


def pipelined_swap_waste(context_tokens: float, swap_model: SwapTimeModel) -> float:
    """Waste of a swap inside the per-iteration budget: nobody stalls (paper §4.1), only the request's own context is
    held while it drains out and while it fills back in, on average half of it for T_swap(C) each way."""
    return swap_model.seconds(context_tokens) * context_tokens


def chunked_discard_waste_paper(context_tokens: float, other_tokens: float, n_chunks: int,
                                time_model: IterationTimeModel) -> float:
    """W_CD = T_fwd(C)·C/2 + n·T_fwd(C/n)·C_other (paper form): on average half the context is resident while the
    rest is rebuilt, and each of the n chunk iterations is a little longer for everybody else."""
    c = context_tokens
    return time_model.forward_s(c) * c / 2 + n_chunks * time_model.forward_s(c / n_chunks) * other_tokens


def chunked_discard_waste_code(context_tokens: int, decode_tokens: int, running_tokens: int,
                               time_model: IterationTimeModel) -> float:
    """W_CD in the form scheduler_v2.discard_waste computes it: chunks of c_h = max(S − R, 1) tokens (R = decode
    tokens in the running batch), n = ceil(C / c_h) − 1 full chunks at the saturated iteration time T(S) holding
    c_h·(1 + … + n) rebuilt tokens, plus the extra a·c_h per chunk (and a·last for the last partial chunk) that
    the running requests' `running_tokens` wait for. Kept as the code has it: when c_h divides C the last full
    chunk is counted as neither a full nor a partial one."""
    a_s = time_model.a_ms_per_token / 1000.0
    chunk = max(time_model.saturation_tokens - decode_tokens, 1)
    n = max(math.ceil(context_tokens / chunk) - 1, 0)
    last = context_tokens % chunk
    held = time_model.forward_s(time_model.saturation_tokens) * chunk * n * (n + 1) / 2
    slowdown = a_s * chunk * n * running_tokens
    return held + slowdown + a_s * last * (running_tokens + last)
