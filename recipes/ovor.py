"""OVOR — OnePrompt with Virtual Outlier Regularization (Huang, Chen, Hsu; ICLR 2024), as a paperops recipe.

One run, one seed (the class order: seed 0 keeps the natural order): pre-train a tiny ViT on glyph classes
disjoint from the stream (Latin/Greek/Cyrillic letters rendered from matplotlib's DejaVu fonts), freeze it, then
learn the class-incremental stream (MNIST-5k, 5 tasks x 2 digits) rehearsal-free with one shared prefix prompt,
twice from the same initial prompt and head: OVOR (the method: phase (a), then the head-only VOR phase (d)) and
OnePrompt with the official schedule (baseline: prompts + head for the task's whole epoch budget). OVOR's VOR
ablations share its phase (a). Training measures the stream on val; the OnePrompt model and every ablation are
companions, scored with the parent on the test split in evaluate. The registered parent is the OVOR model; the
method version is that model with PPT (models/ppt.py) on its prompted backbone, the prefix K/V tokens kept.
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
    Companion, CompressionResult, DataSection, Evaluation, Headline, LatencySection, PaperFigure, Recipe,
    RecipeConfig, RunModels, Section, VariantResult, compare_to_parent, TrainResult, register_recipe, seed_everything,
)
from models.common.reporting import Reporter
from models.ovor.cil import (
    ONEPROMPT, OVOR, HeadSchedule, Stream, StreamConfig, VariantTrace, VORConfig, class_order, extract_features,
    final_scores, run_stream, split_tasks,
)
from models.ovor.model import (
    BackboneConfig, OnePromptViT, PromptConfig, TwoPassPromptViT, prompts_disabled,
)
from models.common.vit import images_to_input, random_translate
from data.images import SPLITS, ImageDataset, load_image_dataset
from data.views import DatasetViews
from recipes.ppt_section import PPTSection, ppt_knobs, ppt_record


class PretrainSection(Section):
    """In-project pre-training of the backbone on glyph classes (no hub download at run time)."""

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


def final_task_metrics(model: nn.Module, x: torch.Tensor, y_true: torch.Tensor,
                       tasks: list[list[int]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """A_N (mean over tasks of the final per-task accuracy over all seen classes), top-1 and cross-task confusion
    on the images `x` (N, 1, S, S) with labels `y_true` (N,), and their per-image scores in the images' order."""
    logits = predict_logits(model, x)
    seen = torch.tensor([c for task in tasks for c in task])
    pred = seen[logits[:, seen].argmax(-1)].numpy()
    return final_scores(pred, y_true.numpy(), tasks)


