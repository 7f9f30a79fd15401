"""models/ptq.py: every method through one {name: compress} map, GPTQ over a whole decoder, and CFP's weight
clipping."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from models.cbq import CBQConfig
from models.equivalent_transforms import cfp_clip_weight_outliers, inject_activation_outliers
from models.ptq import METHODS, PTQ_METHODS, gptq, keeps_full_precision
from models.quant import FakeQuantLinear, QuantSetting, rtn_quantize

W3 = CBQConfig(QuantSetting("W3A16", w_bits=3))
W4A4 = CBQConfig(QuantSetting("W4A4", w_bits=4, a_bits=4), epochs=2, batch_size=4)


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


@pytest.mark.parametrize("method", METHODS)
def test_every_method_quantizes_exactly_the_decoder_linears_and_returns_the_model(method: str) -> None:
    model = tiny_llama()
    returned = PTQ_METHODS[method](model, dataclasses.replace(W4A4, epochs=1), ids())
    assert returned is model
    quantized = [name for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    assert len(quantized) == 7 * 2 and not any(keeps_full_precision(name) for name in quantized)
    assert type(model.lm_head) is nn.Linear
    assert all(m.act_spec == W4A4.setting.act for m in model.modules() if isinstance(m, FakeQuantLinear))


def test_gptq_over_the_decoder_beats_round_to_nearest() -> None:
    fp = tiny_llama()
    gptq_model = gptq(copy.deepcopy(fp), W3, ids(32))
    rtn_model = rtn_quantize(copy.deepcopy(fp), W3.setting.weight, skip=keeps_full_precision)
    held_out = ids(8, seed=5)
    assert hidden_error(gptq_model, fp, held_out) < 0.8 * hidden_error(rtn_model, fp, held_out)


def test_outlier_handling_rescues_w4a4_on_an_outlier_model() -> None:
    fp = tiny_llama()
    inject_activation_outliers(fp, channels=4, factor=30.0, seed=0)
    calib, held_out = ids(16), ids(8, seed=5)
    errors = {method: hidden_error(PTQ_METHODS[method](copy.deepcopy(fp), W4A4, calib), fp, held_out)
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
