"""CBQ (arXiv 2312.07950, ICLR 2025): cross-block reconstruction over a sliding window of decoder blocks, with
LoRA-Rounding (AdaRound-style learned rounding whose trainable part is low-rank) and learnable weight step sizes.

The pass keeps two streams of block inputs: the full-precision model's and the quantized model's. For each
window of consecutive blocks, the quantized window (fed by the quantized stream, so upstream error is seen) is
trained to reproduce the FP window's output on the FP stream under an L2 + KL loss. Blocks leaving the window
are hardened (rounding fixed to {0, 1}) and both streams advance through them. At the end every decoder linear
is a `quant.FakeQuantLinear` whose weight lies on its grid: the learned rounding lives in the integer codes,
nothing low-rank remains at inference. The coarse-to-fine outlier preprocessing (CFP) runs first, on the
equivalent-transform machinery of models/equivalent_transforms.py.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from models.common.checks import at_least, at_most, below, non_negative, positive
from models.common.lm import capture_block_kwargs, run_blocks
from models.common.reporting import Reporter
from models.equivalent_transforms import cfp_clip_weight_outliers, cfp_scale_activation_outliers, collect_input_absmax
from models.quant import (
    SCALE_FLOOR, FakeQuantLinear, QuantizedLinear, QuantSetting, QuantSpec, code_range, dequantize_codes,
    grouped, quant_params, replace_modules,
)

__all__ = ["LoRARoundingLinear", "reconstruction_loss", "window_schedule", "CBQConfig", "apply_cfp", "compress",
           "check_fits", "decoder_linears"]

# AdaRound's rectified sigmoid stretch: h(V) reaches exactly 0 and 1 at finite V, so rounding can become binary
ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) = h for h in (0, 1); h = 0 (a weight exactly on the grid) maps to a finite V
    with h(V) = 0 thanks to the stretch below 0."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


class LoRARoundingLinear(QuantizedLinear):
    """An nn.Linear with a learned rounding of its weight onto a (learnable-step) integer grid.

    Ŵ = S · (clamp(⌊W/S₀⌋ + h(V) + zero, qmin, qmax) − zero), with V = V0 + A1 @ A2 and S₀ the initial
    min/max step. V0 is a frozen buffer
    set as in AdaRound so that h(V0) is the fractional part of W/S (the soft weight starts at W, the hard
    weight at round-to-nearest); only the low-rank correction A1 (out, r) @ A2 (r, in) is trained, i.e.
    (out + in) · r rounding parameters instead of out · in. A V = A1 @ A2 alone could not even express
    round-to-nearest, whose rounding pattern is full-rank. Only ⌊W/S₀⌋ and V0 are kept of the FP weight; S^W is a
    Parameter (a factor on the min/max step), the zero point a buffer.
    """

    def __init__(self, linear: nn.Linear, weight_spec: QuantSpec, act_spec: QuantSpec | None,
                 rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if weight_spec.granularity == "per_token":
            raise ValueError("per_token is an activation granularity; LoRA-Rounding quantizes weights")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_spec = weight_spec
        self.act_spec = act_spec
        self.rank = rank
        self.hard = False
        # Sharpness of the soft rounding: h = rectified_sigmoid(V / temperature), annealed towards 0 by the
        # window's optimiser. Our addition (see CBQConfig.temperature_end): with a low-rank V the AdaRound
        # regulariser alone left 82-98 % of h strictly between 0 and 1 at hardening, so the hardened model was
        # not the model that had been optimised. The hard threshold V >= 0 does not depend on it.
        self.temperature = 1.0
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        weight = linear.weight.detach()                                     # (out, in)
        scale, zero = quant_params(weight, weight_spec)        # (out, 1) | (out, n_groups, 1) | (1, 1)
        # S^W = min/max step x a learned factor: one learning rate then fits every layer's step size
        self.register_buffer("weight_scale_init", scale)
        self.weight_scale_factor = nn.Parameter(torch.ones_like(scale))
        self.register_buffer("weight_zero", zero)
        # ⌊W/S⌋ on the initial grid, fixed: were it recomputed from the learned S, a small step-size change
        # would flip whole codes (a jump of one step the gradient never sees) under an unchanged h
        w_over_s = grouped(weight, weight_spec) / scale
        self.register_buffer("floor_codes", torch.floor(w_over_s).reshape(weight.shape))     # (out, in)
        rest = (w_over_s - torch.floor(w_over_s)).reshape(weight.shape)
        self.register_buffer("rounding_init", inverse_rectified_sigmoid(rest))             # V0: (out, in)
        # LoRA init: A1 = 0 keeps V = V0 at the start, a random A2 lets A1 receive gradient at once
        self.lora_a1 = nn.Parameter(torch.zeros(self.out_features, rank))
        self.lora_a2 = nn.Parameter(torch.randn(rank, self.in_features, generator=generator) / math.sqrt(self.in_features))

    def rounding_variable(self) -> torch.Tensor:
        return self.rounding_init + self.lora_a1 @ self.lora_a2            # V: (out, in)

    def soft_rounding(self) -> torch.Tensor:
        return rectified_sigmoid(self.rounding_variable() / self.temperature)             # h: (out, in)

    def rounding(self) -> torch.Tensor:
        """h in [0, 1] (soft) or {0, 1} (hard: h(V) >= 0.5, i.e. V >= 0 since ζ + γ = 1)."""
        if self.hard:
            v = self.rounding_variable()
            return (v >= 0).to(v.dtype)
        return self.soft_rounding()

    def rounding_regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's Σ (1 − |2h − 1|^β): 0 when every h is binary; a lower β pulls more h towards 0 / 1."""
        return (1.0 - (2.0 * self.soft_rounding() - 1.0).abs().pow(beta)).sum()

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) in use; floored because an optimiser step can push the learned scale to <= 0."""
        return (self.weight_scale_init * self.weight_scale_factor).clamp(min=SCALE_FLOOR), self.weight_zero

    def codes(self) -> torch.Tensor:
        """Integer codes (as floats, differentiable w.r.t. h), grouped like the grid."""
        scale, zero = self.grid()
        qmin, qmax = code_range(self.weight_spec.bits, self.weight_spec.symmetric)
        codes = grouped(self.floor_codes + self.rounding(), self.weight_spec)
        return torch.clamp(codes + zero, qmin, qmax)

    def quantized_weight(self) -> torch.Tensor:
        scale, zero = self.grid()
        return dequantize_codes(self.codes(), scale, zero).reshape(self.floor_codes.shape)   # (out, in)

    def harden(self) -> None:
        """Fix the rounding to {0, 1} and stop training this layer."""
        self.hard = True
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def to_fake_quant_linear(self) -> FakeQuantLinear:
        """The hard-rounded layer as a FakeQuantLinear on the learned grid. Its weight is Ŵ itself, so its
        integer export (quant.export_integer_weights) gives exactly this layer's codes."""
        if not self.hard:
            raise RuntimeError("harden() the layer before exporting it: soft rounding has no integer codes")
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.floor_codes.device, dtype=self.floor_codes.dtype)
        linear.weight.copy_(self.quantized_weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        layer = FakeQuantLinear(linear, self.weight_spec, self.act_spec)
        scale, zero = self.grid()
        layer.weight_scale.copy_(scale)
        layer.weight_zero.copy_(zero)
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"hard={self.hard}, weight_spec={self.weight_spec}, act_spec={self.act_spec}")


