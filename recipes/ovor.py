"""OVOR — OnePrompt with Virtual Outlier Regularization (Huang, Chen, Hsu; ICLR 2024), as a paperops recipe.

One run: pre-train a tiny ViT on glyph classes disjoint from the stream (Latin/Greek/Cyrillic letters rendered
from matplotlib's DejaVu fonts), freeze it, then learn the class-incremental stream (MNIST-5k, 5 tasks x 2
digits) rehearsal-free with one shared prefix prompt: OVOR (VOR with boundary-centred outliers, the method), the
same run's OnePrompt without VOR (baseline) and VOR with origin-centred outliers (the official code; ablation),
over the configured class-order seeds. The registered parent is seed 0's OVOR model; the registered method version
is that model with PPT (models/ppt.py) on its prompted backbone, the prefix K/V tokens kept.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files for MLflow, never windows
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import Field
from torch import nn

from models import ppt
from models.common.classifier import TrainConfig, predict_logits, top1_accuracy, train_classifier
from models.common.profiling import count_macs, measure_latency, size_on_disk
from recipes.base import (
    CompressionResult, DataSection, Evaluation, Headline, LatencySection, PaperFigure, Recipe, RecipeConfig,
    RunModels, Section, VariantResult, compare_to_parent, TrainResult, register_recipe, seed_everything,
)
from models.common.reporting import Reporter
from models.ovor.cil import (
    BASELINE, METHOD, Stream, StreamConfig, VORConfig, class_order, cross_task_confusion, extract_features,
    run_stream, split_tasks,
)
from models.ovor.model import (
    BackboneConfig, OnePromptViT, PromptConfig, PromptedAttention, TwoPassPromptViT, init_prompt, prompts_disabled,
)
from models.common.vit import images_to_input, random_translate
from data.images import SPLITS, ImageDataset, load_image_dataset
from data.views import DatasetViews
from recipes.ppt_section import PPTSection, ppt_knobs, ppt_record


class PretrainSection(Section):
    """In-project pre-training of the backbone on glyph classes (no hub: vision.md section 0)."""

    data: DataSection | None = Field(None, description="the glyph classes (a DVC stage whose renders are set in "
                                     "params.yaml, with its suite); None: the backbone comes from model.checkpoint")
    seed: int = 0
    train: TrainConfig = TrainConfig(epochs=8.0, batch_size=64, lr=2e-3, min_lr=1e-5, warmup_epochs=0.3,
                                     weight_decay=0.05, label_smoothing=0.1)


class OVORRecipeConfig(RecipeConfig):
    model: BackboneConfig = BackboneConfig()
    prompt: PromptConfig = PromptConfig()
    pretrain: PretrainSection = PretrainSection()
    stream: StreamConfig = StreamConfig()
    vor: VORConfig = VORConfig()
    compress: PPTSection = PPTSection(r=4, blocks=(1, 3))
    evaluate: LatencySection = LatencySection()


@dataclass(frozen=True)
class OVORData:
    x_train: torch.Tensor  # (N, 1, S, S) stream images in [-1, 1]
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor  # Withheld in train and compress
    y_test: torch.Tensor
    raw: ImageDataset
    # The pre-training set as stored (meta.json: fonts, letters, renders) and as model input; None when the
    # backbone comes from model.checkpoint.
    glyphs: ImageDataset | None = None
    glyph_x_train: torch.Tensor | None = None  # (K * per_class, 1, S, S)
    glyph_y_train: torch.Tensor | None = None
    glyph_x_val: torch.Tensor | None = None
    glyph_y_val: torch.Tensor | None = None


def _ci95(values: list[float]) -> float:
    return 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def final_task_metrics(model: nn.Module, x: torch.Tensor, y_true: torch.Tensor,
                       tasks: list[list[int]]) -> dict[str, float]:
    """A_N (mean over tasks of the final per-task accuracy over all seen classes) and cross-task confusion, on the
    images `x` (N, 1, S, S) with labels `y_true` (N,)."""
    logits = predict_logits(model, x)
    seen = torch.tensor([c for task in tasks for c in task])
    pred = seen[logits[:, seen].argmax(-1)].numpy()
    y = y_true.numpy()
    per_task = [100.0 * float((pred[np.isin(y, t)] == y[np.isin(y, t)]).mean()) for t in tasks]
    share, rate = cross_task_confusion(pred, y, {c: i for i, t in enumerate(tasks) for c in t})
    out = {"a_n": float(np.mean(per_task)), "top1": 100.0 * float((pred == y).mean()),
           "confusion_share": share, "inter_task_error": rate}
    out |= {f"final_acc_task{j}": a for j, a in enumerate(per_task)}
    return out


@register_recipe
class OVORRecipe(Recipe):
    name = "ovor"
    title = "OVOR: OnePrompt with Virtual Outlier Regularization for Rehearsal-Free Class-Incremental Learning"
    compression = "ppt"
    config_model = OVORRecipeConfig
    primary_metric = "a_n"
    cost_metric = "macs_ratio"
    paper_figures = (
        PaperFigure("vor_gain_a_n_pts", 1.0, "vision.md §3.3 [mem, unverified against the PDF]",
                    "OnePrompt without VOR is ~1-2 A_N points below OVOR (ImageNet-R / CIFAR-100, 10 tasks)"),
        PaperFigure("one_pass_macs_ratio", 0.5, "arXiv 2402.04129 abstract",
                    "OnePrompt needs one ViT pass at inference, pool methods (L2P/DualPrompt/CODA-P) two",
                    higher_is_better=False),
    )

    headline = Headline("a_n", "ovor_dense", BASELINE, None,
                        "A_N over 5 tasks, seed 0; paper: OVOR ~ CODA-P (75.45 on 10-task ImageNet-R) and OnePrompt "
                        "without VOR ~1-2 points lower [vision.md §3.3, from memory, unverified]")
    summary_columns = (("a_n", "A_N %", 1.0), ("top1", "top-1 %", 1.0), ("macs_per_image", "MMACs/img", 1e-6),
                       ("macs_ratio", "MACs ×", 1.0))
    macs_per_item_metric = "macs_per_image"
    smoke_overrides = (
        "pretrain.train.epochs=0.05",
        "stream.seeds=[0]", "stream.prompt_epochs=0.5", "stream.vor_passes=2", "stream.max_train_per_class=48",
        "evaluate.latency_batch=16", "evaluate.latency_runs=2", "evaluate.latency_warmup=1",
        "promote.max_metric_drop=100",
    )
    deployment_description = "OVOR (OnePrompt + virtual outlier regularization), class-incremental ViT; PPT-compressed"
    deployment_tags = ("vision",)

    # ------------------------------------------------------------------------------------------ data/model

    def datasets(self, cfg: OVORRecipeConfig) -> dict[str, DataSection]:
        return {"data": cfg.data} | ({"pretrain": cfg.pretrain.data} if cfg.pretrain.data is not None else {})

    def load_data(self, datasets: DatasetViews, cfg: OVORRecipeConfig) -> OVORData:
        raw = load_image_dataset(datasets["data"])
        total = cfg.stream.num_tasks * cfg.stream.classes_per_task
        readable = [split for split in SPLITS if raw.readable(split)]
        labels = set(np.concatenate([np.unique(raw.split(split)[1]) for split in readable]).tolist())
        if total > len(raw.classes) or not labels <= set(range(total)):
            raise ValueError(f"stream.num_tasks x stream.classes_per_task = {total} classes, but the dataset has "
                             f"labels {sorted(labels)}")
        size = cfg.model.img_size
        x_test, y_test = raw.x_test, raw.y_test  # Withheld unless the step may read test (evaluate)
        if raw.readable("test"):
            x_test, y_test = images_to_input(raw.x_test, size), torch.as_tensor(raw.y_test, dtype=torch.long)
        stream = (images_to_input(raw.x_train, size), torch.as_tensor(raw.y_train, dtype=torch.long),
                  images_to_input(raw.x_val, size), torch.as_tensor(raw.y_val, dtype=torch.long), x_test, y_test, raw)
        if "pretrain" not in datasets:
            if cfg.model.checkpoint is None:
                raise ValueError("model.checkpoint is null and pretrain.data names no glyph dataset: the backbone "
                                 "needs one of them")
            return OVORData(*stream)
        glyphs = load_image_dataset(datasets["pretrain"])
        return OVORData(*stream, glyphs, images_to_input(glyphs.x_train, size), torch.as_tensor(glyphs.y_train),
                        images_to_input(glyphs.x_val, size), torch.as_tensor(glyphs.y_val))

    def build_model(self, cfg: OVORRecipeConfig) -> nn.Module:
        generator = seed_everything(cfg.seed)
        total = cfg.stream.num_tasks * cfg.stream.classes_per_task
        return OnePromptViT(cfg.model, cfg.prompt, total, generator).eval()

    def tasks(self, cfg: OVORRecipeConfig, seed: int) -> list[list[int]]:
        total = cfg.stream.num_tasks * cfg.stream.classes_per_task
        return split_tasks(class_order(total, seed), cfg.stream.num_tasks, cfg.stream.classes_per_task)

    # ------------------------------------------------------------------------------------------- train

    def pretrain(self, model: OnePromptViT, data: OVORData, cfg: OVORRecipeConfig,
                 reporter: Reporter) -> dict[str, float]:
        """Trains the backbone (prompts off) on the glyph classes with a throw-away head; leaves it frozen.
        With model.checkpoint set, loads those weights instead (the paper's ImageNet ViT-B/16)."""
        if cfg.model.checkpoint is not None:
            model.load_backbone(cfg.model.checkpoint)
            model.freeze_backbone()
            return {}
        generator = seed_everything(cfg.pretrain.seed)
        glyph_head = nn.Linear(cfg.model.embed_dim, len(data.glyphs.classes)).to(next(model.parameters()).device)
        classifier = nn.Sequential(model.backbone, glyph_head)
        with prompts_disabled(model):
            metrics = train_classifier(classifier, data.glyph_x_train, data.glyph_y_train, cfg.pretrain.train,
                                       reporter, generator, metric_prefix="pretrain")
            metrics["pretrain_glyph_top1"] = top1_accuracy(predict_logits(classifier, data.glyph_x_val),
                                                           data.glyph_y_val)  # val, not test: CONTRACT19 §1
            # How much digit information the frozen features carry: nearest class mean on the stream's splits.
            f_train = extract_features(model, data.x_train, 256).cpu()
            f_val = extract_features(model, data.x_val, 256).cpu()  # val, not test: CONTRACT19 §1
        means = torch.stack([f_train[data.y_train == c].mean(0) for c in range(int(data.y_train.max()) + 1)])
        metrics["pretrain_stream_ncm_top1"] = 100.0 * float(
            (torch.cdist(f_val, means).argmin(-1) == data.y_val).float().mean())  # val, not test: CONTRACT19 §1
        model.freeze_backbone()
        meta = data.glyphs.meta
        reporter.log_table("pretrain_source", [{**meta["source"], "classes": len(meta["classes"]),
                                                "renders_per_class": meta["params"]["per_class"],
                                                "characters": "".join(meta["class_names"])}])
        return metrics

    def train(self, model: nn.Module, data: OVORData, cfg: OVORRecipeConfig, reporter: Reporter) -> TrainResult:
        assert isinstance(model, OnePromptViT)
        metrics = self.pretrain(model, data, cfg, reporter)
        device = next(model.parameters()).device
        pretrained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        per_seed: dict[str, dict[str, list[float]]] = {}
        matrices: dict[str, list[np.ndarray]] = {}
        threshold_rows: list[dict[str, Any]] = []
        for i, seed in enumerate(cfg.stream.seeds):
            if i == 0:
                learner = model  # seed 0's model is the one registered
            else:
                learner = copy.deepcopy(model)
                learner.load_state_dict(pretrained)
                generator = torch.Generator().manual_seed(seed)
                for attn in (m for m in learner.modules() if isinstance(m, PromptedAttention)):
                    attn.prompt.data = init_prompt(*attn.prompt.shape, cfg.prompt.init, generator)
                learner.head.reset_parameters()
            learner.to(device)
            # val, not test: CONTRACT19 §1
            stream = Stream(self.tasks(cfg, seed), data.x_train, data.y_train, data.x_val, data.y_val)
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + seed)
            traces = run_stream(learner, stream, cfg.stream, cfg.vor, reporter, generator,
                                random_translate, metric_prefix=f"seed{seed}_")
            for name, trace in traces.items():
                prefix = name
                for k, v in trace.summary().items():
                    per_seed.setdefault(prefix, {}).setdefault(k, []).append(v)
                matrices.setdefault(prefix, []).append(trace.matrix)
                for t, (tau_id, tau_ood, how) in enumerate(trace.thresholds):
                    threshold_rows.append({"seed": seed, "variant": prefix, "task": t, "tau_id": tau_id,
                                           "tau_ood": tau_ood, "how": how,
                                           "id_energy_below_tau_id_pct": trace.id_below_tau[t],
                                           "outlier_energy_above_tau_ood_pct": trace.ood_above_tau[t]})
        for prefix, values in per_seed.items():
            for k, vs in values.items():
                metrics[f"{prefix}.{k}"] = float(np.mean(vs))
                metrics[f"{prefix}.{k}_seed0"] = float(vs[0])
                if k in ("a_n", "f_n", "confusion_share", "inter_task_error"):
                    metrics[f"{prefix}.{k}_ci95"] = _ci95(vs)
            mean_matrix = _mean_matrix(matrices[prefix])
            for t in range(mean_matrix.shape[0]):
                for j in range(t + 1):
                    metrics[f"{prefix}.acc_after{t}_task{j}"] = float(mean_matrix[t, j])
        for k in ("a_n", "confusion_share", "inter_task_error", "f_n"):
            diffs = [a - b for a, b in zip(per_seed[METHOD][k], per_seed[BASELINE][k])]
            metrics[f"vor_gain.{k}"] = float(np.mean(diffs))
            metrics[f"vor_gain.{k}_ci95"] = _ci95(diffs)
        metrics["stream.seeds"] = float(len(cfg.stream.seeds))
        reporter.log_table("vor_thresholds", threshold_rows)
        reporter.log_table("accuracy_matrices", [
            {"variant": p, "after_task": t, **{f"task{j}": round(float(m[t, j]), 3) for j in range(t + 1)}}
            for p, ms in matrices.items() for m in [_mean_matrix(ms)] for t in range(m.shape[0])])
        return TrainResult(metrics)

    # ---------------------------------------------------------------------------------------- compress

    def compress(self, model: nn.Module, data: OVORData, cfg: OVORRecipeConfig,
                 reporter: Reporter) -> CompressionResult:
        """PPT off the shelf on the prompted backbone: a rehearsal-free learner has no past data to fine-tune on."""
        trc = cfg.compress.reduction_config(int(model.backbone.patch_embed.num_patches))
        # val, not test: CONTRACT19 §1 (the calibration batch and the metrics)
        ppt.compress(model.backbone, trc, calib=data.x_val[:8].to(next(model.parameters()).device))
        metrics = final_task_metrics(model, data.x_val, data.y_val, self.tasks(cfg, cfg.stream.seeds[0]))
        return CompressionResult(model=model, method="ppt", knobs=ppt_knobs(trc), metrics=metrics)

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        return ppt_record(knobs)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        ppt.compress(model.backbone, ppt.TokenReductionConfig(**knobs))
        return model

    # ---------------------------------------------------------------------------------------- evaluate

    def evaluate(self, models: RunModels, data: OVORData, cfg: OVORRecipeConfig, reporter: Reporter) -> Evaluation:
        dense, compressed, trained = models.dense, models.compressed, dict(models.train_metrics)
        tasks = self.tasks(cfg, cfg.stream.seeds[0])
        batch = data.x_test[: cfg.evaluate.latency_batch].to(next(dense.parameters()).device)
        dense_macs = count_macs(dense, batch) / len(batch)
        two_pass_macs = count_macs(TwoPassPromptViT(dense), batch) / len(batch)

        def measured(model: nn.Module) -> dict[str, float]:
            macs = count_macs(model, batch) / len(batch)
            timing = measure_latency(model, batch, runs=cfg.evaluate.latency_runs, warmup=cfg.evaluate.latency_warmup)
            return {**final_task_metrics(model, data.x_test, data.y_test, tasks), "macs_per_image": macs,
                    "macs_ratio": macs / dense_macs,
                    "size_bytes": float(size_on_disk(model)), **timing}

        def from_training(prefix: str) -> dict[str, float]:
            """A trained-only variant's figures (same seed-0 stream as the parent) and its seed statistics."""
            out = {"a_n": trained.get(f"{prefix}.a_n_seed0", math.nan)}
            for k in ("f_n", "confusion_share", "inter_task_error", "id_below_tau_pct", "ood_above_tau_pct"):
                if f"{prefix}.{k}_seed0" in trained:
                    out[k] = trained[f"{prefix}.{k}_seed0"]
            for k in ("a_n", "f_n", "confusion_share", "inter_task_error"):
                if f"{prefix}.{k}" in trained:
                    out[f"{k}_seed_mean"] = trained[f"{prefix}.{k}"]
                    out[f"{k}_seed_ci95"] = trained.get(f"{prefix}.{k}_ci95", 0.0)
            # Same architecture and one pass: the parent's cost.
            return out | {"macs_per_image": dense_macs, "macs_ratio": 1.0}

        parent = measured(dense) | {k: v for k, v in from_training(METHOD).items() if k not in ("a_n", "macs_per_image",
                                                                                               "macs_ratio")}
        parent |= {"macs_two_pass_per_image": two_pass_macs, "one_pass_macs_ratio": dense_macs / two_pass_macs}
        parent["a_n_trained_seed0"] = trained.get(f"{METHOD}.a_n_seed0", math.nan)
        knobs_dense = _vor_knobs(cfg.vor)
        variants = [VariantResult("ovor_dense", "parent", "ovor", knobs_dense, parent)]
        if compressed is not None:
            trc = ppt.current_config(compressed.backbone)
            ppt.reset_reduction_stats(compressed.backbone)
            metrics = measured(compressed)
            for s in ppt.reduction_stats(compressed.backbone):
                metrics[f"pool_fraction_block{s['block']}"] = float(s["pool_fraction"])
            variants.append(VariantResult("ovor_ppt", "method", "ppt", ppt_knobs(trc) if trc else {}, metrics))
        variants.append(VariantResult(BASELINE, "baseline", "oneprompt", {"vor_weight": 0.0},
                                      from_training(BASELINE)))
        for ablation in cfg.vor.ablations:
            variants.append(VariantResult(ablation.name, "ablation", "ovor", _vor_knobs(cfg.vor.resolved(ablation)),
                                          from_training(ablation.name)))
        compare_to_parent(variants, self.primary_metric)
        table = [{"variant": v.name, "role": v.role, **{k: round(float(m), 6) for k, m in v.metrics.items()}}
                 for v in variants]
        return Evaluation(variants=variants, tables={"comparison": table},
                          figures={"accuracy_matrix": _heatmap_figure(trained, cfg)})

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        by_name = {v.name: v.metrics for v in evaluation.variants}
        parent = by_name["ovor_dense"]
        gain = parent.get("a_n_seed_mean", parent["a_n"]) - by_name[BASELINE].get("a_n_seed_mean",
                                                                                  by_name[BASELINE]["a_n"])
        return {"vor_gain_a_n_pts": gain, "one_pass_macs_ratio": parent["one_pass_macs_ratio"]}

    # ----------------------------------------------------------------------------------------- serving

    def input_example(self, data: OVORData, n: int = 2) -> np.ndarray:
        return data.raw.x_val[:n].astype(np.float32)  # (n, 28, 28) raw val pixels, the served format

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        size = model.backbone.patch_embed.img_size[0]
        logits = predict_logits(model, images_to_input(np.asarray(batch, dtype=np.float32), size))
        return torch.softmax(logits, -1).numpy()  # (n, classes) over every class of the finished stream

    def check_config(self, cfg: OVORRecipeConfig) -> None:
        cfg.compress.check_fits(self.architecture(cfg).backbone)  # building it checks the prompt blocks too


