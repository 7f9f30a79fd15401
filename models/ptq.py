"""Post-training quantization of a whole LLaMA decoder by name: the CBQ method and its baselines on one
quantizer (models/quant.py), so a method × setting table compares methods and nothing else. `PTQ_METHODS` maps
each name to a function of CBQ's shape, `compress(model, cfg, calib) -> model`, which quantizes the model in
place at `cfg.setting` from the calibration token ids `calib` (n, seq) and returns it:

    rtn          round-to-nearest on min/max grids
    gptq         GPTQ, block by block, each block's Hessians taken on the already-quantized model's stream
    smoothquant  SmoothQuant migration (alpha) then round-to-nearest
    cbq          CBQ with its coarse-to-fine outlier preprocessing (models/cbq.py)
    cbq_no_cfp   the CFP ablation

`cfg` is the CBQ config of the comparison: the baselines read its setting only. Every function takes the
keywords `seed` (randomness; only CBQ has any) and `reporter` (only CBQ reports), so the caller treats them
alike. Only the linears of the decoder blocks are quantized; embeddings, norms and lm_head stay floating point
(the GPTQ / OmniQuant / CBQ convention). Weight grids are asymmetric, per output channel or per group;
activations are quantized dynamically, asymmetric per token (OmniQuant's convention).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from torch import nn
from transformers import LlamaForCausalLM

from models.cbq import CBQConfig, compress as cbq_compress
from models.common.lm import capture_block_kwargs, run_blocks
from models.common.reporting import Reporter
from models.equivalent_transforms import collect_input_absmax, smooth_model
from models.quant import (
    FakeQuantLinear, QuantSetting, accumulate_hessian, gptq_quantize, replace_modules, rtn_quantize,
)

__all__ = ["Compress", "PTQ_METHODS", "METHODS", "keeps_full_precision", "rtn", "gptq", "smoothquant",
           "cbq_without_cfp"]


class Compress(Protocol):
    """What every PTQ_METHODS entry is: quantize `model` in place at cfg.setting and return it."""

    def __call__(self, model: LlamaForCausalLM, cfg: CBQConfig, calib: torch.Tensor, *, seed: int = 0,
                 reporter: Reporter | None = None) -> LlamaForCausalLM: ...


def keeps_full_precision(name: str) -> bool:
    """True for the linears outside the decoder blocks (lm_head), which no method quantizes."""
    return not name.startswith("model.layers.")


@torch.no_grad()
def _input_hessians(block: nn.Module, hidden: torch.Tensor, block_kwargs: dict[str, Any],
                    batch_size: int) -> dict[nn.Module, torch.Tensor]:
    """GPTQ's H = 2/n Σ x xᵀ of the input of every linear in `block`, over one pass of `hidden` (n, seq, d)."""
    running: dict[nn.Module, tuple[torch.Tensor | None, int]] = {
        m: (None, 0) for m in block.modules() if isinstance(m, nn.Linear)}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        running[module] = accumulate_hessian(running[module][0], inputs[0], running[module][1])

    handles = [m.register_forward_pre_hook(record) for m in running]
    try:
        for chunk in hidden.split(batch_size):
            run_blocks([block], chunk, block_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {m: hessian for m, (hessian, _) in running.items() if hessian is not None}


def _gptq_layer(linear: nn.Linear, hessian: torch.Tensor, setting: QuantSetting, block_size: int,
                percdamp: float) -> FakeQuantLinear:
    """The linear, GPTQ-quantized in place, wrapped on the grids GPTQ chose."""
    result = gptq_quantize(linear.weight, hessian, setting.weight, block_size, percdamp)
    linear.weight.copy_(result.weight)
    layer = FakeQuantLinear(linear, setting.weight, setting.act)
    layer.weight_scale.copy_(result.scale)
    layer.weight_zero.copy_(result.zero)
    return layer


def rtn(model: LlamaForCausalLM, cfg: CBQConfig, calib: torch.Tensor, *, seed: int = 0,
        reporter: Reporter | None = None) -> LlamaForCausalLM:
    model.eval()
    return rtn_quantize(model, cfg.setting.weight, cfg.setting.act, skip=keeps_full_precision)


@torch.no_grad()
def gptq(model: LlamaForCausalLM, cfg: CBQConfig, calib: torch.Tensor, *, seed: int = 0,
         reporter: Reporter | None = None, block_size: int = 128, percdamp: float = 0.01,
         batch_size: int = 8) -> LlamaForCausalLM:
    """GPTQ over the decoder in place (the reference llama.py without act-order): for each block, accumulate every
    linear's Hessian on the block's input as produced by the blocks already quantized, quantize all its linears,
    then feed the quantized block's output to the next one."""
    model.eval()
    block_kwargs = capture_block_kwargs(model, calib)
    hidden = model.model.embed_tokens(calib)                                           # (n, seq, d)
    for block in model.model.layers:
        hessians = _input_hessians(block, hidden, block_kwargs, batch_size)
        replace_modules(block, nn.Linear, lambda linear, h=hessians: _gptq_layer(linear, h[linear], cfg.setting,
                                                                                 block_size, percdamp))
        hidden = torch.cat([run_blocks([block], chunk, block_kwargs) for chunk in hidden.split(batch_size)])
    return model


def smoothquant(model: LlamaForCausalLM, cfg: CBQConfig, calib: torch.Tensor, *, seed: int = 0,
                reporter: Reporter | None = None, alpha: float = 0.5) -> LlamaForCausalLM:
    """SmoothQuant: migrate the activation outliers into the weights with strength `alpha` (0.5, the
    paper's default), then round to nearest."""
    model.eval()
    with torch.no_grad():
        smooth_model(model, collect_input_absmax(model, calib.split(8)), alpha)
    return rtn_quantize(model, cfg.setting.weight, cfg.setting.act, skip=keeps_full_precision)


def cbq_without_cfp(model: LlamaForCausalLM, cfg: CBQConfig, calib: torch.Tensor, *, seed: int = 0,
                    reporter: Reporter | None = None) -> LlamaForCausalLM:
    return cbq_compress(model, dataclasses.replace(cfg, cfp=False), calib, seed=seed, reporter=reporter)


PTQ_METHODS: dict[str, Compress] = {"rtn": rtn, "gptq": gptq, "smoothquant": smoothquant, "cbq": cbq_compress,
                                    "cbq_no_cfp": cbq_without_cfp}
METHODS = tuple(PTQ_METHODS)
