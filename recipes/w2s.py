"""Vision weak-to-strong generalization with the adaptive confidence loss (AdaptConf; Guo et al., arXiv 2402.03749).

One run = one seed (`paperops reproduce w2s --seeds N` runs seeds 0..N-1 and aggregates). Train a weak teacher
(logistic regression / small MLP, optionally on noisy labels) on weak-train; train strong students (a small timm
ViT, all from the same initial weights and batch order) on the disjoint w2s-train split from the teacher's outputs
with KD, AugConf and AdaptConf, and the same ViT on w2s-train's ground truth (the ceiling, = "GT only").

Protocols of this project's miniature: A = the paper's and the official code's (w_gt = 1 plus the weak-teacher loss):
the primary protocol, whose AdaptConf student is the registered model and whose AdaptConf − KD top-1 gain is the
headline; B = Burns-style pure W2S (Burns et al., arXiv 2312.09390: w_gt = 0, the student never sees a label), reported
beside it with the performance gap recovered, PGR = (acc_w2s − acc_weak) / (acc_ceiling − acc_weak). Train sees fit and
val only: every other model it trains is a Companion that evaluate scores on the test split, with per-image top-1 on
the same images in the same order for every model, so every comparison is paired. PPT then compresses the registered
student (models/ppt.py) with a short fine-tune on the student's own objective; the dense student gets exactly the same
fine-tune beside it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # figures are files for MLflow, never windows
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from models import ppt
from models.common.classifier import predict_logits, top1_accuracy, top1_per_item
from models.common.profiling import count_macs, measure_latency, size_on_disk
from recipes.base import (
    Companion, CompressionResult, Evaluation, Headline, LatencySection, PaperFigure, Recipe, RecipeConfig, RunModels,
    Section, VariantResult, compare_to_parent, TrainResult, register_recipe, seed_everything,
)
from models.common.reporting import Reporter
from models.common.vit import ViTConfig, build_vit, images_to_input, random_translate
from models.w2s.model import W2SSplits, WeakConfig, WeakTeacher, train_weak_teacher, w2s_split
from models.w2s.train import LossConfig, LossKind, StudentRun, StudentTrainConfig, train_student
from data.images import ImageDataset, load_image_dataset
from data.views import DatasetViews
from recipes.ppt_section import FinetunedPPTSection, ppt_knobs, ppt_record

Protocol = Literal["A", "B"]
W2S_LOSSES: tuple[str, ...] = ("kd", "augconf", "adaptconf")
W_GT = {"A": 1.0, "B": 0.0}
WEAK_TEACHER = "weak_teacher"
CEILING = "ceiling_gt"  # the strong ViT trained on w2s-train's ground truth: PGR's ceiling, protocol A's "GT only"
REGISTERED = "adaptconf"  # the registered dense student: AdaptConf of the primary protocol
COMPRESSED = "adaptconf_ppt"
SAME_FINETUNE = "adaptconf_same_finetune"  # the dense student fine-tuned exactly as its PPT copy: the reference for Δ


class SplitSection(Section):
    weak_fraction: float = Field(0.375, gt=0, lt=1, description="share of the dataset's train split that is "
                                 "weak-train; the rest is w2s-train (0.375 of an 80/20 split = 30/50/20 %)")
    seed: int = Field(0, description="seed of the weak/w2s cut (fixed across training seeds)")


class ExperimentSection(Section):
    protocols: tuple[Protocol, ...] = Field(("A", "B"), min_length=1)
    primary_protocol: Protocol = Field("A", description="the protocol of the registered student and the headline")
    teacher_conf_ablation: bool = Field(False, description="also train AdaptConf with the ASSUMED paper-text α "
                                        "(teacher's own confidence in the denominator), primary protocol")
    augment: bool = Field(False, description="random ±2 px translation of w2s-train batches (teacher sees the "
                          "same augmented images)")
    histogram_bins: int = Field(20, ge=2)

    @model_validator(mode="after")
    def _primary_is_run(self) -> ExperimentSection:
        if self.primary_protocol not in self.protocols:
            raise ValueError(f"primary_protocol {self.primary_protocol} is not among protocols {self.protocols}")
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"protocols {self.protocols} name a protocol twice")
        return self


class CompressSection(FinetunedPPTSection):
    """PPT, fine-tuned with the student's own training loop; the dense student gets the same fine-tune beside it."""

    finetune_teacher: Literal["parent", "weak"] = Field(
        "weak", description="fine-tune target: 'weak' = the student's own objective (the primary protocol's "
        "AdaptConf from the weak teacher); 'parent' = KD from the dense student (self-distillation)")
    finetune: StudentTrainConfig = StudentTrainConfig(epochs=1, lr=4e-5, min_lr=1e-5, warmup_epochs=0.17)


