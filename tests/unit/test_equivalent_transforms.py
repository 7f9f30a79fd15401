from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from models.equivalent_transforms import (  # noqa: E402
    coarse_outlier_candidates, collect_input_absmax, cfp_scale_activation_outliers, detect_outlier_channels,
    fine_outlier_split, fold_channel_scale, inject_activation_outliers, norm_linear_pairs, smooth_model,
    smoothquant_scales,
)
from models.quant import QuantSpec, rtn_quantize  # noqa: E402

VOCAB = 128
INJECTED_CHANNELS = 4


def tiny_llama(seed: int = 0) -> nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def token_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))   # (batch, seq)


@pytest.fixture(scope="module")
def calibration() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randint(0, VOCAB, (4, 32), generator=generator) for _ in range(2)]


@pytest.fixture(scope="module")
def fp_model() -> nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def injected() -> tuple[nn.Module, dict[str, list[int]]]:
    model = tiny_llama()
    return model, inject_activation_outliers(model, channels=INJECTED_CHANNELS, factor=30.0, seed=0)


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits                                                            # (batch, seq, vocab)


def cross_entropy(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).item()


def outlier_ratio(absmax: torch.Tensor) -> float:
    return (absmax.max() / absmax.median()).item()


def test_fold_channel_scale_hand_computed() -> None:
    norm_weight = nn.Parameter(torch.tensor([1.0, 3.0]))
    linear = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [4.0, -1.0], [0.5, 0.25]]))
    fold_channel_scale(norm_weight, [linear], torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(norm_weight.data, torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(linear.weight.data, torch.tensor([[0.5, 4.0], [2.0, -2.0], [0.25, 0.5]]))


def test_fold_channel_scale_rejects_zero_and_mismatched_scales() -> None:
    norm_weight, linear = nn.Parameter(torch.ones(2)), nn.Linear(2, 3)
    with pytest.raises(ValueError, match="non-zero"):
        fold_channel_scale(norm_weight, [linear], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        fold_channel_scale(norm_weight, [linear], torch.ones(3))


def test_norm_linear_pairs_of_llama_and_unsupported_model(fp_model: nn.Module) -> None:
    pairs = norm_linear_pairs(fp_model)
    assert [(name, len(linears)) for name, _, linears in pairs] == [
        ("model.layers.0.input_layernorm", 3), ("model.layers.0.post_attention_layernorm", 2),
        ("model.layers.1.input_layernorm", 3), ("model.layers.1.post_attention_layernorm", 2)]
    assert pairs[1][2][0] is fp_model.model.layers[0].mlp.gate_proj
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        norm_linear_pairs(nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4)))


def test_injection_preserves_the_function(fp_model: nn.Module, injected, token_ids: torch.Tensor) -> None:
    model, _ = injected
    reference, logits = logits_of(fp_model, token_ids), logits_of(model, token_ids)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    assert cross_entropy(logits, token_ids) == pytest.approx(cross_entropy(reference, token_ids), abs=1e-4)


def test_injection_creates_outlier_channels(fp_model: nn.Module, injected, calibration) -> None:
    model, chosen = injected
    before, after = collect_input_absmax(fp_model, calibration), collect_input_absmax(model, calibration)
    assert set(chosen) == set(after) == set(before)
    for name, channels in chosen.items():
        assert len(channels) == INJECTED_CHANNELS
        assert bool((after[name][channels] >= 10 * after[name].median()).all()), name
        assert not bool((before[name][channels] >= 10 * before[name].median()).any()), name


def test_smoothquant_scales_formula_and_floor() -> None:
    scales = smoothquant_scales(torch.tensor([4.0, 9.0, 0.0]), torch.tensor([1.0, 4.0, 1.0]), alpha=0.5)
    torch.testing.assert_close(scales, torch.tensor([2.0, 1.5, 1e-5]))


def test_smoothquant_preserves_function_and_flattens_outliers(injected, calibration, token_ids) -> None:
    model = copy.deepcopy(injected[0])
    before = collect_input_absmax(model, calibration)
    reference = logits_of(model, token_ids)
    smooth_model(model, before, alpha=0.5)
    torch.testing.assert_close(logits_of(model, token_ids), reference, atol=1e-4, rtol=1e-4)
    after = collect_input_absmax(model, calibration)
    for name in before:
        assert outlier_ratio(after[name]) * 5 <= outlier_ratio(before[name]), name


def test_smoothquant_reduces_w8a8_per_tensor_error(injected, calibration, token_ids) -> None:
    weight_spec, act_spec = QuantSpec(8, "per_channel"), QuantSpec(8, "per_tensor")
    keep_head = lambda name: name == "lm_head"  # noqa: E731
    reference = logits_of(injected[0], token_ids)
    plain = rtn_quantize(copy.deepcopy(injected[0]), weight_spec, act_spec, skip=keep_head)
    smoothed = copy.deepcopy(injected[0])
    smooth_model(smoothed, collect_input_absmax(smoothed, calibration))
    rtn_quantize(smoothed, weight_spec, act_spec, skip=keep_head)
    plain_error = (logits_of(plain, token_ids) - reference).pow(2).mean()
    smoothed_error = (logits_of(smoothed, token_ids) - reference).pow(2).mean()
    assert smoothed_error < plain_error


def uniform_values(n: int, seed: int) -> torch.Tensor:
    return 0.5 + torch.rand(n, generator=torch.Generator().manual_seed(seed))               # U(0.5, 1.5)


def test_cfp_finds_planted_outliers_exactly() -> None:
    values = uniform_values(100, seed=3)
    values[[7, 42, 91]] = torch.tensor([30.0, 35.0, 40.0])
    assert detect_outlier_channels(values).tolist() == [7, 42, 91]


def test_cfp_finds_nothing_without_outliers() -> None:
    values = uniform_values(100, seed=4)
    assert coarse_outlier_candidates(values).numel() == 0
    assert detect_outlier_channels(values).numel() == 0


def test_fine_split_keeps_only_the_true_outlier_cluster() -> None:
    candidates = torch.tensor([45.0, 3.2, 50.0, 3.9, 40.0, 3.5, 3.0])
    assert fine_outlier_split(candidates).tolist() == [0, 2, 4]
    assert fine_outlier_split(torch.tensor([7.0])).tolist() == [0]
    assert fine_outlier_split(torch.zeros(0)).numel() == 0


def test_cfp_separates_mild_candidates_from_true_outliers() -> None:
    values = uniform_values(100, seed=5)
    values[[10, 20, 30]] = torch.tensor([3.0, 3.5, 4.0])       # past the coarse fence, but mild
    values[[60, 70]] = torch.tensor([40.0, 50.0])
    assert set(coarse_outlier_candidates(values).tolist()) == {10, 20, 30, 60, 70}
    assert detect_outlier_channels(values).tolist() == [60, 70]


def test_cfp_scaling_preserves_function_and_tames_injected_channels(injected, calibration, token_ids) -> None:
    model, chosen = copy.deepcopy(injected[0]), injected[1]
    before = collect_input_absmax(model, calibration)
    reference = logits_of(model, token_ids)
    scaled = cfp_scale_activation_outliers(model, before)
    torch.testing.assert_close(logits_of(model, token_ids), reference, atol=1e-4, rtol=1e-4)
    after = collect_input_absmax(model, calibration)
    for name, channels in chosen.items():
        assert scaled[name] == channels, name          # exactly the injected channels, no natural ones
        assert bool((after[name][channels] <= 2 * after[name].median()).all()), name