@register_recipe
class OVORRecipe(Recipe):
    name = "ovor"
    title = "OVOR: OnePrompt with Virtual Outlier Regularization for Rehearsal-Free Class-Incremental Learning"
    compression = "ppt"
    config_model = OVORRecipeConfig
    primary_metric = "a_n"
    cost_metric = "macs_ratio"
    paper_figures = (
        PaperFigure("vor_gain_a_n_pts", 1.0,
                    "arXiv 2402.04129 results tables [from memory, unverified against the PDF]",
                    "OnePrompt without VOR is ~1-2 A_N points below OVOR (ImageNet-R / CIFAR-100, 10 tasks)"),
        PaperFigure("one_pass_macs_ratio", 0.5, "arXiv 2402.04129 abstract",
                    "OnePrompt needs one ViT pass at inference, pool methods (L2P/DualPrompt/CODA-P) two",
                    higher_is_better=False),
    )

    headline = Headline("a_n", "ovor_dense", ONEPROMPT, None,
                        "A_N over 5 tasks; paper: OVOR ~ CODA-P (75.45 on 10-task ImageNet-R) and OnePrompt "
                        "without VOR ~1-2 points lower [OVOR arXiv 2402.04129 and CODA-Prompt arXiv "
                        "2211.13218 tables, from memory, unverified]")
    summary_columns = (("a_n", "A_N %", 1.0), ("top1", "top-1 %", 1.0), ("macs_per_image", "MMACs/img", 1e-6),
                       ("macs_ratio", "MACs ×", 1.0))
    macs_per_item_metric = "macs_per_image"
    smoke_overrides = (
        "pretrain.train.epochs=0.05",
        "stream.prompt_epochs=0.5", "stream.max_train_per_class=48",
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

    def tasks(self, cfg: OVORRecipeConfig) -> list[list[int]]:
        """The run's class order (seed 0: natural order; others shuffled, as the official code's repeats)."""
        total = cfg.stream.num_tasks * cfg.stream.classes_per_task
        return split_tasks(class_order(total, cfg.seed), cfg.stream.num_tasks, cfg.stream.classes_per_task)

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
                                                           data.glyph_y_val)  # val, not test
            # How much digit information the frozen features carry: nearest class mean on the stream's splits.
            f_train = extract_features(model, data.x_train, 256).cpu()
            f_val = extract_features(model, data.x_val, 256).cpu()  # val, not test
        means = torch.stack([f_train[data.y_train == c].mean(0) for c in range(int(data.y_train.max()) + 1)])
        metrics["pretrain_stream_ncm_top1"] = 100.0 * float(
            (torch.cdist(f_val, means).argmin(-1) == data.y_val).float().mean())  # val, not test
        model.freeze_backbone()
        meta = data.glyphs.meta
        reporter.log_table("pretrain_source", [{**meta["source"], "classes": len(meta["classes"]),
                                                "renders_per_class": meta["params"]["per_class"],
                                                "characters": "".join(meta["class_names"])}])
        return metrics

    def train(self, model: nn.Module, data: OVORData, cfg: OVORRecipeConfig, reporter: Reporter) -> TrainResult:
        """OVOR on `model` (the parent) and OnePrompt with the official schedule on a copy that starts from the same
        prompt and head; both streams measured on val after each task."""
        assert isinstance(model, OnePromptViT)
        metrics = self.pretrain(model, data, cfg, reporter)
        device = next(model.parameters()).device
        model.to(device)
        oneprompt = copy.deepcopy(model)  # same backbone, same initial prompt and head
        stream = Stream(self.tasks(cfg), data.x_train, data.y_train, data.x_val, data.y_val)  # val, not test
        ovor = run_stream(model, stream, cfg.stream, cfg.vor, reporter, torch.Generator().manual_seed(cfg.seed),
                          random_translate, metric_prefix=f"{OVOR}_")
        traces = ovor.traces | run_stream(oneprompt, stream, cfg.stream, None, reporter,
                                          torch.Generator().manual_seed(cfg.seed), random_translate,
                                          metric_prefix=f"{ONEPROMPT}_").traces
        # The phase-(d) schedule the run kept on val, and OVOR's val A_N under every candidate.
        metrics["phase_d.kept"] = float(cfg.vor.head_schedules.index(ovor.schedule))
        metrics |= {f"phase_d.candidate{i}.ovor_val_a_n": a for i, a in enumerate(ovor.schedule_a_n)}
        reporter.log_table("phase_d_schedules", [
            {"candidate": i, "schedule": schedule.label(), "ovor_val_a_n": a, "kept": schedule == ovor.schedule}
            for i, (schedule, a) in enumerate(zip(cfg.vor.head_schedules, ovor.schedule_a_n))])
        for name, trace in traces.items():
            metrics |= {f"{name}.{k}": v for k, v in trace.summary().items()}
            metrics |= {f"{name}.acc_after{t}_task{j}": float(trace.matrix[t, j])
                        for t in range(trace.matrix.shape[0]) for j in range(t + 1)}
        for k in ("a_n", "f_n", "confusion_share", "inter_task_error"):
            metrics[f"vor_gain.{k}"] = metrics[f"{OVOR}.{k}"] - metrics[f"{ONEPROMPT}.{k}"]
        reporter.log_table("vor_thresholds", [
            {"variant": name, "task": t, "tau_id": tau_id, "tau_ood": tau_ood, "how": how,
             "id_energy_below_tau_id_pct": trace.id_below_tau[t],
             "outlier_energy_above_tau_ood_pct": trace.ood_above_tau[t]}
            for name, trace in traces.items() for t, (tau_id, tau_ood, how) in enumerate(trace.thresholds)])
        reporter.log_table("accuracy_matrices", [
            {"variant": name, "after_task": t, **{f"task{j}": round(float(trace.matrix[t, j]), 3) for j in range(t + 1)}}
            for name, trace in traces.items() for t in range(trace.matrix.shape[0])])
        reporter.log_figure("accuracy_matrix_val", _heatmap_figure(traces))
        companions = {ONEPROMPT: Companion(oneprompt)}
        for ablation in cfg.vor.ablations:
            companions[ablation.name] = Companion(_with_head(model, traces[ablation.name]))
        return TrainResult(metrics, companions)

    # ---------------------------------------------------------------------------------------- compress

    def compress(self, model: nn.Module, data: OVORData, cfg: OVORRecipeConfig,
                 reporter: Reporter) -> CompressionResult:
        """PPT off the shelf on the prompted backbone: a rehearsal-free learner has no past data to fine-tune on."""
        trc = cfg.compress.reduction_config(int(model.backbone.patch_embed.num_patches))
        # val, not test (the calibration batch and the metrics)
        ppt.compress(model.backbone, trc, calib=data.x_val[:8].to(next(model.parameters()).device))
        metrics, _ = final_task_metrics(model, data.x_val, data.y_val, self.tasks(cfg))
        return CompressionResult(model=model, method="ppt", knobs=ppt_knobs(trc), metrics=metrics)

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        return ppt_record(knobs)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        ppt.compress(model.backbone, ppt.TokenReductionConfig(**knobs))
        return model

    # ---------------------------------------------------------------------------------------- evaluate

    def evaluate(self, models: RunModels, data: OVORData, cfg: OVORRecipeConfig, reporter: Reporter) -> Evaluation:
        """Every model of the run on the test split after the last task: the OVOR parent and its PPT version
        (with cost and latency), OnePrompt and each VOR ablation (one pass of the parent's architecture)."""
        dense, compressed, trained = models.dense, models.compressed, models.train_metrics
        tasks = self.tasks(cfg)
        batch = data.x_test[: cfg.evaluate.latency_batch].to(next(dense.parameters()).device)
        dense_macs = count_macs(dense, batch) / len(batch)
        two_pass_macs = count_macs(TwoPassPromptViT(dense), batch) / len(batch)

        def scored(name: str, role: str, method: str, knobs: dict[str, Any], model: nn.Module,
                   extra: dict[str, float]) -> VariantResult:
            metrics, per_item = final_task_metrics(model, data.x_test, data.y_test, tasks)
            for k in ("f_n", "id_below_tau_pct", "ood_above_tau_pct"):  # of the stream as measured on val
                if f"{name}.{k}" in trained:
                    metrics[f"val_{k}"] = trained[f"{name}.{k}"]
            return VariantResult(name, role, method, knobs, metrics | extra, per_item)

        def measured(model: nn.Module) -> dict[str, float]:
            macs = count_macs(model, batch) / len(batch)
            timing = measure_latency(model, batch, runs=cfg.evaluate.latency_runs, warmup=cfg.evaluate.latency_warmup)
            return {"macs_per_image": macs, "macs_ratio": macs / dense_macs, "size_bytes": float(size_on_disk(model)),
                    **timing}

        one_pass = {"macs_per_image": dense_macs, "macs_ratio": 1.0}  # the parent's architecture, one pass
        kept = cfg.vor.head_schedules[int(trained["phase_d.kept"])]  # chosen on val by train
        parent = scored(OVOR, "parent", "ovor", _vor_knobs(cfg.vor, kept), dense, measured(dense) | {
            "macs_two_pass_per_image": two_pass_macs, "one_pass_macs_ratio": dense_macs / two_pass_macs})
        variants = [VariantResult("ovor_dense", parent.role, parent.method, parent.knobs, parent.metrics,
                                  parent.per_item)]
        if compressed is not None:
            trc = ppt.current_config(compressed.backbone)
            ppt.reset_reduction_stats(compressed.backbone)
            ppt_variant = scored(OVOR, "method", "ppt", ppt_knobs(trc) if trc else {}, compressed, measured(compressed))
            for s in ppt.reduction_stats(compressed.backbone):
                ppt_variant.metrics[f"pool_fraction_block{s['block']}"] = float(s["pool_fraction"])
            variants.append(VariantResult("ovor_ppt", ppt_variant.role, ppt_variant.method, ppt_variant.knobs,
                                          ppt_variant.metrics, ppt_variant.per_item))
        variants.append(scored(ONEPROMPT, "baseline", "oneprompt",
                               {"schedule": f"prompts + head for {cfg.stream.prompt_epochs + cfg.stream.vor_epochs:g} "
                                            "epochs per task"}, models.companions[ONEPROMPT], one_pass))
        for ablation in cfg.vor.ablations:
            variants.append(scored(ablation.name, "ablation", "ovor", _vor_knobs(cfg.vor.resolved(ablation), kept),
                                   models.companions[ablation.name], one_pass))
        compare_to_parent(variants, self.primary_metric)
        table = [{"variant": v.name, "role": v.role, **{k: round(float(m), 6) for k, m in v.metrics.items()}}
                 for v in variants]
        return Evaluation(variants=variants, tables={"comparison": table})

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        by_name = {v.name: v.metrics for v in evaluation.variants}
        parent = by_name["ovor_dense"]
        return {"vor_gain_a_n_pts": parent["a_n"] - by_name[ONEPROMPT]["a_n"],
                "one_pass_macs_ratio": parent["one_pass_macs_ratio"]}

    # ----------------------------------------------------------------------------------------- serving

    def input_example(self, data: OVORData, n: int = 2) -> np.ndarray:
        return data.raw.x_val[:n].astype(np.float32)  # (n, 28, 28) raw val pixels, the served format

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        size = model.backbone.patch_embed.img_size[0]
        logits = predict_logits(model, images_to_input(np.asarray(batch, dtype=np.float32), size))
        return torch.softmax(logits, -1).numpy()  # (n, classes) over every class of the finished stream

    def check_config(self, cfg: OVORRecipeConfig) -> None:
        cfg.compress.check_fits(self.architecture(cfg).backbone)  # building it checks the prompt blocks too