def reconstruction_loss(target: torch.Tensor, output: torch.Tensor, use_kl: bool = True) -> torch.Tensor:
    """CBQ's E(h1, h2) = ||h1 - h2||² + KL(softmax(h1) || softmax(h2)), both over the hidden dimension of
    (..., hidden) states, averaged over tokens."""
    loss = (target - output).pow(2).sum(dim=-1)                             # (...)
    if use_kl:
        loss = loss + F.kl_div(F.log_softmax(output, dim=-1), F.log_softmax(target, dim=-1),
                               reduction="none", log_target=True).sum(dim=-1)
    return loss.mean()


def window_schedule(num_blocks: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open [start, end) windows of `window` blocks, each starting window - overlap after the previous,
    the last one clipped to num_blocks."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if not 0 <= overlap < window:
        raise ValueError(f"need window > overlap >= 0, got window={window}, overlap={overlap}")
    windows = []
    start = 0
    while True:
        end = min(start + window, num_blocks)
        windows.append((start, end))
        if end == num_blocks:
            return windows
        start += window - overlap


@dataclass(frozen=True)
class CBQConfig:
    """One CBQ quantization: the setting, the calibration set, the sliding window and the LoRA-Rounding
    optimisation. Defaults are the paper's where it states them (arXiv 2312.07950: 128 random 2048-token
    calibration segments, windows of 2 blocks overlapping by 1); its rank, learning rates and epochs were not
    published, so those are ours (epochs: OmniQuant's 20 per block)."""

    setting: QuantSetting = QuantSetting("W4A16", w_bits=4)
    calib_segments: int = 128     # random calibration segments ...
    calib_seq_len: int = 2048     # ... of this many tokens
    window: int = 2               # consecutive decoder blocks optimised jointly
    overlap: int = 1              # blocks shared by consecutive windows
    rank: int = 4                 # LoRA-Rounding rank r: (d + k) r rounding parameters per linear
    epochs: int = 20              # passes over the calibration set per window
    batch_size: int = 4           # calibration sequences per optimiser step
    lr_rounding: float = 1e-3     # LoRA factors A1, A2
    lr_scale: float = 5e-3        # weight step-size factors S^W / S^W_minmax
    beta_start: float = 20.0      # regulariser exponent, annealed linearly over each window's steps
    beta_end: float = 2.0
    lambda_round: float = 1.0     # weight of the *mean* per-element regulariser, so it does not grow with size
    warmup: float = 0.2           # first fraction of each window's steps without the regulariser (AdaRound)
    temperature_end: float = 0.02  # soft rounding sharpness at the last step, geometric from 1 (ours, see
                                   # LoRARoundingLinear.temperature)
    use_kl: bool = True
    cfp: bool = True              # coarse-to-fine outlier preprocessing before the windows
    cfp_lambda1: float = 1.5      # Tukey fence of the coarse step
    cfp_lambda2: float = 1.0      # spread weight of the fine split

    def __post_init__(self) -> None:
        at_least(self, 1, "calib_segments", "window", "rank", "epochs", "batch_size")
        at_least(self, 8, "calib_seq_len")
        non_negative(self, "overlap", "lambda_round", "warmup", "cfp_lambda2")
        positive(self, "lr_rounding", "lr_scale", "beta_start", "beta_end", "temperature_end", "cfp_lambda1")
        below(self, 1, "warmup")
        at_most(self, 1, "temperature_end")
        if self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than window ({self.window})")


def decoder_linears(model: LlamaForCausalLM) -> list[nn.Linear]:
    """The linears every method quantizes: those of the decoder blocks (embeddings and lm_head stay FP)."""
    return [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]


def check_fits(model: LlamaForCausalLM, cfg: CBQConfig) -> None:
    """Raises ValueError, naming the field and its bound, when `cfg` does not fit `model`: a window longer than the
    decoder (window_schedule would clip it silently), a LoRA-Rounding rank above min(in, out) of the smallest decoder
    linear (the low-rank part would no longer be low rank), weight groups that do not divide a linear's input."""
    layers = len(model.model.layers)
    if cfg.window > layers:
        raise ValueError(f"window={cfg.window} exceeds the model's {layers} decoder layers")
    linears = decoder_linears(model)
    smallest = min(min(linear.in_features, linear.out_features) for linear in linears)
    if cfg.rank > smallest:
        raise ValueError(f"rank={cfg.rank} exceeds {smallest}, min(in, out) of the model's smallest decoder linear")
    try:
        cfg.setting.check_fits({linear.in_features for linear in linears})
    except ValueError as exc:
        raise ValueError(f"setting.{exc}") from exc


def wrap_block_linears(block: nn.Module, weight_spec: QuantSpec, act_spec: QuantSpec | None, rank: int,
                       generator: torch.Generator) -> list[LoRARoundingLinear]:
    wrapped: list[LoRARoundingLinear] = []

    def wrap(linear: nn.Module) -> LoRARoundingLinear:
        wrapped.append(LoRARoundingLinear(linear, weight_spec, act_spec, rank, generator))
        return wrapped[-1]

    replace_modules(block, nn.Linear, wrap)
    return wrapped


def optimise_window(window_layers: list[LoRARoundingLinear], student: list[nn.Module], targets: torch.Tensor,
                    inputs: torch.Tensor, block_kwargs: dict[str, Any], cfg: CBQConfig,
                    reporter: Reporter | None, first_step: int) -> int:
    """Train the window's step sizes and LoRA factors so that student(inputs) matches targets; returns the
    global step count after it."""
    trainable = [layer for layer in window_layers if not layer.hard]
    optimizer = torch.optim.AdamW([
        {"params": [layer.weight_scale_factor for layer in trainable], "lr": cfg.lr_scale},
        {"params": [p for layer in trainable for p in (layer.lora_a1, layer.lora_a2)], "lr": cfg.lr_rounding},
    ], weight_decay=0.0)
    n_rounding = sum(layer.floor_codes.numel() for layer in trainable)
    batches = math.ceil(inputs.shape[0] / cfg.batch_size)
    total_steps = cfg.epochs * batches
    step = first_step
    warmup_steps = int(cfg.warmup * total_steps)
    for i in range(total_steps):
        # after the warm-up, β goes from beta_start to beta_end and the temperature from 1 to temperature_end
        progress = max(0, i - warmup_steps) / max(total_steps - 1 - warmup_steps, 1)
        beta = cfg.beta_start + (cfg.beta_end - cfg.beta_start) * progress
        temperature = cfg.temperature_end ** progress
        for layer in trainable:
            layer.temperature = temperature
        lo = (i % batches) * cfg.batch_size
        output = run_blocks(student, inputs[lo:lo + cfg.batch_size], block_kwargs)
        reconstruction = reconstruction_loss(targets[lo:lo + cfg.batch_size], output, cfg.use_kl)
        regularizer = sum(layer.rounding_regularizer(beta) for layer in trainable) / n_rounding
        loss = reconstruction + (cfg.lambda_round * regularizer if i >= warmup_steps else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if reporter is not None:
            reporter.log_metrics({"cbq/loss": loss.item(), "cbq/reconstruction": reconstruction.item(),
                                  "cbq/regularizer": regularizer.item(), "cbq/beta": beta,
                                  "cbq/temperature": temperature}, step)
        step += 1
    return step


def soft_fraction(layers: list[LoRARoundingLinear]) -> float:
    """Fraction of soft rounding values strictly inside (0.01, 0.99): how far from binary the rounding is."""
    with torch.no_grad():
        h = torch.cat([layer.soft_rounding().flatten() for layer in layers])
    return ((h > 0.01) & (h < 0.99)).float().mean().item()


def apply_cfp(model: LlamaForCausalLM, calib_ids: torch.Tensor, cfg: CBQConfig,
              batch_size: int = 8) -> list[dict[str, Any]]:
    """Coarse-to-fine preprocessing in place: clip the weight outliers of every decoder linear, then scale the
    outlier channels of the activations entering q/k/v and gate/up (inverse folded into those linears).
    Returns one row per decoder layer: weights clipped, activation channels scaled."""
    rows = []
    for index, block in enumerate(model.model.layers):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        clipped = cfp_clip_weight_outliers(linears, cfg.cfp_lambda1, cfg.cfp_lambda2)
        rows.append({"layer": index, "weights_clipped": sum(clipped.values())})
    absmax = collect_input_absmax(model, calib_ids.split(batch_size))
    scaled = cfp_scale_activation_outliers(model, absmax, cfg.cfp_lambda1, cfg.cfp_lambda2)
    for name, channels in scaled.items():
        layer = int(name.split(".")[2])
        rows[layer][f"{name.rsplit('.', 1)[1]}_channels_scaled"] = len(channels)
    return rows


def compress(model: LlamaForCausalLM, cfg: CBQConfig, calib: torch.Tensor, *, seed: int = 0,
             reporter: Reporter | None = None) -> LlamaForCausalLM:
    """Quantize every linear of the decoder blocks in place with CBQ at cfg.setting and return the model;
    embeddings, final norm and lm_head stay FP. `calib` (n, seq) are unpadded calibration token ids; `seed`
    draws the LoRA factors. The decoder linears end as hard-rounded FakeQuantLinears. The reporter receives the
    loss per step, a "cbq_cfp" table (what the outlier preprocessing changed) and a "cbq_windows" table: which
    blocks each window optimised and how binary their rounding was when hardened."""
    model.eval()
    weight_spec, act_spec = cfg.setting.weight, cfg.setting.act
    blocks = list(model.model.layers)
    windows = window_schedule(len(blocks), cfg.window, cfg.overlap)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # the teacher is the model as given: CFP's weight clipping is not function-preserving
    teacher = [copy.deepcopy(block) for block in blocks]
    cfp_rows = apply_cfp(model, calib, cfg) if cfg.cfp else []
    with torch.no_grad():
        block_kwargs = capture_block_kwargs(model, calib)
        fp_stream = model.model.embed_tokens(calib)                       # (n, seq, d)
    quant_stream = fp_stream.clone()
    layers: dict[int, list[LoRARoundingLinear]] = {}
    window_rows: list[dict[str, Any]] = []
    generator = torch.Generator(device=calib.device).manual_seed(seed)
    step = 0
    for index, (start, end) in enumerate(windows):
        for b in range(start, end):
            if b not in layers:                      # blocks in the overlap keep their wrappers and values
                layers[b] = wrap_block_linears(blocks[b], weight_spec, act_spec, cfg.rank, generator)
        with torch.no_grad():
            targets = run_blocks(teacher[start:end], fp_stream, block_kwargs)
        window_layers = [layer for b in range(start, end) for layer in layers[b]]
        step = optimise_window(window_layers, blocks[start:end], targets, quant_stream, block_kwargs, cfg,
                               reporter, step)
        # blocks before the next window's start leave for good: harden them and advance both streams
        leaving = range(start, windows[index + 1][0] if index + 1 < len(windows) else end)
        window_rows.append({"window": index, "start": start, "end": end,
                            "hardened": list(leaving),
                            "soft_fraction": soft_fraction([l for b in leaving for l in layers[b]])})
        for b in leaving:
            for layer in layers[b]:
                layer.harden()
        with torch.no_grad():
            fp_stream = run_blocks(teacher[leaving.start:leaving.stop], fp_stream, block_kwargs)
            quant_stream = run_blocks(blocks[leaving.start:leaving.stop], quant_stream, block_kwargs)
        if reporter is not None:
            reporter.progress(index + 1, len(windows), f"CBQ window {index + 1}/{len(windows)}")
    if reporter is not None:
        reporter.log_table("cbq_cfp", cfp_rows)
        reporter.log_table("cbq_windows", window_rows)
    replace_modules(model.model.layers, LoRARoundingLinear, lambda layer: layer.to_fake_quant_linear())
    return model