class EvaluateSection(LatencySection):
    max_test_images: int | None = Field(None, ge=1)


class W2SRecipeConfig(RecipeConfig):
    split: SplitSection = SplitSection()
    weak: WeakConfig = WeakConfig()
    model: ViTConfig = ViTConfig()
    train: StudentTrainConfig = StudentTrainConfig()
    loss: LossConfig = LossConfig()
    experiment: ExperimentSection = ExperimentSection()
    compress: CompressSection = CompressSection(r=4, blocks=(1, 2, 3))
    evaluate: EvaluateSection = EvaluateSection()


@dataclass(frozen=True)
class W2SData:
    x_weak: torch.Tensor  # (N_weak, C, S, S)
    y_weak: torch.Tensor  # (N_weak,)
    x_w2s: torch.Tensor  # (N_w2s, C, S, S)
    y_w2s: torch.Tensor  # (N_w2s,) used only by the ceiling, protocol A and the bookkeeping
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor  # Withheld in train and compress
    y_test: torch.Tensor
    splits: W2SSplits
    raw: ImageDataset


def pgr(acc_w2s: float, acc_weak: float, acc_ceiling: float) -> float:
    """Performance gap recovered (Burns et al.): 0 = no better than the teacher, 1 = as good as the ceiling."""
    gap = acc_ceiling - acc_weak
    if gap == 0:
        return float("nan")
    return (acc_w2s - acc_weak) / gap


def variant_name(protocol: Protocol, loss: str, primary: Protocol) -> str:
    """'kd' for the primary protocol, 'B_kd' for the other one: the variant and companion names."""
    return loss if protocol == primary else f"{protocol}_{loss}"


@dataclass(frozen=True)
class StudentJob:
    """One student of the run: its variant name, protocol, loss and α mode (None: the config's)."""

    name: str
    protocol: Protocol
    kind: LossKind
    alpha_mode: str | None = None


def student_jobs(ex: ExperimentSection) -> list[StudentJob]:
    """Every student a run trains besides the ceiling, in training order: the three losses per protocol, then the
    α ablation (primary protocol)."""
    jobs = [StudentJob(variant_name(p, loss, ex.primary_protocol), p, loss)  # type: ignore[arg-type]
            for p in ex.protocols for loss in W2S_LOSSES]
    if ex.teacher_conf_ablation:
        jobs.append(StudentJob("adaptconf_teacher_conf", ex.primary_protocol, "adaptconf", "teacher_conf"))
    return jobs


def variant_knobs(name: str, cfg: W2SRecipeConfig) -> dict[str, Any]:
    """How a student variant was trained: protocol, w_gt, loss and α mode ({} for the weak teacher and the ceiling;
    the fine-tuned copies of the registered student carry its knobs)."""
    key = REGISTERED if name in (COMPRESSED, SAME_FINETUNE) else name
    for job in student_jobs(cfg.experiment):
        if job.name == key:
            return {"protocol": job.protocol, "w_gt": W_GT[job.protocol], "loss": job.kind,
                    "alpha_mode": job.alpha_mode or cfg.loss.alpha_mode}
    return {}


