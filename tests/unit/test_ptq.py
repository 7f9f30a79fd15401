"""models/ptq.py: every method through one entry point, GPTQ over a whole decoder, and CFP's weight clipping."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from models.cbq import CBQConfig
from models.equivalent_transforms import cfp_clip_weight_outliers, inject_activation_outliers
from models.ptq import METHODS, QuantSetting, gptq_quantize_model, keeps_full_precision, quantize_lm
from models.quant import FakeQuantLinear, QuantSpec, rtn_quantize

W3 = QuantSetting("W3A16", QuantSpec(3, "per_channel"), None)
W4A4 = QuantSetting("W4A4", QuantSpec(4, "per_channel"), QuantSpec(4, "per_token"))


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=128, max_position_embeddings=64, initializer_range=0.1)
    return LlamaForCausalLM(config).eval()


def ids(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (n, 32), generator=torch.Generator().manual_seed(seed))


def hidden_error(model: LlamaForCausalLM, reference: LlamaForCausalLM, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return (model.model(tokens).last_hidden_state - reference.model(tokens).last_hidden_state).pow(2).mean().item()


def test_setting_knobs_round_trip() -> None:
    setting = QuantSetting("W2A16g64", QuantSpec(2, "per_group", 64), None)
    assert QuantSetting.from_knobs(setting.knobs()) == setting
    assert QuantSetting.from_knobs(W4A4.knobs()) == W4A4


@pytest.mark.parametrize("method", METHODS)
def test_every_method_quantizes_exactly_the_decoder_linears(method: str) -> None:
    model = quantize_lm(tiny_llama(), method, W4A4, ids(), CBQConfig(epochs=1, batch_size=4))
    quantized = [name for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    assert len(quantized) == 7 * 2 and not any(keeps_full_precision(name) for name in quantized)
    assert type(model.lm_head) is nn.Linear
    assert all(m.act_spec == W4A4.act for m in model.modules() if isinstance(m, FakeQuantLinear))


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="awq"):
        quantize_lm(tiny_llama(), "awq", W3, ids(), CBQConfig())


def test_gptq_over_the_decoder_beats_round_to_nearest() -> None:
    fp = tiny_llama()
    gptq = gptq_quantize_model(copy.deepcopy(fp), ids(32), W3)
    rtn = rtn_quantize(copy.deepcopy(fp), W3.weight, skip=keeps_full_precision)
    held_out = ids(8, seed=5)
    assert hidden_error(gptq, fp, held_out) < 0.8 * hidden_error(rtn, fp, held_out)


def test_outlier_handling_rescues_w4a4_on_an_outlier_model() -> None:
    fp = tiny_llama()
    inject_activation_outliers(fp, channels=4, factor=30.0, seed=0)
    calib, held_out = ids(16), ids(8, seed=5)
    errors = {method: hidden_error(quantize_lm(copy.deepcopy(fp), method, W4A4, calib,
                                               CBQConfig(epochs=2, batch_size=4)), fp, held_out)
              for method in ("rtn", "smoothquant", "cbq", "cbq_no_cfp")}
    assert errors["smoothquant"] < 0.5 * errors["rtn"]
    assert errors["cbq"] < 0.5 * errors["cbq_no_cfp"], errors


def test_cfp_clips_only_planted_weight_outliers() -> None:
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.02)
        linear.weight[3, 7], linear.weight[20, 50] = 1.0, -0.95   # one tight outlier group
    before = linear.weight.detach().clone()
    clipped = cfp_clip_weight_outliers([linear])
    assert clipped == {0: 2}
    bound = before.abs().flatten().sort().values[-3]          # largest magnitude that is not planted
    assert linear.weight[3, 7].item() == pytest.approx(bound.item())
    assert linear.weight[20, 50].item() == pytest.approx(-bound.item())
    untouched = torch.ones_like(before, dtype=torch.bool)
    untouched[3, 7] = untouched[20, 50] = False
    assert torch.equal(linear.weight[untouched], before[untouched])