def _mean_matrix(matrices: list[np.ndarray]) -> np.ndarray:
    """Seed mean of accuracy matrices; the upper triangle (tasks not yet seen) stays NaN."""
    stacked = np.stack(matrices)
    return np.where(np.isnan(stacked[0]), np.nan, np.nan_to_num(stacked).mean(axis=0))


def _vor_knobs(vor: VORConfig) -> dict[str, Any]:
    return {"outlier_center": vor.outlier_center, "vor_weight": vor.weight, "thresholds": vor.thresholds,
            "tau_id": vor.tau_id, "tau_ood": vor.tau_ood}


def _heatmap_figure(trained: dict[str, float], cfg: OVORRecipeConfig) -> Any:
    """Accuracy matrices (seed mean) of OVOR and OnePrompt without VOR side by side."""
    T = cfg.stream.num_tasks
    names = [METHOD, BASELINE] + [a.name for a in cfg.vor.ablations]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        m = np.full((T, T), np.nan)
        for t in range(T):
            for j in range(t + 1):
                m[t, j] = trained.get(f"{name}.acc_after{t}_task{j}", np.nan)
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for t in range(T):
            for j in range(t + 1):
                if not np.isnan(m[t, j]):
                    ax.text(j, t, f"{m[t, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if m[t, j] < 60 else "black")
        ax.set_title(f"{name}: A_N {trained.get(f'{name}.a_n', float('nan')):.1f}", fontsize=9)
        ax.set_xlabel("task evaluated")
        ax.set_ylabel("after training task")
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
    fig.suptitle("CIL accuracy matrix (seed mean): row = after training task t, column = task evaluated")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy (%)")
    return fig