def alpha_histogram(alpha: torch.Tensor, agree: torch.Tensor, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of α over [0, 0.5] in `bins` equal bins, for agreeing and for disagreeing samples: (bins,) each.
    α = 0.5 exactly (every agreeing sample) falls in the last bin."""
    edges = np.linspace(0.0, 0.5, bins + 1)
    a = alpha.numpy()
    g = agree.numpy().astype(bool)
    return np.histogram(a[g], edges)[0], np.histogram(a[~g], edges)[0]


@register_recipe
class W2SRecipe(Recipe):
    name = "w2s"
    title = "Vision Superalignment: weak-to-strong generalization with the adaptive confidence loss (AdaptConf)"
    compression = "ppt"
    config_model = W2SRecipeConfig
    primary_metric = "top1"
    cost_metric = "macs_ratio"
    headline = Headline("top1", REGISTERED, "kd", 74.17,
                        "CIFAR-100 ResNet20 -> ResNet56 at w_gt = 1 (our protocol A): AdaptConf 74.17 vs KD 73.81, "
                        "+0.36 pt (ggjy/vision_weak_to_strong README)")
    paper_figures = (
        PaperFigure("adaptconf_minus_kd_top1_pts", 74.17 - 73.81, "ggjy/vision_weak_to_strong README",
                    "CIFAR-100 ResNet20 -> ResNet56, w_gt = 1 (our protocol A): AdaptConf 74.17 vs KD 73.81"),
        PaperFigure("adaptconf_minus_augconf_top1_pts", 74.17 - 73.86, "ggjy/vision_weak_to_strong README",
                    "CIFAR-100 ResNet20 -> ResNet56, w_gt = 1 (our protocol A): AdaptConf 74.17 vs AugConf 73.86"),
        PaperFigure("adaptconf_minus_kd_top1_pts_vgg", 76.84 - 76.41, "ggjy/vision_weak_to_strong README",
                    "CIFAR-100 VGG8 -> VGG13, w_gt = 1 (our protocol A): AdaptConf 76.84 vs KD 76.41"),
    )
    summary_columns = (("top1", "top-1 %", 1.0), ("pgr", "PGR", 1.0), ("macs_per_image", "MMACs/img", 1e-6),
                       ("macs_ratio", "MACs ×", 1.0))
    macs_per_item_metric = "macs_per_image"
    smoke_overrides = (
        "model.embed_dim=32", "model.num_heads=2",
        "train.epochs=2", "train.max_train_images=512", "train.warmup_epochs=0.2", "weak.epochs=3",
        "compress.finetune.max_train_images=128",
        "evaluate.max_test_images=200", "evaluate.latency_batch=16", "evaluate.latency_runs=2",
        "evaluate.latency_warmup=1",
    )
    deployment_description = "Weak-to-strong ViT with AdaptConf (KD/AugConf baselines, PGR), PPT-compressed"
    deployment_tags = ("vision",)

    # ------------------------------------------------------------------------------------------------ data

    def load_data(self, datasets: DatasetViews, cfg: W2SRecipeConfig) -> W2SData:
        raw = load_image_dataset(datasets["data"])
        splits = w2s_split(raw.y_train, cfg.split.weak_fraction, cfg.split.seed)
        x_train = images_to_input(raw.x_train, cfg.model.img_size)
        y_train = torch.as_tensor(raw.y_train, dtype=torch.long)
        # The sources store images grouped by class: a fixed shuffle makes every prefix (the smoke caps
        # train.max_train_images and evaluate.max_test_images) hold all classes.
        rng = np.random.default_rng(cfg.split.seed)
        weak, w2s = torch.as_tensor(rng.permutation(splits.weak)), torch.as_tensor(rng.permutation(splits.w2s))
        x_test, y_test = raw.x_test, raw.y_test  # Withheld unless the step may read test (evaluate)
        if raw.readable("test"):
            test_order = torch.as_tensor(rng.permutation(len(raw.y_test)))
            x_test = images_to_input(raw.x_test, cfg.model.img_size)[test_order][: cfg.evaluate.max_test_images]
            y_test = torch.as_tensor(raw.y_test, dtype=torch.long)[test_order][: cfg.evaluate.max_test_images]
        return W2SData(x_train[weak], y_train[weak], x_train[w2s], y_train[w2s],
                       images_to_input(raw.x_val, cfg.model.img_size), torch.as_tensor(raw.y_val, dtype=torch.long),
                       x_test, y_test, splits, raw)

    def build_model(self, cfg: W2SRecipeConfig) -> nn.Module:
        """The strong ViT at the run's initial weights: every student and the ceiling start from these."""
        seed_everything(cfg.seed)
        return build_vit(cfg.model).eval()

    def companion_module(self, name: str, cfg: W2SRecipeConfig, knobs: dict[str, Any] | None) -> nn.Module:
        if name == WEAK_TEACHER:
            c, s = cfg.model.in_chans, cfg.model.img_size
            return WeakTeacher(c * s * s, cfg.model.num_classes, cfg.weak.hidden).eval()
        return super().companion_module(name, cfg, knobs)

    def weak_teacher(self, data: W2SData, cfg: W2SRecipeConfig) -> WeakTeacher:
        """The run's weak teacher (label noise drawn by cfg.seed): deterministic, so compress() rebuilds the same."""
        generator = seed_everything(10_000 + cfg.seed)
        teacher, _ = train_weak_teacher(data.x_weak, data.y_weak, cfg.model.num_classes, cfg.weak, generator)
        return teacher

    def _train_one(self, student: nn.Module, teacher: nn.Module, data: W2SData, cfg: W2SRecipeConfig,
                   kind: LossKind, w_gt: float, reporter: Reporter, prefix: str, alpha_mode: str | None = None,
                   train_cfg: StudentTrainConfig | None = None, order_seed: int = 0) -> StudentRun:
        """One student on w2s-train; the same `order_seed` gives the same batches (and shifts) to every student."""
        generator = torch.Generator().manual_seed(20_000 + cfg.seed + order_seed)
        return train_student(student, teacher, data.x_w2s, data.y_w2s, kind, w_gt, train_cfg or cfg.train,
                             cfg.loss, reporter, generator,
                             augment=random_translate if cfg.experiment.augment else None,
                             metric_prefix=prefix, alpha_mode=alpha_mode)

    # ----------------------------------------------------------------------------------------------- train

    def train(self, model: nn.Module, data: W2SData, cfg: W2SRecipeConfig, reporter: Reporter) -> TrainResult:
        """Trains `model` as the AdaptConf student of the primary protocol and, from the same initial weights and
        batch order, the weak teacher, the ceiling and every other student, returned as companions. Metrics are
        val figures (`<variant>.val_top1`, `.val_pgr`) and training statistics (α, corrected share)."""
        ex = cfg.experiment
        initial = copy.deepcopy(model.state_dict())
        teacher = self.weak_teacher(data, cfg)
        metrics: dict[str, float] = {}
        companions: dict[str, Companion] = {WEAK_TEACHER: Companion(teacher)}

        def val_top1(module: nn.Module) -> float:
            return top1_accuracy(predict_logits(module, data.x_val), data.y_val)

        acc_weak = metrics["weak_teacher.val_top1"] = val_top1(teacher)
        metrics["weak_teacher.w2s_train_top1"] = top1_accuracy(predict_logits(teacher, data.x_w2s), data.y_w2s)
        jobs = student_jobs(ex)
        total = len(jobs) + 1
        ceiling = self.build_model(cfg)
        self._train_one(ceiling, teacher, data, cfg, "gt", 1.0, reporter, CEILING)
        acc_ceiling = metrics[f"{CEILING}.val_top1"] = val_top1(ceiling)
        companions[CEILING] = Companion(ceiling)
        reporter.progress(1, total, "w2s students")
        corrected_rows: list[dict[str, Any]] = []
        for done, job in enumerate(jobs, start=2):
            student = model if job.name == REGISTERED else self.build_model(cfg)
            student.load_state_dict(initial)
            run = self._train_one(student, teacher, data, cfg, job.kind, W_GT[job.protocol], reporter, job.name,
                                  job.alpha_mode)
            acc = metrics[f"{job.name}.val_top1"] = val_top1(student)
            metrics[f"{job.name}.val_pgr"] = pgr(acc, acc_weak, acc_ceiling)
            metrics[f"{job.name}.corrected_share_last_epoch"] = run.metrics["corrected_share_last_epoch"]
            corrected_rows += [{"variant": job.name, "epoch": e + 1, "corrected_share": c}
                               for e, c in enumerate(run.corrected_share_by_epoch)]
            if job.kind == "adaptconf":
                metrics |= alpha_statistics(job.name, run.final_alpha, run.final_agree)
            if job.name == REGISTERED:
                metrics |= {f"train.{k}": v for k, v in run.metrics.items()}
                agree_counts, disagree_counts = alpha_histogram(run.final_alpha, run.final_agree, ex.histogram_bins)
                for b in range(ex.histogram_bins):
                    metrics[f"alpha_hist.agree_bin{b:02d}"] = float(agree_counts[b])
                    metrics[f"alpha_hist.disagree_bin{b:02d}"] = float(disagree_counts[b])
            else:
                companions[job.name] = Companion(student)
            reporter.progress(done, total, "w2s students")
        metrics["val_top1"] = metrics[f"{REGISTERED}.val_top1"]
        reporter.log_table("corrected_share_by_epoch", corrected_rows)
        reporter.log_figure("alpha_histogram", alpha_histogram_figure(metrics, ex.histogram_bins))
        return TrainResult(metrics, companions)

    # -------------------------------------------------------------------------------------------- compress

    def _num_patches(self, model: nn.Module) -> int:
        return int(model.patch_embed.num_patches)

    def compress(self, model: nn.Module, data: W2SData, cfg: W2SRecipeConfig, reporter: Reporter) -> CompressionResult:
        """PPT patch, then cfg.compress.finetune with PPT on: the primary protocol's AdaptConf from the weak teacher
        (finetune_teacher = 'weak') or KD from the dense student ('parent'). The dense student gets the same
        fine-tune (same batches, same objective) as a companion: the reference for PPT's accuracy change."""
        trc = cfg.compress.finetune_reduction_config(self._num_patches(model))
        parent = copy.deepcopy(model).eval()
        same_finetune = copy.deepcopy(model)
        ppt.compress(model, trc)
        if cfg.compress.finetune_teacher == "parent":
            teacher, kind = parent, "kd"
        else:
            teacher, kind = self.weak_teacher(data, cfg), "adaptconf"
        for p in teacher.parameters():
            p.requires_grad_(False)
        w_gt = W_GT[cfg.experiment.primary_protocol]
        metrics: dict[str, float] = {}
        for name, module in (("finetune", model), (SAME_FINETUNE, same_finetune)):
            run = self._train_one(module, teacher, data, cfg, kind, w_gt, reporter, name,
                                  train_cfg=cfg.compress.finetune, order_seed=1)
            metrics |= {f"{name}_{k}": v for k, v in run.metrics.items()}
            metrics[f"{name}_val_top1"] = top1_accuracy(predict_logits(module, data.x_val), data.y_val)
        return CompressionResult(model=model, method="ppt", knobs=ppt_knobs(trc), metrics=metrics,
                                 companions={SAME_FINETUNE: Companion(same_finetune)})

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        return ppt_record(knobs)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        return ppt.compress(model, ppt.TokenReductionConfig(**knobs))

    # -------------------------------------------------------------------------------------------- evaluate

    def evaluate(self, models: RunModels, data: W2SData, cfg: W2SRecipeConfig, reporter: Reporter) -> Evaluation:
        """Scores every model of the run on the same test images in the same order: top-1 with its per-image
        correctness (the paired intervals), PGR against this run's weak teacher and ceiling, and the cost
        (MACs, latency, size) of the registered student and its PPT copy."""
        dense, compressed = models.dense, models.compressed
        candidates: list[tuple[str, str, nn.Module]] = [(REGISTERED, "parent", dense)]
        if compressed is not None:
            candidates.append((COMPRESSED, "method", compressed))
        order = [WEAK_TEACHER, CEILING, *[j.name for j in student_jobs(cfg.experiment)], SAME_FINETUNE]
        for name in order:
            if name in models.companions:
                candidates.append((name, companion_role(name), models.companions[name]))
        correct = {name: top1_per_item(predict_logits(module, data.x_test), data.y_test)
                   for name, _, module in candidates}
        acc_weak = float(correct[WEAK_TEACHER].mean()) if WEAK_TEACHER in correct else float("nan")
        acc_ceiling = float(correct[CEILING].mean()) if CEILING in correct else float("nan")
        latency_batch = data.x_test[: cfg.evaluate.latency_batch]
        dense_macs = count_macs(dense, latency_batch) / len(latency_batch)
        variants: list[VariantResult] = []
        for name, role, module in candidates:
            top1 = float(correct[name].mean())
            metrics = {"top1": top1}
            if name not in (WEAK_TEACHER, CEILING):
                metrics["pgr"] = pgr(top1, acc_weak, acc_ceiling)
            if name != WEAK_TEACHER:  # MACs and latency of the ViTs; the teacher is one linear layer
                macs = count_macs(module, latency_batch) / len(latency_batch)
                metrics |= {"macs_per_image": macs, "macs_ratio": macs / dense_macs,
                            "size_bytes": float(size_on_disk(module))}
            if role in ("parent", "method"):
                metrics |= measure_latency(module, latency_batch, runs=cfg.evaluate.latency_runs,
                                           warmup=cfg.evaluate.latency_warmup)
            knobs = variant_knobs(name, cfg) | (ppt_knobs(ppt.current_config(module)) if role == "method" else {})
            method = "ppt" if role == "method" else name
            variants.append(VariantResult(name=name, role=role, method=method, knobs=knobs, metrics=metrics,
                                          per_item={"top1": correct[name]}))
        compare_to_parent(variants, self.primary_metric)
        table = [{"variant": v.name, "role": v.role, "protocol": v.knobs.get("protocol", "-"),
                  **{k: round(float(m), 6) for k, m in v.metrics.items()}} for v in variants]
        figures = {"top1_and_pgr_by_model": top1_pgr_figure(table)}
        if "alpha_hist.agree_bin00" in models.train_metrics:
            figures["alpha_histogram"] = alpha_histogram_figure(models.train_metrics, cfg.experiment.histogram_bins)
        return Evaluation(variants=variants, tables={"comparison": table}, figures=figures)

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        """The paper's figures are at w_gt = 1: our protocol A's dense students (not measured without protocol A)."""
        top1 = {v.knobs["loss"]: v.metrics["top1"] for v in evaluation.variants
                if v.role != "method" and v.name != SAME_FINETUNE and v.knobs.get("protocol") == "A"
                and v.knobs.get("alpha_mode") == "code"}
        if not {"kd", "augconf", "adaptconf"} <= top1.keys():
            return {}
        return {"adaptconf_minus_kd_top1_pts": top1["adaptconf"] - top1["kd"],
                "adaptconf_minus_augconf_top1_pts": top1["adaptconf"] - top1["augconf"],
                "adaptconf_minus_kd_top1_pts_vgg": top1["adaptconf"] - top1["kd"]}

    # --------------------------------------------------------------------------------------------- serving

    def input_example(self, data: W2SData, n: int = 2) -> np.ndarray:
        return data.raw.x_val[:n].astype(np.float32)  # (n, H, W) raw val pixels, the served format

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        img_size = model.patch_embed.img_size[0]
        logits = predict_logits(model, images_to_input(np.asarray(batch, dtype=np.float32), img_size))
        return torch.softmax(logits, -1).numpy()  # (n, num_classes) class probabilities

    def check_config(self, cfg: W2SRecipeConfig) -> None:
        cfg.compress.check_fits(self.architecture(cfg))


# ------------------------------------------------------------------------------------------------ reporting


def companion_role(name: str) -> str:
    """AdaptConf variants (other protocol, α ablation) are ablations; the rest are baselines."""
    return "ablation" if "adaptconf" in name and name != SAME_FINETUNE else "baseline"


def alpha_statistics(name: str, alpha: torch.Tensor, agree: torch.Tensor) -> dict[str, float]:
    """α of the last epoch (w2s-train): range, mean on agreeing and on disagreeing samples, disagreement share."""
    nan = float("nan")
    return {f"{name}.alpha_min": float(alpha.min()), f"{name}.alpha_max": float(alpha.max()),
            f"{name}.alpha_mean_agree": float(alpha[agree].mean()) if agree.any() else nan,
            f"{name}.alpha_mean_disagree": float(alpha[~agree].mean()) if (~agree).any() else nan,
            f"{name}.disagree_share": float((~agree).float().mean())}


def alpha_histogram_figure(metrics: dict[str, float], bins: int) -> Any:
    edges = np.linspace(0.0, 0.5, bins + 1)
    agree = [metrics[f"alpha_hist.agree_bin{b:02d}"] for b in range(bins)]
    disagree = [metrics[f"alpha_hist.disagree_bin{b:02d}"] for b in range(bins)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    width = edges[1] - edges[0]
    ax.bar(edges[:-1], agree, width=width, align="edge", alpha=0.6, label="student agrees with teacher")
    ax.bar(edges[:-1], disagree, width=width, align="edge", alpha=0.6, label="student disagrees")
    ax.set_yscale("symlog")
    ax.set_xlabel("AdaptConf α (last epoch, w2s-train)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def top1_pgr_figure(rows: list[dict[str, Any]]) -> Any:
    """Test top-1 of every model and PGR of every student, from evaluate's comparison table."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    axes[0].bar([r["variant"] for r in rows], [r["top1"] for r in rows])
    axes[0].set_ylabel("test top-1 (%)")
    lo = min((r["top1"] for r in rows), default=0)
    axes[0].set_ylim(max(0, lo - 5), 100)
    pgr_rows = [r for r in rows if "pgr" in r]
    axes[1].bar([r["variant"] for r in pgr_rows], [r["pgr"] for r in pgr_rows])
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set_ylabel("PGR")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.tight_layout()
    return fig
