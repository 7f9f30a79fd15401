"""Pure training and evaluation loops for image classifiers, shared by every vision recipe."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.common.checks import at_least, below, non_negative, positive
from models.common.reporting import Reporter


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 5.0  # may be fractional: 0.5 = half an epoch of steps
    batch_size: int = 64
    lr: float = 1e-3  # AdamW peak after the linear warm-up; the cosine ends at min_lr
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm
    max_train_images: int | None = None  # cap for smoke runs; None = the whole split

    def __post_init__(self) -> None:
        positive(self, "epochs", "lr", "grad_clip")
        non_negative(self, "min_lr", "weight_decay", "warmup_epochs", "label_smoothing")
        below(self, 1, "label_smoothing")
        at_least(self, 1, "batch_size", "max_train_images")


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up then cosine decay to min_lr (the DeiT schedule, per step instead of per epoch)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,  # (N, C, H, W) float, already normalised
    y: torch.Tensor,  # (N,) int64
    cfg: TrainConfig,
    reporter: Reporter,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    metric_prefix: str = "train",
) -> dict[str, float]:
    """AdamW + warm-up/cosine + label smoothing; logs loss and lr every step. Trains in place."""
    if cfg.max_train_images is not None:
        x, y = x[: cfg.max_train_images], y[: cfg.max_train_images]
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # Norms, biases, position embeddings and tokens are not weight-decayed (timm's/DeiT's convention).
            (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "dist_token")) else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    model.train()
    step, running_loss, running_correct, seen = 0, 0.0, 0, 0
    while step < total_steps:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), cfg.batch_size):
            if step >= total_steps:
                break
            idx = order[start : start + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, generator)
            xb, yb = xb.to(device), yb.to(device)
            lr = learning_rate_at(step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(xb)  # (B, num_classes)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            running_loss += loss.item() * len(yb)
            running_correct += (logits.argmax(-1) == yb).sum().item()
            seen += len(yb)
            step += 1
            reporter.log_metrics({f"{metric_prefix}_loss": loss.item(), f"{metric_prefix}_lr": lr}, step=step)
            reporter.progress(step, total_steps, f"{metric_prefix} step")
    model.eval()
    return {
        f"{metric_prefix}_loss_mean": running_loss / max(1, seen),
        f"{metric_prefix}_top1": 100.0 * running_correct / max(1, seen),
        f"{metric_prefix}_steps": float(total_steps),
    }


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def top1_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of rows whose arg-max equals the label."""
    return 100.0 * (logits.argmax(-1) == y).float().mean().item()


def top1_per_item(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """100 for each row whose arg-max equals the label, else 0: the per-item top-1 scores paired intervals are
    computed from (their mean is `top1_accuracy`)."""
    return 100.0 * (logits.argmax(-1) == y).numpy().astype(np.float64)
