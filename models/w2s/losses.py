"""The weak-to-strong losses of "Vision Superalignment" (Guo et al., arXiv 2402.03749): KD, AugConf, AdaptConf.

Notation (the official code's, ggjy/vision_weak_to_strong classification/distillers/): student logits s (B, K), frozen
weak-teacher logits t (B, K), ground truth y (B,); ŝ = argmax s and t̂ = argmax t are hard labels (constants for
autograd).

* KD       [code: distillers/utils.py kd_loss]: T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean.
* AugConf  [code: distillers/adaptconf.py AugConf]: one scalar α ramped 0 -> τ_aug over the first r·E epochs,
  L = w_gt·CE(s, y) + w_kd·[(1 − α)·KD + α·CE(s, ŝ)].
* AdaptConf [code: distillers/adaptconf.py AdaptConf]: per-sample
      α_i = stopgrad( exp(CE(s_i, ŝ_i)/τ) / (exp(CE(s_i, ŝ_i)/τ) + exp(CE(s_i, t̂_i)/τ)) ),
  L = w_gt·CE(s, y) + w_kd·mean_i[(1 − α_i)·KD_i] + w_kd·mean_i[α_i·CE(s_i, ŝ_i)].
  Because ŝ is the student's own argmax, CE(s, ŝ) ≤ CE(s, t̂), so α ∈ (0, 0.5]: 0.5 when student and teacher
  agree, → 0 when the student confidently disagrees. Computed as σ((c_self − c_teach)/τ), the same value
  without overflowing exp.
* AdaptConf, "teacher_conf" variant (ASSUMED reading of the paper's text, arXiv 2402.03749, an ablation only):
  the second term of the denominator is the teacher's own confidence CE(t, t̂) instead of CE(s, t̂), so
  α = σ((CE(s, ŝ) − CE(t, t̂))/τ) ∈ (0, 1).

Every function is pure (no module state); the training loop passes the epoch where a schedule needs it.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

AlphaMode = Literal["code", "teacher_conf"]


def kd_per_sample(s: torch.Tensor, t: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)) per row: (B, K), (B, K) -> (B,). Gradient flows into s only."""
    log_p_s = F.log_softmax(s / temperature, dim=-1)  # (B, K)
    p_t = F.softmax(t.detach() / temperature, dim=-1)  # (B, K)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(-1) * temperature**2  # (B,)


def kd_loss(s: torch.Tensor, t: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The code's kd_loss with reduction='batchmean': the batch mean of `kd_per_sample`."""
    return kd_per_sample(s, t, temperature).mean()


def self_ce_per_sample(s: torch.Tensor) -> torch.Tensor:
    """CE(s, argmax s) per row, (B, K) -> (B,): the student's loss on its own hard label (= −log max p_s)."""
    return F.cross_entropy(s, s.argmax(-1), reduction="none")


def adapt_conf_alpha(s: torch.Tensor, t: torch.Tensor, tau: float, mode: AlphaMode = "code") -> torch.Tensor:
    """Per-sample α of AdaptConf, detached: (B, K), (B, K) -> (B,).

    mode="code": σ((CE(s, ŝ) − CE(s, t̂))/τ) ∈ (0, 0.5]; mode="teacher_conf": σ((CE(s, ŝ) − CE(t, t̂))/τ) ∈ (0, 1).
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    with torch.no_grad():
        c_self = self_ce_per_sample(s)  # (B,)
        if mode == "code":
            c_other = F.cross_entropy(s, t.argmax(-1), reduction="none")  # (B,) student's CE on teacher's label
        elif mode == "teacher_conf":
            c_other = F.cross_entropy(t, t.argmax(-1), reduction="none")  # (B,) teacher's own confidence
        else:
            raise ValueError(f"alpha mode must be 'code' or 'teacher_conf', got {mode!r}")
        # exp(a/τ) / (exp(a/τ) + exp(b/τ)) = σ((a − b)/τ), without overflow for large CE/τ.
        return torch.sigmoid((c_self - c_other) / tau).detach()


def aug_conf_alpha(epoch: int, epochs: int, threshold: float, rate: float) -> float:
    """AugConf's scalar α at (0-indexed) `epoch`: linear ramp epoch/(rate·E)·threshold, then `threshold`.

    As in the code, the ramp compares against int(E·rate) and divides by E·rate.
    """
    if epoch < int(epochs * rate):
        return epoch / (epochs * rate) * threshold
    return threshold


def w2s_loss(
    s: torch.Tensor,  # (B, K) student logits
    t: torch.Tensor,  # (B, K) weak-teacher logits (no gradient)
    y: torch.Tensor | None,  # (B,) ground truth, used only when w_gt > 0
    kind: Literal["gt", "kd", "augconf", "adaptconf"],
    *,
    w_gt: float = 1.0,
    w_kd: float = 1.0,
    temperature: float = 1.0,
    tau: float = 0.5,
    alpha_mode: AlphaMode = "code",
    aug_alpha: float = 0.0,
    alpha_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One batch's loss for `kind` and its parts; parts["alpha"] is the per-sample α (B,) (zeros for kd/gt).

    kind="gt" is plain CE on y (the strong ceiling); `aug_alpha` is AugConf's scheduled scalar α;
    `alpha_scale` multiplies AdaptConf's α (the few-shot/noisy-label code's warm-up; 1 = the classification code).
    """
    batch = s.shape[0]
    zero = s.new_zeros(())
    loss_gt = w_gt * F.cross_entropy(s, y) if (w_gt > 0 and y is not None) else zero
    if kind == "gt":
        return loss_gt, {"gt": loss_gt, "kd": zero, "align": zero, "alpha": s.new_zeros(batch)}
    if kind == "kd":
        alpha = s.new_zeros(batch)
    elif kind == "augconf":
        alpha = s.new_full((batch,), float(aug_alpha))
    elif kind == "adaptconf":
        alpha = alpha_scale * adapt_conf_alpha(s, t, tau, alpha_mode)
    else:
        raise ValueError(f"unknown loss kind {kind!r}")
    loss_kd = w_kd * ((1 - alpha) * kd_per_sample(s, t, temperature)).mean()
    loss_align = w_kd * (alpha * self_ce_per_sample(s)).mean() if kind != "kd" else zero
    return loss_gt + loss_kd + loss_align, {"gt": loss_gt, "kd": loss_kd, "align": loss_align, "alpha": alpha}
