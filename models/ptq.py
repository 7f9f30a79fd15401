"""Post-training quantization of a whole LLaMA decoder by name: the CBQ method and its baselines on one
quantizer (models/quant.py), so a method × setting table compares methods and nothing else.

    rtn          round-to-nearest on min/max grids
    gptq         GPTQ, block by block, each block's Hessians taken on the already-quantized model's stream
    smoothquant  SmoothQuant migration (alpha) then round-to-nearest
    cbq          CBQ with its coarse-to-fine outlier preprocessing (models/cbq.py)
    cbq_no_cfp   the CFP ablation

Only the linears of the decoder blocks are quantized; embeddings, norms and lm_head stay floating point (the
GPTQ / OmniQuant / CBQ convention). Weight grids are asymmetric, per output channel or per group; activations
are quantized dynamically, asymmetric per token (OmniQuant's convention).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM

from models.cbq import CBQConfig, cbq_quantize
from models.common.lm import capture_block_kwargs, run_blocks
from models.common.reporting import Reporter
from models.equivalent_transforms import collect_input_absmax, smooth_model
from models.quant import (
    FakeQuantLinear, QuantSpec, accumulate_hessian, gptq_quantize, replace_modules, rtn_quantize,
)

__all__ = ["METHODS", "QuantSetting", "keeps_full_precision", "gptq_quantize_model", "quantize_lm"]

METHODS = ("rtn", "gptq", "smoothquant", "cbq", "cbq_no_cfp")


@dataclass(frozen=True)
class QuantSetting:
    """A row of the paper's tables, e.g. W4A16 = 4-bit per-channel weights, FP activations."""

    name: str
    weight: QuantSpec
    act: QuantSpec | None

    def knobs(self) -> dict[str, Any]:
        return {"setting": self.name, "weight": dataclasses.asdict(self.weight),
                "act": dataclasses.asdict(self.act) if self.act else None}

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]) -> QuantSetting:
        return cls(knobs["setting"], QuantSpec(**knobs["weight"]), QuantSpec(**knobs["act"]) if knobs["act"] else None)


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


@torch.no_grad()
def gptq_quantize_model(model: LlamaForCausalLM, calib_ids: torch.Tensor, setting: QuantSetting,
                        block_size: int = 128, percdamp: float = 0.01, batch_size: int = 8) -> LlamaForCausalLM:
    """GPTQ over the decoder in place (the reference llama.py without act-order): for each block, accumulate every
    linear's Hessian on the block's input as produced by the blocks already quantized, quantize all its linears,
    then feed the quantized block's output to the next one."""
    block_kwargs = capture_block_kwargs(model, calib_ids)
    hidden = model.model.embed_tokens(calib_ids)                                       # (n, seq, d)
    for block in model.model.layers:
        hessians = _input_hessians(block, hidden, block_kwargs, batch_size)
        replace_modules(block, nn.Linear, lambda linear, h=hessians: _gptq_layer(linear, h[linear], setting,
                                                                                 block_size, percdamp))
        hidden = torch.cat([run_blocks([block], chunk, block_kwargs) for chunk in hidden.split(batch_size)])
    return model


def quantize_lm(model: LlamaForCausalLM, method: str, setting: QuantSetting, calib_ids: torch.Tensor,
                cbq: CBQConfig, smoothquant_alpha: float = 0.5, reporter: Reporter | None = None) -> LlamaForCausalLM:
    """Quantize `model` in place with `method` at `setting`; its decoder linears end as FakeQuantLinears whose
    weights lie on their grids (ready for quant.pack_quantized_linears). Returns the model."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; known: {', '.join(METHODS)}")
    model.eval()
    if method == "rtn":
        return rtn_quantize(model, setting.weight, setting.act, skip=keeps_full_precision)
    if method == "gptq":
        return gptq_quantize_model(model, calib_ids, setting)
    if method == "smoothquant":
        with torch.no_grad():
            smooth_model(model, collect_input_absmax(model, calib_ids.split(8)), smoothquant_alpha)
        return rtn_quantize(model, setting.weight, setting.act, skip=keeps_full_precision)
    config = dataclasses.replace(cbq, cfp=cbq.cfp and method == "cbq")
    return cbq_quantize(model, calib_ids, setting.weight, setting.act, config, reporter)
