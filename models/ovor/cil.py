"""Rehearsal-free class-incremental training of OnePrompt with and without VOR, and the CIL metrics.

Per task t (vision.md section 3.1, official `NormalNN.train`): (a) prompts + head on masked CE for E1 epochs;
(b) prompt frozen, training features re-extracted with augmentation at each VOR epoch; (c) NPOS outliers;
(d) head only for E2 epochs on masked CE + VOR. Adam (0.9, 0.999), no weight decay, one cosine schedule over
E1 + E2 epochs per task, a fresh optimizer per task.

Head variants share phase (a). Phase (a)'s masked CE touches only the current task's head rows, which no earlier
phase (d) has touched, so the prompt trajectory does not depend on what phase (d) did to the older rows: running
every variant's phase (d) on its own copy of the head after one shared phase (a) gives exactly the models that
separate runs with separate random streams would give, for the cost of one prompt training. The variants are
OnePrompt without VOR (phase (d) with lambda = 0: same data, same steps, CE only), OVOR (the configured VOR) and
each VOR ablation (another outlier centre, lambda or threshold rule).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.common.checks import at_least, below, non_negative, one_of, positive
from models.common.reporting import Reporter
from models.ovor.model import OnePromptViT
from models.ovor.vor import energy, masked_cross_entropy, synthesize_outliers, vor_loss

THRESHOLD_RULES = ("auto", "paper", "calibrate")
OUTLIER_CENTERS = ("boundary", "origin")


@dataclass(frozen=True)
class StreamConfig:
    num_tasks: int = 5
    classes_per_task: int = 2
    seeds: tuple[int, ...] = (0,)  # class order per seed; seed 0 = natural order
    prompt_epochs: float = 4.0  # E1: phase (a), prompts + head, masked CE
    vor_epochs: int = 1  # E2: phase (d), head only; features re-extracted each epoch
    # Passes of phase (d) over each epoch's stored features: 1 = the official schedule; more = more head steps at
    # no backbone cost.
    vor_passes: int = 1
    vor_lr: float | None = None  # phase (d) peak lr, cosine to 0 over phase (d); None = the official E1 + E2 tail
    batch_size: int = 128
    lr: float = 1e-3
    max_train_per_class: int | None = None  # cap for smoke runs
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        at_least(self, 2, "num_tasks")
        at_least(self, 1, "classes_per_task", "vor_epochs", "vor_passes", "batch_size", "max_train_per_class",
                 "eval_batch_size")
        positive(self, "prompt_epochs", "vor_lr", "lr")
        if not self.seeds:
            raise ValueError(f"seeds must hold at least one seed, got {self.seeds!r}")


@dataclass(frozen=True)
class VORAblation:
    """A VOR setting run beside the method in the same stream; None = the method's value."""

    name: str
    outlier_center: str | None = None
    weight: float | None = None
    thresholds: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"name must be lower-case letters, digits and _ (a metric prefix), got {self.name!r}")
        one_of(self, "outlier_center", OUTLIER_CENTERS)
        non_negative(self, "weight")
        one_of(self, "thresholds", THRESHOLD_RULES)


@dataclass(frozen=True)
class VORConfig:
    weight: float = 0.1  # lambda
    tau_id: float = -15.0
    tau_ood: float = -3.0
    # paper = tau_id/tau_ood as given; calibrate = tau_id at the calib_quantile of ID energies after phase (a),
    # tau_ood = tau_id + gap; auto = paper when the head's energies reach tau_id at that quantile, else calibrate
    # (vision.md section 3.5).
    thresholds: str = "auto"
    calib_quantile: float = 0.2
    # False: calibrate after the first task's phase (a) and keep the thresholds for every task, as the paper's
    # constants are.
    calibrate_per_task: bool = False
    gap: float = 12.0
    k: int = 10
    select: int = 10
    sample_from: int = 100
    num_per_class: int = 20
    cov: float = 0.1
    outlier_center: str = "boundary"  # the method's centre
    ablations: tuple[VORAblation, ...] = ()  # run in the same stream (head-only, sharing phase (a))

    def __post_init__(self) -> None:
        non_negative(self, "weight")
        one_of(self, "thresholds", THRESHOLD_RULES)
        positive(self, "calib_quantile", "gap", "cov")
        below(self, 1, "calib_quantile")
        at_least(self, 1, "k", "select", "sample_from", "num_per_class")
        one_of(self, "outlier_center", OUTLIER_CENTERS)

    def resolved(self, ablation: VORAblation) -> VORConfig:
        """This config with the ablation's overrides."""
        overrides = {f.name: getattr(ablation, f.name) for f in dataclasses.fields(ablation) if f.name != "name"}
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Stream:
    """A class-incremental stream: tasks as class lists and the image tensors they index into."""

    tasks: list[list[int]]
    x_train: torch.Tensor  # (N, C, H, W)
    y_train: torch.Tensor  # (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor


