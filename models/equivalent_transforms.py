"""Function-preserving per-channel scaling between a LLaMA RMSNorm and the linears it feeds, and its three uses:
outlier injection for the CPU miniature, SmoothQuant, and the activation half of CBQ's coarse-to-fine
preprocessing (CFP).

The one mechanism (`fold_channel_scale`): an RMSNorm's output is x_hat * g with a per-channel gain g (hidden,),
and each following linear computes (x_hat * g) W^T. Multiplying g[j] by s[j] and dividing the input column
W[:, j] by s[j] leaves every product, hence the floating-point function, unchanged, while moving the magnitude of
channel j between the activation (what activation quantizers see) and the weight (what weight quantizers see).

In LLaMA the foldable pairs are input_layernorm -> (q_proj, k_proj, v_proj) and
post_attention_layernorm -> (gate_proj, up_proj). The transforms must run before `models.quant.quantize_linears`:
a FakeQuantLinear fixes its weight grid at wrap time and is no longer an nn.Linear.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
from transformers import LlamaForCausalLM

__all__ = [
    "fold_channel_scale", "norm_linear_pairs", "inject_activation_outliers", "collect_input_absmax",
    "smoothquant_scales", "smooth_model", "coarse_outlier_candidates", "fine_outlier_split",
    "detect_outlier_channels", "cfp_scale_activation_outliers", "cfp_clip_weight_outliers",
]

# Floors of the official SmoothQuant code (mit-han-lab/smoothquant, smooth.py): an all-zero weight column or a
# never-firing channel would otherwise give a scale of 0 or inf, which the fold cannot undo.
SMOOTHQUANT_WEIGHT_FLOOR = 1e-5
SMOOTHQUANT_SCALE_FLOOR = 1e-5

NormLinearPair = tuple[str, nn.Parameter, list[nn.Linear]]


@torch.no_grad()
def fold_channel_scale(norm_weight: nn.Parameter, linears: Sequence[nn.Linear], scale: torch.Tensor) -> None:
    """In place: norm_weight[j] *= scale[j] and, for every linear, weight[:, j] /= scale[j].

    norm_weight: (hidden,); each linear.weight: (out, hidden); scale: (hidden,), finite and non-zero.
    """
    hidden = norm_weight.shape[0]
    if scale.shape != (hidden,):
        raise ValueError(f"scale must have shape ({hidden},) like the norm weight, got {tuple(scale.shape)}")
    if not bool(torch.isfinite(scale).all()) or bool((scale == 0).any()):
        raise ValueError("scale must be finite and non-zero, or the fold is not invertible")
    for linear in linears:
        if linear.in_features != hidden:
            raise ValueError(f"linear has in_features={linear.in_features}, the norm has {hidden} channels")
    norm_weight.mul_(scale.to(norm_weight))
    for linear in linears:
        linear.weight.div_(scale.to(linear.weight).view(1, -1))


def norm_linear_pairs(model: nn.Module) -> list[NormLinearPair]:
    """(norm name, norm weight, linears reading that norm's output) for each foldable pair of a LlamaForCausalLM,
    in layer order."""
    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"norm_linear_pairs supports transformers.LlamaForCausalLM only, got "
                        f"{type(model).__name__}: the norm -> linear pairs are architecture specific")
    pairs: list[NormLinearPair] = []
    for index, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{index}"
        attention, mlp = layer.self_attn, layer.mlp
        pairs.append((f"{prefix}.input_layernorm", layer.input_layernorm.weight,
                      [attention.q_proj, attention.k_proj, attention.v_proj]))
        pairs.append((f"{prefix}.post_attention_layernorm", layer.post_attention_layernorm.weight,
                      [mlp.gate_proj, mlp.up_proj]))
    for name, _, linears in pairs:
        if not all(isinstance(linear, nn.Linear) for linear in linears):
            raise TypeError(f"the linears after {name} are already wrapped (e.g. FakeQuantLinear): apply "
                            f"equivalent transforms before quantizing")
    return pairs


def inject_activation_outliers(model: nn.Module, channels: int = 4, factor: float = 30.0,
                               seed: int = 0) -> dict[str, list[int]]:
    """Scale `channels` random channels of every pair's norm by `factor` and fold 1/factor into its linears.

    The floating-point function is unchanged, but the activations entering q/k/v and gate/up now carry outlier
    channels, as in real LLMs (tiny randomly initialised or briefly trained models have none). Returns the
    chosen channels (sorted) per norm name.
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    generator = torch.Generator().manual_seed(seed)
    chosen_by_norm: dict[str, list[int]] = {}
    for name, norm_weight, linears in norm_linear_pairs(model):
        hidden = norm_weight.shape[0]
        if not 0 < channels <= hidden:
            raise ValueError(f"channels must be in [1, {hidden}], got {channels}")
        chosen = torch.randperm(hidden, generator=generator)[:channels].sort().values     # (channels,)
        scale = torch.ones(hidden)                                                        # (hidden,)
        scale[chosen] = factor
        fold_channel_scale(norm_weight, linears, scale)
        chosen_by_norm[name] = chosen.tolist()
    return chosen_by_norm


@torch.no_grad()
def collect_input_absmax(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| (hidden,) over every calibration token entering each pair's linears, keyed by
    norm name. `batches` are token-id tensors (batch, seq) fed to model(...)."""
    absmax_by_norm: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach()                                                        # (..., hidden)
            batch_absmax = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()           # (hidden,)
            previous = absmax_by_norm.get(name)
            absmax_by_norm[name] = batch_absmax if previous is None else torch.maximum(previous, batch_absmax)
        return record

    # all linears of a pair read the same tensor (the norm's output), so one hook per pair sees all of it
    handles = [linears[0].register_forward_pre_hook(recorder(name))
               for name, _, linears in norm_linear_pairs(model)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return absmax_by_norm


def smoothquant_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant migration strength s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), all (hidden,)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    weight_absmax = weight_absmax.clamp(min=SMOOTHQUANT_WEIGHT_FLOOR)
    return (act_absmax.pow(alpha) / weight_absmax.pow(1.0 - alpha)).clamp(min=SMOOTHQUANT_SCALE_FLOOR)


@torch.no_grad()
def smooth_model(model: nn.Module, act_absmax_by_pair: dict[str, torch.Tensor], alpha: float = 0.5) -> nn.Module:
    """SmoothQuant (Xiao et al., 2023) in place: activations X / s, weights W * s, per pair. Returns the model.

    `act_absmax_by_pair` is `collect_input_absmax` of this model; the weight absmax of a channel is taken over
    all the pair's linears because they share the one scaled activation.
    """
    for name, norm_weight, linears in norm_linear_pairs(model):
        if name not in act_absmax_by_pair:
            raise KeyError(f"no activation absmax for {name}: calibrate with collect_input_absmax first")
        weight_absmax = torch.stack([linear.weight.abs().amax(dim=0) for linear in linears]).amax(dim=0)  # (hidden,)
        smoothing = smoothquant_scales(act_absmax_by_pair[name].to(weight_absmax), weight_absmax, alpha)
        # the fold multiplies the norm by its scale and divides the weights: 1/s divides X and multiplies W by s
        fold_channel_scale(norm_weight, linears, 1.0 / smoothing)
    return model


# ---------------------------------------------------------------------------------------------------------------
# CBQ coarse-to-fine preprocessing (CFP), activation half: find outlier channels, then scale only those.


def coarse_outlier_candidates(values: torch.Tensor, lambda1: float = 1.5) -> torch.Tensor:
    """Indices (k,) of `values` (n,) above Tukey's upper fence Q3 + lambda1 * IQR."""
    quartiles = torch.quantile(values.float(), torch.tensor([0.25, 0.75]))
    q1, q3 = quartiles[0], quartiles[1]
    return torch.nonzero(values.float() > q3 + lambda1 * (q3 - q1)).flatten()


def fine_outlier_split(candidate_values: torch.Tensor, lambda2: float = 1.0) -> torch.Tensor:
    """Positions (m,) in `candidate_values` (k,) of the upper set of the split maximising
    M = (mean_upper - mean_lower) - lambda2 * (var_lower + var_upper).

    Two choices of ours, not from the paper: values are divided by their maximum first, so that lambda2 weighs a
    squared spread against a distance independently of the values' unit; and "no split" (every candidate an
    outlier) competes with an empty lower set centred at 0, the magnitude floor. Without it a single tight group
    of true outliers would always be cut in two. Every split is scored at once from prefix sums (weights have
    thousands of candidates).
    """
    k = candidate_values.numel()
    if k <= 1:
        return torch.zeros(k, dtype=torch.long)
    sorted_values, order = torch.sort(candidate_values.double())                          # (k,), (k,)
    normalized = sorted_values / sorted_values[-1]
    no_split = normalized.mean() - lambda2 * normalized.var(unbiased=False)
    zero = normalized.new_zeros(1)
    prefix = torch.cat([zero, normalized.cumsum(0)])                                       # (k + 1,)
    prefix_sq = torch.cat([zero, normalized.pow(2).cumsum(0)])
    split = torch.arange(1, k, dtype=torch.float64)                                        # lower = [:split]
    mean_lower = prefix[1:k] / split
    mean_upper = (prefix[k] - prefix[1:k]) / (k - split)
    var_lower = prefix_sq[1:k] / split - mean_lower.pow(2)
    var_upper = (prefix_sq[k] - prefix_sq[1:k]) / (k - split) - mean_upper.pow(2)
    scores = (mean_upper - mean_lower) - lambda2 * (var_lower.clamp(min=0) + var_upper.clamp(min=0))  # (k - 1,)
    best = int(torch.argmax(scores))
    best_split = best + 1 if scores[best] > no_split else 0
    return order[best_split:].sort().values


def detect_outlier_channels(values: torch.Tensor, lambda1: float = 1.5, lambda2: float = 1.0) -> torch.Tensor:
    """Indices (m,) into `values` (n,) of the outliers: coarse fence, then fine split of the candidates."""
    candidates = coarse_outlier_candidates(values, lambda1)                               # (k,)
    return candidates[fine_outlier_split(values[candidates], lambda2)]


def cfp_scale_activation_outliers(model: nn.Module, act_absmax_by_pair: dict[str, torch.Tensor],
                                  lambda1: float = 1.5, lambda2: float = 1.0) -> dict[str, list[int]]:
    """Scale each pair's detected outlier channels down to the median channel absmax, folding the inverse scale
    into the linears; every other channel is left alone (unlike SmoothQuant). Returns the channels per norm."""
    scaled_by_norm: dict[str, list[int]] = {}
    for name, norm_weight, linears in norm_linear_pairs(model):
        if name not in act_absmax_by_pair:
            raise KeyError(f"no activation absmax for {name}: calibrate with collect_input_absmax first")
        act_absmax = act_absmax_by_pair[name].float()                                    # (hidden,)
        outliers = detect_outlier_channels(act_absmax, lambda1, lambda2)                 # (m,)
        scale = torch.ones_like(act_absmax)                                              # (hidden,)
        # an outlier's absmax is above the fence, hence positive, so the ratio is finite and non-zero
        scale[outliers] = act_absmax.median() / act_absmax[outliers]
        fold_channel_scale(norm_weight, linears, scale)
        scaled_by_norm[name] = outliers.tolist()
    return scaled_by_norm


@torch.no_grad()
def cfp_clip_weight_outliers(linears: Iterable[nn.Linear], lambda1: float = 1.5,
                             lambda2: float = 1.0) -> dict[int, int]:
    """CFP, weight half: in each linear, the weights whose magnitude the coarse fence and the fine split call
    outliers are truncated to the largest magnitude that is not one (sign kept). Not function-preserving: it
    trades a few large weights for a finer grid for all the others. Returns {layer index: weights clipped}."""
    clipped: dict[int, int] = {}
    for index, linear in enumerate(linears):
        magnitude = linear.weight.abs().flatten()                                         # (out·in,)
        outliers = detect_outlier_channels(magnitude, lambda1, lambda2)
        if outliers.numel() and outliers.numel() < magnitude.numel():
            keep = torch.ones_like(magnitude, dtype=torch.bool)
            keep[outliers] = False
            bound = magnitude[keep].max()
            linear.weight.clamp_(-bound, bound)
        clipped[index] = int(outliers.numel())
    return clipped
