"""Weak teacher, strong student and the three disjoint splits of this project's weak-to-strong miniature.

* weak teacher: logistic regression (hidden=0) or a one-hidden-layer MLP on raw pixels, trained on weak-train,
  optionally with symmetric label noise so that it sits near 80 % top-1;
* strong student: a small timm VisionTransformer (models/common/vit.py builder), trained on w2s-train from
  the teacher's outputs only (protocol B, w_gt = 0) or with the ground truth too (protocol A, w_gt = 1);
* splits: the dataset's train split is cut, per class, into weak-train and w2s-train (deterministic by seed);
  the dataset's test split is the test set. The three are disjoint by construction (tests check it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.common.checks import at_least, below, non_negative, positive


@dataclass(frozen=True)
class WeakConfig:
    hidden: int = 0  # 0 = logistic regression; > 0 = MLP with one hidden ReLU layer
    # Share of weak-train labels replaced by a random other class before training the teacher (our miniature:
    # to sit near 80 %).
    label_noise: float = 0.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        non_negative(self, "hidden", "label_noise", "weight_decay")
        below(self, 1, "label_noise")
        at_least(self, 1, "epochs", "batch_size")
        positive(self, "lr")


class WeakTeacher(nn.Module):
    """Logistic regression or a 2-layer MLP on flattened pixels: (B, C, H, W) -> (B, K) logits."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)


@dataclass(frozen=True)
class W2SSplits:
    """Indices into the dataset's train split; test is the dataset's own test split."""

    weak: np.ndarray  # (N_weak,) sorted int64
    w2s: np.ndarray  # (N_w2s,) sorted int64


def w2s_split(labels: np.ndarray, weak_fraction: float, seed: int) -> W2SSplits:
    """Stratified cut of the train split: every class sends round(weak_fraction·n_class) images to weak-train.

    Deterministic by seed; weak ∪ w2s = all train indices and weak ∩ w2s = ∅.
    """
    if not 0.0 < weak_fraction < 1.0:
        raise ValueError(f"weak_fraction must lie strictly between 0 and 1, got {weak_fraction}")
    rng = np.random.default_rng(seed)
    weak, w2s = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_weak = int(round(weak_fraction * len(members)))
        weak.append(members[:n_weak])
        w2s.append(members[n_weak:])
    return W2SSplits(np.sort(np.concatenate(weak)).astype(np.int64), np.sort(np.concatenate(w2s)).astype(np.int64))


def noisy_labels(y: torch.Tensor, num_classes: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Replaces round(rate·N) labels, chosen at random, by a uniformly drawn *different* class."""
    y = y.clone()
    n = int(round(rate * len(y)))
    if n == 0:
        return y
    idx = torch.randperm(len(y), generator=generator)[:n]
    shift = torch.randint(1, num_classes, (n,), generator=generator)
    y[idx] = (y[idx] + shift) % num_classes
    return y


def train_weak_teacher(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: WeakConfig,
                       generator: torch.Generator) -> tuple[WeakTeacher, dict[str, float]]:
    """Trains the weak teacher on (x, noisy y) with AdamW + cosine; returns it frozen in eval mode."""
    y_used = noisy_labels(y, num_classes, cfg.label_noise, generator)
    model = WeakTeacher(int(np.prod(x.shape[1:])), num_classes, cfg.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x[idx]), y_used[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    noise_share = float((y_used != y).float().mean())
    return model, {"label_noise_share": noise_share}
