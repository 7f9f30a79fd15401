"""Rehearsal-free class-incremental training of OnePrompt and of OVOR, and the CIL metrics.

The two schedules of the official code (jpmorganchase/ovor, `learners/default.py`, `--epochs E0 E1 E2`), per task t,
each with a fresh Adam (0.9, 0.999), no weight decay, and one cosine schedule over the task's epochs:
- OnePrompt (`--epochs 0 50 0`, the default of configs/common.yaml): prompts + head trained together on masked CE
  for all E1 + E2 epochs; there is no head-only phase.
- OVOR (`--epochs 0 40 10`, the official ImageNet-R setting): (a) prompts + head on masked CE for E1 epochs; (b) prompt
  frozen, training features re-extracted with augmentation at each of the E2 epochs; (c) NPOS outliers; (d) head
  only on masked CE + VOR.

OVOR's head variants (the VOR ablations) share phase (a). Phase (a)'s masked CE touches only the current task's head
rows, which no earlier phase (d) has touched, so the prompt trajectory does not depend on what phase (d) did to the
older rows: running every variant's phase (d) on its own copy of the head after one shared phase (a) gives exactly
the models that separate runs with separate random streams would give, for the cost of one prompt training.
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
OVOR, ONEPROMPT = "ovor", "oneprompt"  # the variant names of the two schedules


@dataclass(frozen=True)
class StreamConfig:
    num_tasks: int = 5
    classes_per_task: int = 2
    # E1: OVOR's phase (a), prompts + head, masked CE. OnePrompt trains prompts + head for E1 + E2 epochs.
    prompt_epochs: float = 4.0
    vor_epochs: int = 1  # E2: OVOR's phase (d), head only; features re-extracted each epoch
    batch_size: int = 128
    lr: float = 1e-3
    max_train_per_class: int | None = None  # cap for smoke runs
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        at_least(self, 2, "num_tasks")
        at_least(self, 1, "classes_per_task", "vor_epochs", "batch_size", "max_train_per_class", "eval_batch_size")
        positive(self, "prompt_epochs", "lr")


@dataclass(frozen=True)
class HeadSchedule:
    """Phase (d)'s schedule (head only, on stored features). passes: over each epoch's stored features (1 = the
    official schedule; more = more head steps at no backbone cost). lr: peak of a fresh cosine to 0 over phase (d);
    None = the official tail of the task's E1 + E2 cosine."""

    passes: int = 1
    lr: float | None = None

    def __post_init__(self) -> None:
        at_least(self, 1, "passes")
        positive(self, "lr")

    def label(self) -> str:
        return f"{self.passes} pass(es), " + ("official cosine tail" if self.lr is None else f"fresh cosine from {self.lr:g}")


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
        if self.name == ONEPROMPT:
            raise ValueError(f"name {self.name!r} is the OnePrompt baseline's; an OVOR ablation needs another")
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
    # (this project's miniature: a tiny head's energies may not reach the paper's scale).
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
    # Phase (d)'s schedule: one = fixed; several = every variant is trained at each and the run keeps the one under
    # which OVOR's A_N on the stream's evaluation split (val) is highest, for every variant.
    head_schedules: tuple[HeadSchedule, ...] = (HeadSchedule(),)
    ablations: tuple[VORAblation, ...] = ()  # run in the same stream (head-only, sharing phase (a))

    def __post_init__(self) -> None:
        non_negative(self, "weight")
        one_of(self, "thresholds", THRESHOLD_RULES)
        positive(self, "calib_quantile", "gap", "cov")
        below(self, 1, "calib_quantile")
        at_least(self, 1, "k", "select", "sample_from", "num_per_class")
        one_of(self, "outlier_center", OUTLIER_CENTERS)
        if not self.head_schedules:
            raise ValueError("head_schedules must hold at least one schedule")

    def resolved(self, ablation: VORAblation) -> VORConfig:
        """This config with the ablation's overrides."""
        overrides = {f.name: getattr(ablation, f.name) for f in dataclasses.fields(ablation) if f.name != "name"}
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def variants(self) -> dict[str, VORConfig]:
        """OVOR and each ablation by name: the head variants one OVOR stream trains."""
        out = {OVOR: self}
        for ablation in self.ablations:
            if ablation.name in out:
                raise ValueError(f"VOR ablation name {ablation.name!r} is taken")
            out[ablation.name] = self.resolved(ablation)
        return out


