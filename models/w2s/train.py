"""The student's training loop for every weak-to-strong loss (gt ceiling, KD, AugConf, AdaptConf).

Per step: augment the batch, run the frozen teacher on the *same* augmented images (as the official distillers
do), compute `w2s_loss`, AdamW + warm-up/cosine. Per epoch it records the share of w2s-train samples where the
teacher is wrong and the student disagrees with it and is right ("corrects the teacher"); in the last epoch it
keeps every sample's α and whether student and teacher agree (the α histogram of this project's miniature).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from models.common.checks import at_least, at_most, below, non_negative, one_of, positive
from models.common.classifier import learning_rate_at
from models.common.reporting import Reporter
from models.w2s.losses import AlphaMode, aug_conf_alpha, w2s_loss

LossKind = Literal["gt", "kd", "augconf", "adaptconf"]


@dataclass(frozen=True)
class StudentTrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    max_train_images: int | None = None  # cap for smoke runs; None = all of w2s-train

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "batch_size", "max_train_images")
        positive(self, "lr", "grad_clip")
        non_negative(self, "min_lr", "weight_decay", "warmup_epochs")


@dataclass(frozen=True)
class LossConfig:
    """The official flags (ggjy/vision_weak_to_strong, classification/train.py) with the miniature's values."""

    kd_temperature: float = 1.0  # T of the KD term (--kd-temperature)
    tau: float = 0.5  # AdaptConf superalignment threshold τ (--superalignment-threshold)
    aug_threshold: float = 0.5  # AugConf's final α (--superalignment-threshold)
    aug_rate: float = 0.3  # AugConf ramps α over the first rate·E epochs
    alpha_mode: AlphaMode = "code"  # AdaptConf's α: 'code' = official formula; 'teacher_conf' = ASSUMED paper text
    # Share of epochs over which AdaptConf's α ramps from 0 (the few-shot/noisy-label code uses 0.25; the
    # classification code 0).
    alpha_warmup: float = 0.0
    w_kd: float = 1.0

    def __post_init__(self) -> None:
        positive(self, "kd_temperature", "tau")
        non_negative(self, "aug_threshold", "aug_rate", "alpha_warmup", "w_kd")
        at_most(self, 1, "aug_threshold", "aug_rate")
        below(self, 1, "alpha_warmup")
        one_of(self, "alpha_mode", ("code", "teacher_conf"))


@dataclass
class StudentRun:
    """What one student training leaves besides the trained weights."""

    metrics: dict[str, float]
    corrected_share_by_epoch: list[float] = field(default_factory=list)
    final_alpha: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (N,) α of the last epoch
    final_agree: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.bool))  # (N,)


def train_student(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,  # (N, C, H, W) w2s-train images
    y: torch.Tensor,  # (N,) ground truth: used by the loss only when w_gt > 0; always for the bookkeeping
    kind: LossKind,
    w_gt: float,
    train_cfg: StudentTrainConfig,
    loss_cfg: LossConfig,
    reporter: Reporter,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    metric_prefix: str = "train",
    alpha_mode: AlphaMode | None = None,
) -> StudentRun:
    """Trains `student` in place on the w2s-train split with loss `kind`; the teacher stays frozen."""
    if train_cfg.max_train_images is not None:
        x, y = x[: train_cfg.max_train_images], y[: train_cfg.max_train_images]
    if kind == "gt" and w_gt <= 0:
        raise ValueError("the ground-truth ceiling needs w_gt > 0")
    mode = alpha_mode or loss_cfg.alpha_mode
    teacher.eval()
    steps_per_epoch = math.ceil(len(x) / train_cfg.batch_size)
    total_steps = train_cfg.epochs * steps_per_epoch
    warmup_steps = round(train_cfg.warmup_epochs * steps_per_epoch)
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=train_cfg.lr)
    run = StudentRun(metrics={})
    step = 0
    for epoch in range(train_cfg.epochs):
        student.train()
        aug_alpha = aug_conf_alpha(epoch, train_cfg.epochs, loss_cfg.aug_threshold, loss_cfg.aug_rate)
        warm = loss_cfg.alpha_warmup * train_cfg.epochs
        alpha_scale = min(1.0, epoch / warm) if warm > 0 else 1.0
        order = torch.randperm(len(x), generator=generator)
        corrected, loss_sum, last = 0, 0.0, epoch == train_cfg.epochs - 1
        alphas, agrees = [], []
        for start in range(0, len(x), train_cfg.batch_size):
            idx = order[start : start + train_cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, generator)
            lr = learning_rate_at(step, total_steps, warmup_steps, train_cfg.lr, train_cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.no_grad():
                t = teacher(xb)  # (B, K)
            s = student(xb)  # (B, K)
            loss, parts = w2s_loss(s, t, yb, kind, w_gt=w_gt, w_kd=loss_cfg.w_kd,
                                   temperature=loss_cfg.kd_temperature, tau=loss_cfg.tau, alpha_mode=mode,
                                   aug_alpha=aug_alpha, alpha_scale=alpha_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), train_cfg.grad_clip)
            optimizer.step()
            step += 1
            s_hat, t_hat = s.detach().argmax(-1), t.argmax(-1)
            corrected += int(((t_hat != yb) & (s_hat == yb)).sum())
            loss_sum += loss.item() * len(idx)
            if last:
                alphas.append(parts["alpha"].detach())
                agrees.append(s_hat == t_hat)
            reporter.log_metrics({f"{metric_prefix}_loss": loss.item(), f"{metric_prefix}_lr": lr}, step=step)
            reporter.progress(step, total_steps, f"{metric_prefix} step")
        run.corrected_share_by_epoch.append(corrected / len(x))
        reporter.log_metrics({f"{metric_prefix}_corrected_share": corrected / len(x),
                              f"{metric_prefix}_epoch_loss": loss_sum / len(x)}, step=epoch + 1)
        if last:
            run.final_alpha, run.final_agree = torch.cat(alphas), torch.cat(agrees)
    student.eval()
    run.metrics = {"train_steps": float(total_steps), "train_loss_last_epoch": loss_sum / len(x),
                   "corrected_share_first_epoch": run.corrected_share_by_epoch[0],
                   "corrected_share_last_epoch": run.corrected_share_by_epoch[-1]}
    return run
