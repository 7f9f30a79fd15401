"""models/common/profiling.py: MAC counting, latency summary and the device fingerprint."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common.profiling import count_macs, device_fingerprint, latency_summary, measure_latency


class _SelfAttention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, N, hd)
        return F.scaled_dot_product_attention(x, x, x)


def test_linear_macs_are_exact():
    assert count_macs(nn.Linear(4, 3), torch.randn(2, 4)) == 2 * 4 * 3


def test_fused_attention_is_counted_on_cpu():
    # q k^T and attn v: 2 * B * H * N * N * hd multiply-adds
    assert count_macs(_SelfAttention(), torch.randn(1, 2, 5, 4)) == 2 * 1 * 2 * 5 * 5 * 4


def test_count_macs_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    count_macs(model, torch.randn(1, 4))
    assert model.training


def test_latency_summary_percentiles_and_throughput():
    summary = latency_summary([0.4, 0.1, 0.2, 0.3, 0.5], batch_size=8)
    assert summary["latency_p50_ms"] == pytest.approx(300.0)
    assert summary["latency_p95_ms"] == pytest.approx(480.0)  # linear interpolation between 0.4 and 0.5
    assert summary["throughput_per_s"] == pytest.approx(8 / 0.3)
    assert summary["batch_size"] == 8


def test_measure_latency_reports_consistent_numbers():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU()).train()
    result = measure_latency(model, torch.randn(4, 16), runs=3, warmup=1)
    assert set(result) == {"latency_p50_ms", "latency_p95_ms", "throughput_per_s", "batch_size"}
    assert 0 < result["latency_p50_ms"] <= result["latency_p95_ms"]
    assert result["throughput_per_s"] == pytest.approx(4 / (result["latency_p50_ms"] / 1e3))
    assert model.training
    with pytest.raises(ValueError):
        measure_latency(model, torch.randn(4, 16), runs=0)


def test_device_fingerprint_on_cpu():
    fp = device_fingerprint("cpu")
    assert fp["device"] == "cpu"
    assert isinstance(fp["device_name"], str) and fp["device_name"]
    assert fp["torch"] == torch.__version__
    assert fp["threads"] == torch.get_num_threads()
    assert device_fingerprint()["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