@dataclass
class Stream:
    """A class-incremental stream: tasks as class lists and the image tensors they index into."""

    tasks: list[list[int]]
    x_train: torch.Tensor  # (N, C, H, W)
    y_train: torch.Tensor  # (N,)
    x_eval: torch.Tensor  # the split measured after each task (val: training never reads test)
    y_eval: torch.Tensor


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


def final_scores(pred: np.ndarray, target: np.ndarray,
                 tasks: list[list[int]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The metrics after the last task and their per-item scores (item order kept), from predictions over every
    seen class. Per item: top1 = 100 * correct; inter_task_error = 100 * [predicted into another task's classes];
    a_n = 100 * correct * N / (T * n_task), so that their mean is A_N (every task weighs 1/T; with equal test sets
    per task it is 100 * correct, and McNemar applies)."""
    task_of = {c: i for i, t in enumerate(tasks) for c in t}
    item_task = np.array([task_of[int(y)] for y in target])
    pred_task = np.array([task_of[int(p)] for p in pred])
    correct = (pred == target).astype(np.float64)
    per_task_count = np.bincount(item_task, minlength=len(tasks)).astype(np.float64)
    if (per_task_count == 0).any():
        raise ValueError(f"tasks {np.flatnonzero(per_task_count == 0).tolist()} have no evaluation items")
    per_item = {"a_n": 100.0 * correct * len(target) / (len(tasks) * per_task_count[item_task]),
                "top1": 100.0 * correct, "inter_task_error": 100.0 * (pred_task != item_task)}
    per_task = [100.0 * float(correct[item_task == i].mean()) for i in range(len(tasks))]
    share, rate = cross_task_confusion(pred, target, task_of)
    metrics = {"a_n": float(np.mean(per_task)), "top1": float(per_item["top1"].mean()), "confusion_share": share,
               "inter_task_error": rate} | {f"final_acc_task{j}": a for j, a in enumerate(per_task)}
    return metrics, per_item


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


def _task_data(stream: Stream, classes: list[int], cfg: StreamConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (n, C, H, W) and labels (n,) of one task, capped at max_train_per_class."""
    mask = torch.isin(stream.y_train, torch.tensor(classes))
    x_task, y_task = stream.x_train[mask], stream.y_train[mask]
    if cfg.max_train_per_class is not None:
        keep = torch.cat([torch.nonzero(y_task == c).squeeze(1)[: cfg.max_train_per_class] for c in classes])
        x_task, y_task = x_task[keep], y_task[keep]
    return x_task, y_task


def train_prompt_and_head(model: OnePromptViT, x_task: torch.Tensor, y_task: torch.Tensor,
                          task_classes: torch.Tensor, epochs: float, schedule_epochs: float, cfg: StreamConfig,
                          reporter: Reporter, generator: torch.Generator,
                          augment: Callable[[torch.Tensor], torch.Tensor] | None, metric_prefix: str,
                          step: int) -> int:
    """Prompts and head together on masked CE for `epochs` epochs of the task's images, every step updating both,
    at the first `epochs` of a cosine over `schedule_epochs` (fresh Adam). Returns the global step count."""
    device = next(model.parameters()).device
    n_batches = math.ceil(len(x_task) / cfg.batch_size)
    optimizer = torch.optim.Adam([*model.prompt_parameters(), *model.head.parameters()], lr=cfg.lr,
                                 betas=(0.9, 0.999), weight_decay=0.0)
    steps = max(1, round(epochs * n_batches))
    model.train()
    done = 0
    while done < steps:
        order = torch.randperm(len(x_task), generator=generator)
        for i in range(0, len(order), cfg.batch_size):
            if done >= steps:
                break
            idx = order[i:i + cfg.batch_size]
            xb = x_task[idx]
            if augment is not None:
                xb = augment(xb)
            for g in optimizer.param_groups:
                g["lr"] = _cosine(cfg.lr, done / n_batches / schedule_epochs)
            loss = masked_cross_entropy(model(xb.to(device)), y_task[idx].to(device), task_classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            step += 1
            reporter.log_metrics({f"{metric_prefix}prompt_loss": loss.item()}, step=step)
    model.eval()
    return step


def train_head_with_vor(head: nn.Linear, vor: VORConfig, schedule: HeadSchedule, epoch_feats: list[torch.Tensor],
                        y_task: torch.Tensor, task_classes: torch.Tensor, thresholds: tuple[float, float],
                        cfg: StreamConfig, generator: torch.Generator) -> torch.Tensor | None:
    """OVOR's phase (d): the head alone on masked CE + VOR (lambda = vor.weight; 0 = CE only) over each epoch's
    stored features (E2 tensors (n, D)), `schedule.passes` passes each. Returns the last outliers drawn (None
    without VOR)."""
    use_vor = vor.weight > 0
    n_batches = math.ceil(len(y_task) / cfg.batch_size)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    tau_id, tau_ood = thresholds
    total_epochs = cfg.prompt_epochs + cfg.vor_epochs
    d_total = len(epoch_feats) * schedule.passes * n_batches
    d_step = 0
    outliers = None
    for feats in [f for f in epoch_feats for _ in range(schedule.passes)]:
        if use_vor:
            outliers = synthesize_outliers(feats, vor.num_per_class * len(task_classes), vor.k, vor.select,
                                           vor.sample_from, vor.cov, vor.outlier_center,  # type: ignore[arg-type]
                                           generator)
            per_batch = max(1, len(outliers) // n_batches)
            ood_order = torch.randperm(len(outliers), generator=generator)
        order = torch.randperm(len(feats), generator=generator)
        for b, i in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[i:i + cfg.batch_size]
            if schedule.lr is None:  # the official schedule: the tail of the task's E1 + E2 cosine
                lr = _cosine(cfg.lr, (cfg.prompt_epochs + d_step / (schedule.passes * n_batches)) / total_epochs)
            else:
                lr = _cosine(schedule.lr, d_step / d_total)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = head(feats[idx])
            loss = masked_cross_entropy(logits, y_task[idx], task_classes)
            if use_vor:
                ood = outliers[ood_order[(b * per_batch) % len(outliers):][:per_batch]]
                loss = loss + vor_loss(energy(logits, task_classes), energy(head(ood), task_classes),
                                       tau_id, tau_ood, vor.weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            d_step += 1
    return outliers


@dataclass
class StreamResult:
    """The variants of one stream at the kept phase-(d) schedule, and OVOR's A_N on the evaluation split under each
    candidate schedule (empty for OnePrompt, which has no phase (d))."""

    traces: dict[str, VariantTrace]
    schedule: HeadSchedule | None = None
    schedule_a_n: list[float] = field(default_factory=list)


def run_stream(model: OnePromptViT, stream: Stream, cfg: StreamConfig, vor: VORConfig | None, reporter: Reporter,
               generator: torch.Generator, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
               metric_prefix: str = "") -> StreamResult:
    """Trains `model` (prompts + its head) over the stream in place and returns every variant's trace, measured on
    `stream.x_eval` after each task.

    vor None: OnePrompt's schedule, prompts + head for E1 + E2 epochs per task; one variant, "oneprompt".
    vor given: OVOR's schedule, phase (a) for E1 epochs, then phase (d) per head variant ("ovor" and one per
    `vor.ablations`) and per candidate of `vor.head_schedules`; the candidate under which "ovor" ends with the
    highest A_N on `stream.x_eval` is kept for every variant (phase (d) never changes the prompt, so the candidates
    share everything else). On return `model.head` is the kept "ovor" head.
    """
    device = next(model.parameters()).device
    schedules = (None,) if vor is None else vor.head_schedules
    settings: dict[str, VORConfig | None] = {ONEPROMPT: None} if vor is None else dict(vor.variants())
    keys = [(n, s) for s in range(len(schedules)) for n in settings]
    T = len(stream.tasks)
    traces = {key: VariantTrace(key[0], np.full((T, T), np.nan)) for key in keys}
    heads = {key: copy.deepcopy(model.head) for key in keys}
    task_of = {c: t for t, classes in enumerate(stream.tasks) for c in classes}
    model.freeze_backbone()
    aug = (lambda xb: augment(xb, generator)) if augment is not None else None
    total_epochs = cfg.prompt_epochs + cfg.vor_epochs
    prompt_epochs = total_epochs if vor is None else cfg.prompt_epochs
    step = 0
    seen: list[int] = []
    fixed: dict[tuple[str, int], tuple[float, float, str]] = {}
    for t, classes in enumerate(stream.tasks):
        seen += classes
        task_classes = torch.tensor(classes, device=device)
        x_task, y_task = _task_data(stream, classes, cfg)
        step = train_prompt_and_head(model, x_task, y_task, task_classes, prompt_epochs, total_epochs, cfg, reporter,
                                     generator, aug, metric_prefix, step)
        with torch.no_grad():
            for key in keys:  # the task's rows into every variant's head; phase (a) wrote no other rows
                heads[key].weight[task_classes] = model.head.weight[task_classes]
                heads[key].bias[task_classes] = model.head.bias[task_classes]

        if vor is not None:  # (b)-(d) per variant, on features re-extracted with augmentation at each VOR epoch
            epoch_feats = [extract_features(model, x_task, cfg.eval_batch_size, aug) for _ in range(cfg.vor_epochs)]
            plain = extract_features(model, x_task, cfg.eval_batch_size)
            y_dev = y_task.to(device)
            for key in keys:
                v_cfg, head, trace = settings[key[0]], heads[key], traces[key]
                assert v_cfg is not None
                if v_cfg.weight > 0 and (t == 0 or v_cfg.calibrate_per_task or key not in fixed):
                    with torch.no_grad():
                        fixed[key] = _thresholds(v_cfg, energy(head(plain), task_classes))
                tau_id, tau_ood, how = fixed.get(key, (math.nan, math.nan, "none"))
                outliers = train_head_with_vor(head, v_cfg, schedules[key[1]], epoch_feats, y_dev, task_classes,
                                               (tau_id, tau_ood), cfg, generator)
                if outliers is not None:
                    with torch.no_grad():
                        e_id = energy(head(plain), task_classes)
                        e_ood = energy(head(outliers), task_classes)
                    trace.thresholds.append((tau_id, tau_ood, how))
                    trace.id_below_tau.append(100.0 * float((e_id <= tau_id).float().mean()))
                    trace.ood_above_tau.append(100.0 * float((e_ood >= tau_ood).float().mean()))

        # Every variant on the evaluation images of the tasks seen so far, over the seen classes.
        eval_mask = torch.isin(stream.y_eval, torch.tensor(seen))
        feats = extract_features(model, stream.x_eval[eval_mask], cfg.eval_batch_size)
        y_seen = stream.y_eval[eval_mask].numpy()
        seen_t = torch.tensor(seen, device=device)
        for key in keys:
            with torch.no_grad():
                pred = seen_t[heads[key](feats)[:, seen_t].argmax(-1)].cpu().numpy()
            for j in range(t + 1):
                in_j = np.isin(y_seen, stream.tasks[j])
                traces[key].matrix[t, j] = 100.0 * float((pred[in_j] == y_seen[in_j]).mean())
            if t == T - 1:
                traces[key].confusion_share, traces[key].inter_task_error = cross_task_confusion(pred, y_seen, task_of)
        reporter.progress(t + 1, T, f"{metric_prefix}tasks")

    main = ONEPROMPT if vor is None else OVOR
    schedule_a_n = [average_accuracy(traces[(main, s)].matrix) for s in range(len(schedules))]
    kept = int(np.argmax(schedule_a_n))  # the first of equals: candidates are listed from the official schedule on
    with torch.no_grad():
        model.head.load_state_dict(heads[(main, kept)].state_dict())
    for key in keys:
        traces[key].head = heads[key]
    return StreamResult({n: traces[(n, kept)] for n in settings}, schedules[kept],
                        schedule_a_n if vor is not None else [])