def class_order(num_classes: int, seed: int) -> list[int]:
    """Seed 0 keeps the natural order (as the official code); other seeds shuffle it."""
    order = list(range(num_classes))
    if seed != 0:
        order = np.random.default_rng(seed).permutation(num_classes).tolist()
    return order


def split_tasks(order: list[int], num_tasks: int, classes_per_task: int) -> list[list[int]]:
    if num_tasks * classes_per_task > len(order):
        raise ValueError(f"{num_tasks} tasks x {classes_per_task} classes need {num_tasks * classes_per_task} "
                         f"classes, the dataset has {len(order)}")
    return [order[t * classes_per_task:(t + 1) * classes_per_task] for t in range(num_tasks)]


# ------------------------------------------------------------------------------------------------- metrics


def average_accuracy(matrix: np.ndarray) -> float:
    """A_N: mean over tasks of the accuracy after the last task (unweighted over tasks)."""
    return float(np.mean(matrix[-1, : matrix.shape[0]]))


def average_forgetting(matrix: np.ndarray) -> float:
    """F_N (CODA-P logger): at each step t >= 1, mean over earlier tasks j of (best accuracy on j before t minus
    accuracy on j at t); averaged over the steps. matrix[t, j] = accuracy on task j after task t (j <= t)."""
    steps = []
    for t in range(1, matrix.shape[0]):
        drops = [np.max(matrix[j:t, j]) - matrix[t, j] for j in range(t)]
        steps.append(np.mean(drops))
    return float(np.mean(steps)) if steps else 0.0


def cross_task_confusion(pred: np.ndarray, target: np.ndarray, task_of: dict[int, int]) -> tuple[float, float]:
    """(share of errors predicted into another task's classes, share of all samples so predicted), in %."""
    wrong = pred != target
    other = np.array([task_of[int(p)] != task_of[int(t)] for p, t in zip(pred, target)], dtype=bool)
    errors = int(wrong.sum())
    share_of_errors = 100.0 * float((wrong & other).sum()) / errors if errors else 0.0
    return share_of_errors, 100.0 * float(other.mean()) if len(pred) else 0.0


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class VariantTrace:
    """What one head variant measured over one stream."""

    name: str
    matrix: np.ndarray  # (T, T) accuracy %, NaN above the diagonal
    confusion_share: float = math.nan  # % of final errors that land in another task's classes
    inter_task_error: float = math.nan  # % of final test samples predicted into another task
    id_below_tau: list[float] = field(default_factory=list)  # per task, % of ID energies <= tau_id after (d)
    ood_above_tau: list[float] = field(default_factory=list)  # per task, % of outlier energies >= tau_ood
    thresholds: list[tuple[float, float, str]] = field(default_factory=list)  # per task (tau_id, tau_ood, how)
    head: nn.Linear | None = None

    def summary(self) -> dict[str, float]:
        out = {"a_n": average_accuracy(self.matrix), "f_n": average_forgetting(self.matrix),
               "confusion_share": self.confusion_share, "inter_task_error": self.inter_task_error}
        if self.id_below_tau:
            out["id_below_tau_pct"] = float(np.mean(self.id_below_tau))
            out["ood_above_tau_pct"] = float(np.mean(self.ood_above_tau))
            out["tau_id_mean"] = float(np.mean([t[0] for t in self.thresholds]))
            out["tau_ood_mean"] = float(np.mean([t[1] for t in self.thresholds]))
            out["thresholds_calibrated_tasks"] = float(sum(t[2] == "calibrated" for t in self.thresholds))
        return out