def _with_head(model: OnePromptViT, trace: VariantTrace) -> OnePromptViT:
    """`model` (prompts and backbone) with the head variant `trace` trained."""
    variant = copy.deepcopy(model)
    assert trace.head is not None
    variant.head.load_state_dict(trace.head.state_dict())
    return variant


def _vor_knobs(vor: VORConfig, schedule: HeadSchedule) -> dict[str, Any]:
    return {"outlier_center": vor.outlier_center, "vor_weight": vor.weight, "thresholds": vor.thresholds,
            "tau_id": vor.tau_id, "tau_ood": vor.tau_ood, "head_passes": schedule.passes, "head_lr": schedule.lr}


def _heatmap_figure(traces: dict[str, VariantTrace]) -> Any:
    """Every variant's accuracy matrix on val: row = after training task t, column = task evaluated."""
    names = list(traces)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        m = traces[name].matrix
        T = m.shape[0]
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for t in range(T):
            for j in range(t + 1):
                ax.text(j, t, f"{m[t, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if m[t, j] < 60 else "black")
        ax.set_title(f"{name}: val A_N {traces[name].summary()['a_n']:.1f}", fontsize=9)
        ax.set_xlabel("task evaluated")
        ax.set_ylabel("after training task")
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
    fig.suptitle("CIL accuracy matrix on val: row = after training task t, column = task evaluated")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy (%)")
    return fig
