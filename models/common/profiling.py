"""Cost of a model on this machine: MACs (counted, not estimated) and measured latency / throughput.

MACs come from torch's FlopCounterMode (FLOPs // 2, a multiply-add counts as 2 FLOPs). Latency is wall-clock
time per batch, synchronised on CUDA, summarised by the median (p50) and p95 of the timed runs.
"""
from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "time_forward", "latency_summary", "measure_latency", "device_fingerprint"]


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(q k^T) v: the two batched matmuls (softmax itself is not a multiply-add)."""
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


# FlopCounterMode knows the CUDA SDPA kernels but not the CPU one, so without this fused attention on CPU
# would count as free and every ViT would look ~8 % cheaper than it is (4.24 vs 4.60 GMACs for DeiT-S).
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one eval-mode forward pass on `example` (the whole batch, not per sample)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: nn.Module, batch: torch.Tensor) -> float:
    """Seconds for one no-grad forward pass of `batch`, with the device synchronised on both sides.

    One call is one timed run; callers that compare models interleave these calls so machine noise
    (frequency scaling, other processes) falls on every model alike.
    """
    with torch.no_grad():
        _synchronize(batch.device)
        start = time.perf_counter()
        model(batch)
        _synchronize(batch.device)
        return time.perf_counter() - start


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), for a handful of timings."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(seconds: list[float], batch_size: int) -> dict[str, float]:
    """p50/p95 latency in ms of a list of timed runs, and throughput = batch / median latency."""
    if not seconds:
        raise ValueError("latency_summary needs at least one timed run")
    ordered = sorted(seconds)
    p50 = statistics.median(ordered)
    return {"latency_p50_ms": p50 * 1e3, "latency_p95_ms": _percentile(ordered, 0.95) * 1e3,
            "throughput_per_s": batch_size / p50, "batch_size": batch_size}


def measure_latency(model: nn.Module, batch: torch.Tensor, runs: int = 10, warmup: int = 2) -> dict[str, float]:
    """Latency and throughput of eval-mode forward passes on `batch` (and, on a GPU, the peak allocated memory);
    the model's train/eval mode is restored."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    was_training = model.training
    model.eval()
    on_gpu = batch.device.type == "cuda"
    try:
        for _ in range(warmup):
            time_forward(model, batch)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(batch.device)
        seconds = [time_forward(model, batch) for _ in range(runs)]
    finally:
        model.train(was_training)
    summary = latency_summary(seconds, len(batch))
    if on_gpu:  # the CPU allocator keeps no peak statistic, so CPU runs record none rather than a guess
        summary["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(batch.device))
    return summary


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(device: str | torch.device | None = None) -> dict[str, Any]:
    """What a timing was measured on; device None = cuda:0 when there is a GPU, else cpu."""
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name, label = torch.cuda.get_device_name(index), f"cuda:{index}"
    else:
        name, label = _cpu_model_name(), device.type
    return {"device": label, "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads()}


def size_on_disk(module: nn.Module) -> int:
    """Bytes of the module's state dict as a safetensors file (tied tensors once): the size a saved model takes."""
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_model(module, str(path))
        return path.stat().st_size