@torch.no_grad()
def extract_features(model: OnePromptViT, x: torch.Tensor, batch_size: int,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        if augment is not None:
            xb = augment(xb)
        out.append(model.features(xb.to(device)))
    return torch.cat(out)  # (N, D)


def _cosine(lr: float, progress: float) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _thresholds(cfg: VORConfig, id_energy: torch.Tensor) -> tuple[float, float, str]:
    q = float(torch.quantile(id_energy, cfg.calib_quantile))
    if cfg.thresholds == "paper" or (cfg.thresholds == "auto" and q <= cfg.tau_id):
        return cfg.tau_id, cfg.tau_ood, "paper"
    return q, q + cfg.gap, "calibrated"


METHOD, BASELINE = "ovor", "oneprompt"


def run_stream(model: OnePromptViT, stream: Stream, cfg: StreamConfig, vor: VORConfig, reporter: Reporter,
               generator: torch.Generator, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
               metric_prefix: str = "") -> dict[str, VariantTrace]:
    """Trains `model` (prompts + its head) over the stream in place and returns every head variant's trace.

    Variants: "oneprompt" (no VOR: lambda = 0), "ovor" (the method's VOR settings) and one per `vor.ablations`.
    On return `model.head` is the "ovor" head.
    """
    device = next(model.parameters()).device
    settings: dict[str, VORConfig | None] = {BASELINE: None, METHOD: vor}
    for ablation in vor.ablations:
        if ablation.name in settings:
            raise ValueError(f"VOR ablation name {ablation.name!r} is taken")
        settings[ablation.name] = vor.resolved(ablation)
    names = list(settings)
    T = len(stream.tasks)
    traces = {n: VariantTrace(n, np.full((T, T), np.nan)) for n in names}
    heads = {n: copy.deepcopy(model.head) for n in names}
    task_of = {c: t for t, classes in enumerate(stream.tasks) for c in classes}
    model.freeze_backbone()
    aug = (lambda xb: augment(xb, generator)) if augment is not None else None
    step = 0
    seen: list[int] = []
    fixed: dict[str, tuple[float, float, str]] = {}
    for t, classes in enumerate(stream.tasks):
        seen += classes
        task_classes = torch.tensor(classes, device=device)
        mask = torch.isin(stream.y_train, torch.tensor(classes))
        x_task, y_task = stream.x_train[mask], stream.y_train[mask]
        if cfg.max_train_per_class is not None:
            keep = torch.cat([torch.nonzero(y_task == c).squeeze(1)[: cfg.max_train_per_class] for c in classes])
            x_task, y_task = x_task[keep], y_task[keep]
        n_batches = math.ceil(len(x_task) / cfg.batch_size)
        total_epochs = cfg.prompt_epochs + cfg.vor_epochs

        # (a) prompts + head, masked CE, fresh Adam, cosine over E1 + E2 epochs.
        # Every variant's head carries its own older rows; phase (a) writes the current task's rows only.
        params = [*model.prompt_parameters(), *model.head.parameters()]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
        a_steps = max(1, round(cfg.prompt_epochs * n_batches))
        model.train()
        done = 0
        while done < a_steps:
            order = torch.randperm(len(x_task), generator=generator)
            for i in range(0, len(order), cfg.batch_size):
                if done >= a_steps:
                    break
                idx = order[i:i + cfg.batch_size]
                xb = x_task[idx]
                if aug is not None:
                    xb = aug(xb)
                for g in optimizer.param_groups:
                    g["lr"] = _cosine(cfg.lr, done / n_batches / total_epochs)
                loss = masked_cross_entropy(model(xb.to(device)), y_task[idx].to(device), task_classes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                step += 1
                reporter.log_metrics({f"{metric_prefix}prompt_loss": loss.item()}, step=step)
        model.eval()
        with torch.no_grad():
            for n in names:  # the shared phase (a) result for this task's rows, into every variant's head
                heads[n].weight[task_classes] = model.head.weight[task_classes]
                heads[n].bias[task_classes] = model.head.bias[task_classes]

        # (b)-(d) per variant, on features re-extracted with augmentation at each VOR epoch.
        epoch_feats = [extract_features(model, x_task, cfg.eval_batch_size, aug) for _ in range(cfg.vor_epochs)]
        plain = extract_features(model, x_task, cfg.eval_batch_size)
        y_dev = y_task.to(device)
        for n in names:
            head = heads[n]
            v_cfg = settings[n]
            use_vor = v_cfg is not None and v_cfg.weight > 0
            if use_vor and (t == 0 or v_cfg.calibrate_per_task or n not in fixed):
                with torch.no_grad():
                    fixed[n] = _thresholds(v_cfg, energy(head(plain), task_classes))
            tau_id, tau_ood, how = fixed.get(n, (math.nan, math.nan, "none"))
            opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
            d_step = 0
            outliers = None
            d_total = cfg.vor_epochs * cfg.vor_passes * n_batches
            for feats in [f for f in epoch_feats for _ in range(cfg.vor_passes)]:
                if use_vor:
                    outliers = synthesize_outliers(
                        feats, v_cfg.num_per_class * len(classes), v_cfg.k, v_cfg.select, v_cfg.sample_from,
                        v_cfg.cov, v_cfg.outlier_center, generator)  # type: ignore[arg-type]
                    per_batch = max(1, len(outliers) // n_batches)
                    ood_order = torch.randperm(len(outliers), generator=generator)
                order = torch.randperm(len(feats), generator=generator)
                for b, i in enumerate(range(0, len(order), cfg.batch_size)):
                    idx = order[i:i + cfg.batch_size]
                    if cfg.vor_lr is None:
                        progress = (cfg.prompt_epochs + d_step / (cfg.vor_passes * n_batches)) / total_epochs
                        lr = _cosine(cfg.lr, progress)
                    else:
                        lr = _cosine(cfg.vor_lr, d_step / d_total)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    logits = head(feats[idx])
                    loss = masked_cross_entropy(logits, y_dev[idx], task_classes)
                    if use_vor:
                        ood = outliers[ood_order[(b * per_batch) % len(outliers):][:per_batch]]
                        loss = loss + vor_loss(energy(logits, task_classes), energy(head(ood), task_classes),
                                               tau_id, tau_ood, v_cfg.weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    d_step += 1
            if use_vor:
                with torch.no_grad():
                    e_id = energy(head(plain), task_classes)
                    e_ood = energy(head(outliers), task_classes)
                trace = traces[n]
                trace.thresholds.append((tau_id, tau_ood, how))
                trace.id_below_tau.append(100.0 * float((e_id <= tau_id).float().mean()))
                trace.ood_above_tau.append(100.0 * float((e_ood >= tau_ood).float().mean()))

        # Evaluate every variant on the test sets of the tasks seen so far, over the seen classes.
        test_mask = torch.isin(stream.y_test, torch.tensor(seen))
        feats = extract_features(model, stream.x_test[test_mask], cfg.eval_batch_size)
        y_seen = stream.y_test[test_mask].numpy()
        seen_t = torch.tensor(seen, device=device)
        for n in names:
            with torch.no_grad():
                pred = seen_t[heads[n](feats)[:, seen_t].argmax(-1)].cpu().numpy()
            for j in range(t + 1):
                in_j = np.isin(y_seen, stream.tasks[j])
                traces[n].matrix[t, j] = 100.0 * float((pred[in_j] == y_seen[in_j]).mean())
            if t == T - 1:
                traces[n].confusion_share, traces[n].inter_task_error = cross_task_confusion(pred, y_seen, task_of)
        reporter.progress(t + 1, T, f"{metric_prefix}tasks")

    with torch.no_grad():
        model.head.load_state_dict(heads[METHOD].state_dict())
    for n in names:
        traces[n].head = heads[n]
    return traces
