"""models/apiserve/calibration.py: the affine iteration-time fit and the saturation rule."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.apiserve.calibration import calibrate, fit_iteration_time, least_squares_line, measure_swap_bandwidth
from models.apiserve.runner import PagedKVCache

pytestmark = pytest.mark.usefixtures("single_torch_thread")

COUNTS = [16, 32, 64, 128, 192, 256, 384, 512, 768, 1024]


def test_least_squares_recovers_an_exact_line() -> None:
    slope, intercept = least_squares_line([1, 2, 4, 8], [2.5 * x - 1 for x in [1, 2, 4, 8]])
    assert slope == pytest.approx(2.5, abs=1e-12) and intercept == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="two distinct"):
        least_squares_line([3, 3], [1, 2])


def test_linear_timings_give_their_a_and_c_and_saturate_where_c_stops_dominating() -> None:
    # T = 0.03 n + 5: T(32) = 5.96 ms is within 10 % of T(16) = 5.48 ms, T(64) = 6.92 ms is not
    model = fit_iteration_time(COUNTS, [0.03 * n + 5 for n in COUNTS])
    assert model.a_ms_per_token == pytest.approx(0.03, abs=1e-12)
    assert model.c_ms == pytest.approx(5.0, abs=1e-9)
    assert model.saturation_tokens == 32
    # with a negligible constant every token costs from the first: S is the smallest measured n
    assert fit_iteration_time(COUNTS, [0.03 * n + 0.1 for n in COUNTS]).saturation_tokens == 16


def test_flat_then_linear_timings_saturate_at_the_end_of_the_flat_region() -> None:
    # 20 ms up to the knee at n = 200, then 0.05 ms per token: S is the last measured n of the flat region, and the
    # fit uses only the points past it, so a and c come out exactly
    times = [max(20.0, 0.05 * n + 10) for n in COUNTS]
    model = fit_iteration_time(list(reversed(COUNTS)), list(reversed(times)))      # order does not matter
    assert model.saturation_tokens == 192
    assert model.a_ms_per_token == pytest.approx(0.05, abs=1e-12)
    assert model.c_ms == pytest.approx(10.0, abs=1e-9)
    # a fit over every point would have been tilted by the flat part
    assert least_squares_line(COUNTS, times)[0] < 0.05


def test_the_flat_band_is_ten_percent_of_the_smallest_time() -> None:
    # a point 9 % above the smallest time is still flat, one 11 % above ends the flat region
    assert fit_iteration_time([8, 16, 32, 64], [10.0, 10.9, 20.0, 40.0]).saturation_tokens == 16
    assert fit_iteration_time([8, 16, 32, 64], [10.0, 11.1, 20.0, 40.0]).saturation_tokens == 8
    with pytest.raises(ValueError, match="three"):
        fit_iteration_time([8, 16], [1.0, 2.0])


def test_calibration_times_a_tiny_model_and_fits_its_timings() -> None:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()
    result = calibrate(lm, [8, 64, 256], repeats=2, warmup=1)
    assert len(result.times_ms) == 3 and all(t > 0 for t in result.times_ms)
    # (timings on a shared machine are noisy: check the plumbing, not the numbers)
    assert result.model == fit_iteration_time(result.token_counts, result.times_ms)
    kv = PagedKVCache.for_model(lm, gpu_blocks=8, host_blocks=8, block_size=16)
    assert measure_swap_bandwidth(kv, blocks=8, repeats=2) > 0
