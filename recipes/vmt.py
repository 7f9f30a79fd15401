"""VMT-Adapter: once-for-all multi-task adapters for dense scene understanding (Xin et al., AAAI 2024, arXiv
2312.08733; no official code: the method is reconstructed in models/vmt.py, every reconstructed part flagged ASSUMED
there and in docs/papers/vmt.md). This is its protocol on ShapesMT (data/scenes.py), our miniature of PASCAL-Context's
four tasks: semantic segmentation, parts, saliency, surface normals.

One run = one seed. The backbone (a miniature timm Swin) is pre-trained here on the renderer's proxy classification
task (DVC stage shapes_mt_proxy, suite image_classification), then every model of the comparison starts from those
weights and is trained on the same batches for the same epochs: VMT-Adapter (registered), VMT-Adapter-Lite, per-task
adapters (one backbone pass per task), multi-task full fine-tuning, and one single-task full fine-tune per task (the
Δm reference). Each model keeps the epoch of its lowest val loss (the weighted multi-task loss it trains on).

Evaluate scores every model on the test split (and the out-of-distribution split) per image: mIoU of the image for
the three label tasks and its mean angular error for normals; Δm (MTLoRA's formula) against the single-task models,
per image (its mean is Δm of the image-averaged metrics: the paired item of the decisive criteria) and over the split
(confusion matrices accumulated, MTLoRA's evaluator). Trainable parameters are reported as a share of the four
single-task models' total.

Compression: Swin attends within fixed windows of a full token grid, so PPT's token pruning and merging cannot be
made exact for it (a removed or merged token leaves a hole in the window partition and in patch merging's 2x2
neighbourhoods); the served model is weight-quantized instead (models/quant.py: every Linear and Conv2d, backbone,
adapters and decoders, round to nearest per output channel, packed codes).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # figures are files for MLflow, never windows
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import Field
from torch import nn

from data.images import load_image_dataset
from data.scenes import SceneSplit, contact_sheet, load_scene_dataset
from data.views import DatasetViews, Withheld
from models.common.classifier import TrainConfig, predict_logits, top1_accuracy, train_classifier
from models.common.profiling import count_macs, measure_latency, size_on_disk
from models.common.reporting import Reporter
from models.vmt import (
    SHAPES_MT_TASKS, AdapterConfig, MultiTaskConfig, MultiTaskModel, MultiTaskMeter, SwinConfig, TaskSpec,
    angular_errors, build_swin, confusion_matrix, count_trainable, delta_m, lower_is_better, miou_from_confusion,
    multitask_loss, predict_labels,
)
from recipes.base import (
    Companion, CompressionResult, DataSection, Evaluation, Headline, LatencySection, PaperFigure, Recipe,
    RecipeConfig, RunModels, Section, TrainResult, VariantResult, compare_to_parent, register_recipe, seed_everything,
)
from recipes.quant_section import WeightQuantSection, quant_record, quantize_weights, restore_weights

REGISTERED = "vmt"
LITE = "vmt_lite"
PER_TASK = "per_task_adapters"
MULTI_FT = "multitask_ft"
SINGLE = "single_task"  # the Δm reference: task t's prediction from single_<t>, one model per task
QUANTIZED_LAYERS = (nn.Linear, nn.Conv2d)
QUANTIZED_RECORD = "every Linear and Conv2d"
MODE_OF = {REGISTERED: "vmt", LITE: "vmt_lite", PER_TASK: "per_task_adapters", MULTI_FT: "full_finetune"}


class PretrainSection(Section):
    """In-project pre-training of the backbone on the proxy task (shape x texture), then frozen (no hub download)."""

    data: DataSection = Field(description="the proxy classification set (DVC stage and its suite)")
    seed: int = 0
    train: TrainConfig = TrainConfig(epochs=4.0, batch_size=32, lr=1e-3, min_lr=1e-5, warmup_epochs=0.5,
                                     weight_decay=0.05, label_smoothing=0.1)


class TrainSection(Section):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, description="AdamW for adapters, task modules and decoders")
    backbone_lr: float = Field(2e-4, gt=0, description="AdamW for the backbone of the full fine-tunes")
    weight_decay: float = Field(0.05, ge=0)
    max_train_images: int | None = Field(None, ge=1, description="the first N training scenes; None: all")


class ExperimentSection(Section):
    baselines: tuple[Literal["per_task_adapters", "multitask_ft"], ...] = (PER_TASK, MULTI_FT)
    lite: bool = True


class EvaluateSection(LatencySection):
    max_test_images: int | None = Field(None, ge=1)


class VMTRecipeConfig(RecipeConfig):
    backbone: SwinConfig = SwinConfig()
    adapter: AdapterConfig = AdapterConfig()
    decoder_width: int = Field(32, ge=1)
    pretrain: PretrainSection
    train: TrainSection = TrainSection()
    experiment: ExperimentSection = ExperimentSection()
    compress: WeightQuantSection = WeightQuantSection()
    evaluate: EvaluateSection = EvaluateSection()


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.as_tensor(np.asarray(images, dtype=np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def targets_of(split: SceneSplit) -> dict[str, torch.Tensor]:
    """The four label maps as the losses and meters read them: label maps (N, H, W) int64, normals (N, H, W, 3)."""
    return {"semseg": torch.as_tensor(split.semseg, dtype=torch.long),
            "parts": torch.as_tensor(split.parts, dtype=torch.long),
            "saliency": torch.as_tensor(split.saliency, dtype=torch.long),
            "normals": torch.as_tensor(split.normals, dtype=torch.float32)}


@dataclass(frozen=True)
class VMTData:
    x_train: torch.Tensor  # (N, 3, S, S)
    y_train: dict[str, torch.Tensor]
    x_val: torch.Tensor
    y_val: dict[str, torch.Tensor]
    tests: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]] | Withheld]  # test, ood
    val_split: SceneSplit
    proxy_x_train: torch.Tensor
    proxy_y_train: torch.Tensor
    proxy_x_val: torch.Tensor
    proxy_y_val: torch.Tensor


def single_name(task: TaskSpec) -> str:
    return f"single_{task.name}"


def variant_config(name: str, cfg: VMTRecipeConfig) -> MultiTaskConfig:
    """The MultiTaskModel config of each model of the comparison."""
    if name.startswith("single_"):
        task = next(t for t in SHAPES_MT_TASKS if single_name(t) == name)
        return MultiTaskConfig(mode="single_task", tasks=(task,), adapter=cfg.adapter, decoder_width=cfg.decoder_width)
    return MultiTaskConfig(mode=MODE_OF[name], tasks=SHAPES_MT_TASKS, adapter=cfg.adapter,
                           decoder_width=cfg.decoder_width)


def trained_variants(cfg: VMTRecipeConfig) -> list[str]:
    return [REGISTERED, *([LITE] if cfg.experiment.lite else []), *cfg.experiment.baselines,
            *(single_name(t) for t in SHAPES_MT_TASKS)]


@torch.no_grad()
def predict(model: MultiTaskModel, x: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    model.eval()
    chunks = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


def per_image_scores(task: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(N,) the image's mIoU (%) over the classes present in its GT or prediction, or its mean angular error."""
    if task.kind == "normals":
        return np.array([float(angular_errors(pred[i:i + 1], target[i:i + 1]).double().mean())
                         for i in range(len(pred))])
    labels = predict_labels(task, pred)
    return np.array([miou_from_confusion(confusion_matrix(labels[i], target[i], task.classes))
                     for i in range(len(pred))])


@register_recipe
class VMTRecipe(Recipe):
    name = "vmt"
    title = "VMT-Adapter: once-for-all multi-task adapters for dense scene understanding"
    compression = "rtn"
    config_model = VMTRecipeConfig
    primary_metric = "delta_m"
    cost_metric = "size_ratio"
    headline = Headline("delta_m", REGISTERED, PER_TASK, 3.96,
                        "PASCAL-Context, Swin-T, 4 tasks: VMT-Adapter Δm +3.96 % vs single-task full fine-tuning at "
                        "~1 % trainable parameters (arXiv 2312.08733, abstract)")
    paper_figures = (
        PaperFigure("delta_m", 3.96, "arXiv 2312.08733, abstract", "VMT-Adapter, PASCAL-Context, ~1 % trainable"),
        PaperFigure("delta_m_lite", 1.34, "arXiv 2312.08733, abstract", "VMT-Adapter-Lite, 0.36 % trainable"),
    )
    summary_columns = (("delta_m", "Δm %", 1.0), ("semseg", "semseg mIoU", 1.0), ("normals", "normals °", 1.0),
                       ("trainable_share", "trainable %", 1.0), ("size_ratio", "size ×", 1.0))
    macs_per_item_metric = "macs_per_image"
    weight_bits_knob = "bits"
    smoke_overrides = (
        "pretrain.train.epochs=0.1", "train.epochs=1", "train.max_train_images=32", "evaluate.max_test_images=16",
        "decoder_width=8", "evaluate.latency_batch=8", "evaluate.latency_runs=1", "evaluate.latency_warmup=0",
        "promote.max_metric_drop=1000",
    )
    deployment_description = "VMT-Adapter multi-task dense prediction (4 tasks, one backbone pass), weight-quantized"
    deployment_tags = ("vision", "dense")

    # ------------------------------------------------------------------------------------------------ data

    def datasets(self, cfg: VMTRecipeConfig) -> dict[str, DataSection]:
        return {"data": cfg.data, "pretrain": cfg.pretrain.data}

    def load_data(self, datasets: DatasetViews, cfg: VMTRecipeConfig) -> VMTData:
        scenes = load_scene_dataset(datasets["data"])
        train, val = scenes.split("train"), scenes.split("val")
        assert isinstance(train, SceneSplit) and isinstance(val, SceneSplit)  # fit and val: every step reads them
        if cfg.train.max_train_images is not None:
            train = train.subset(np.arange(min(cfg.train.max_train_images, len(train))))
        tests: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]] | Withheld] = {}
        for name in ("test", "ood"):
            split = scenes.split(name)
            if isinstance(split, Withheld):
                tests[name] = split
                continue
            cap = cfg.evaluate.max_test_images
            split = split.subset(np.arange(min(cap or len(split), len(split))))
            tests[name] = (to_input(split.image), targets_of(split))
        proxy = load_image_dataset(datasets["pretrain"])
        return VMTData(to_input(train.image), targets_of(train), to_input(val.image), targets_of(val), tests, val,
                       to_input(proxy.x_train), torch.as_tensor(proxy.y_train, dtype=torch.long),
                       to_input(proxy.x_val), torch.as_tensor(proxy.y_val, dtype=torch.long))

    def build_model(self, cfg: VMTRecipeConfig) -> nn.Module:
        return self.variant_model(REGISTERED, cfg)

    def variant_model(self, name: str, cfg: VMTRecipeConfig) -> MultiTaskModel:
        seed_everything(cfg.seed)
        return MultiTaskModel(build_swin(cfg.backbone), variant_config(name, cfg)).eval()

    def companion_module(self, name: str, cfg: VMTRecipeConfig, knobs: dict[str, Any] | None) -> nn.Module:
        return self.variant_model(name, cfg)

    # ----------------------------------------------------------------------------------------------- train

    def pretrain(self, data: VMTData, cfg: VMTRecipeConfig, reporter: Reporter) -> tuple[dict[str, torch.Tensor],
                                                                                        dict[str, float]]:
        """The backbone trained on the proxy task; returns its weights (classifier and final norm dropped: the
        dense models never read them) and its train/val top-1."""
        generator = seed_everything(cfg.pretrain.seed)
        classes = int(data.proxy_y_train.max()) + 1
        swin = build_swin(replace(cfg.backbone, num_classes=classes))
        metrics = train_classifier(swin, data.proxy_x_train, data.proxy_y_train, cfg.pretrain.train, reporter,
                                   generator, metric_prefix="pretrain")
        metrics["pretrain_val_top1"] = top1_accuracy(predict_logits(swin, data.proxy_x_val), data.proxy_y_val)
        metrics["pretrain_chance_top1"] = 100.0 / classes
        weights = {k: v for k, v in swin.state_dict().items() if not k.startswith(("head.", "norm."))}
        return weights, metrics

    def _train_one(self, model: MultiTaskModel, name: str, data: VMTData, cfg: VMTRecipeConfig,
                   reporter: Reporter) -> dict[str, float]:
        """AdamW on the trainable parameters (decoders and adapters at train.lr, a fine-tuned backbone at
        backbone_lr), the same batches for every model; keeps the epoch of lowest val loss."""
        t = cfg.train
        tasks = model.cfg.tasks
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        heads = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        lr_backbone = t.backbone_lr if model.cfg.mode in ("full_finetune", "single_task") else t.lr
        optimiser = torch.optim.AdamW([{"params": heads, "lr": t.lr}, {"params": backbone, "lr": lr_backbone}],
                                      weight_decay=t.weight_decay)
        generator = torch.Generator().manual_seed(20_000 + cfg.seed)
        best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
        for epoch in range(t.epochs):
            model.train()
            order = torch.randperm(len(data.x_train), generator=generator)
            for start in range(0, len(order), t.batch_size):
                idx = order[start:start + t.batch_size]
                loss, _ = multitask_loss(tasks, model(data.x_train[idx]),
                                         {k: data.y_train[k][idx] for k in data.y_train})
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            with torch.no_grad():
                val_loss, per_task = multitask_loss(tasks, predict(model, data.x_val), data.y_val)
            reporter.log_metrics({f"{name}.val_loss": float(val_loss)}
                                 | {f"{name}.val_loss_{k}": float(v) for k, v in per_task.items()}, step=epoch)
            if float(val_loss) < best_loss:
                best_loss, best_epoch, best_state = float(val_loss), epoch, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        model.eval()
        meter = MultiTaskMeter(tasks)
        meter.update(predict(model, data.x_val), data.y_val)
        return {f"{name}.val_loss": best_loss, f"{name}.best_epoch": float(best_epoch),
                **{f"{name}.val_{k}": v for k, v in meter.compute().items()}}

    def train(self, model: nn.Module, data: VMTData, cfg: VMTRecipeConfig, reporter: Reporter) -> TrainResult:
        """Pre-trains the backbone, then trains VMT-Adapter (`model`, in place) and every other model of the
        comparison from those weights (companions). Metrics: the proxy top-1, each model's val figures and
        trainable parameters, and Δm on val against the single-task models."""
        weights, metrics = self.pretrain(data, cfg, reporter)
        reporter.log_figure("contact_sheet_val", sheet_figure(data.val_split))
        names = trained_variants(cfg)
        companions: dict[str, Companion] = {}
        for done, name in enumerate(names, start=1):
            net = model if name == REGISTERED else self.variant_model(name, cfg)
            net.backbone.load_state_dict(weights, strict=False)  # adapters stay at their (identity) initialisation
            metrics[f"{name}.trainable_params"] = float(count_trainable(net))
            metrics |= self._train_one(net, name, data, cfg, reporter)
            if name != REGISTERED:
                companions[name] = Companion(net)
            reporter.progress(done, len(names), "VMT-Adapter and its baselines")
        baseline = {t.name: metrics[f"{single_name(t)}.val_{t.name}"] for t in SHAPES_MT_TASKS}
        for name in names:
            if not name.startswith("single_"):
                val = {t.name: metrics[f"{name}.val_{t.name}"] for t in SHAPES_MT_TASKS}
                metrics[f"{name}.val_delta_m"] = delta_m(val, baseline, lower_is_better(SHAPES_MT_TASKS))
        metrics["val_delta_m"] = metrics[f"{REGISTERED}.val_delta_m"]
        return TrainResult(metrics, companions)

    # -------------------------------------------------------------------------------------------- compress

    def compress(self, model: nn.Module, data: VMTData, cfg: VMTRecipeConfig, reporter: Reporter
                 ) -> CompressionResult:
        """Round-to-nearest weight quantization of every Linear and Conv2d (backbone, adapters, decoders); nothing
        is fine-tuned. Metrics: the val loss before and after."""
        before = float(multitask_loss(SHAPES_MT_TASKS, predict(model, data.x_val), data.y_val)[0])
        quantize_weights(model, cfg.compress.spec(), QUANTIZED_LAYERS)
        after = float(multitask_loss(SHAPES_MT_TASKS, predict(model, data.x_val), data.y_val)[0])
        return CompressionResult(model=model.eval(), method="rtn", knobs=cfg.compress.knobs(QUANTIZED_RECORD),
                                 metrics={"dense_val_loss": before, "quantized_val_loss": after})

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        return restore_weights(model, knobs, QUANTIZED_LAYERS)

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        return quant_record(knobs)

    # -------------------------------------------------------------------------------------------- evaluate

    def evaluate(self, models: RunModels, data: VMTData, cfg: VMTRecipeConfig, reporter: Reporter) -> Evaluation:
        """Every model on the same test images: per-image task scores, Δm per image and over the split against
        the single-task models, the same on the ood split, trainable share and the served model's cost."""
        x_test, y_test = self._split(data, "test")
        x_ood, y_ood = self._split(data, "ood")
        singles = {t.name: models.companions[single_name(t)] for t in SHAPES_MT_TASKS}
        reference = {split: self._scores(singles, x, y) for split, (x, y) in (("test", (x_test, y_test)),
                                                                            ("ood", (x_ood, y_ood)))}
        candidates: list[tuple[str, str, nn.Module]] = [(REGISTERED, "parent", models.dense)]
        if models.compressed is not None:
            candidates.append((f"{REGISTERED}_w{cfg.compress.bits}", "method", models.compressed))
        for name in trained_variants(cfg)[1:]:
            if not name.startswith("single_") and name in models.companions:
                candidates.append((name, "ablation" if name == LITE else "baseline", models.companions[name]))
        single_total = sum(count_trainable(models.companions[single_name(t)]) for t in SHAPES_MT_TASKS)
        latency_batch = x_test[: cfg.evaluate.latency_batch]
        dense_size = float(size_on_disk(models.dense))
        variants = [self._variant(SINGLE, "baseline", reference, reference, cfg)]
        variants[0].metrics["trainable_share"] = 100.0
        for name, role, module in candidates:
            scores = {split: self._scores({t.name: module for t in SHAPES_MT_TASKS}, x, y)
                      for split, (x, y) in (("test", (x_test, y_test)), ("ood", (x_ood, y_ood)))}
            variant = self._variant(name, role, scores, reference, cfg)
            trainable = count_trainable(models.dense if role == "method" else module)  # a packed copy has no grads
            variant.metrics.update({"trainable_share": 100.0 * trainable / single_total,
                                    "size_bytes": float(size_on_disk(module)),
                                    "size_ratio": float(size_on_disk(module)) / dense_size,
                                    "macs_per_image": count_macs(module, latency_batch) / len(latency_batch)})
            if role in ("parent", "method"):
                variant.metrics.update(measure_latency(module, latency_batch, runs=cfg.evaluate.latency_runs,
                                                       warmup=cfg.evaluate.latency_warmup))
            variants.append(variant)
        compare_to_parent(variants, self.primary_metric)
        table = [{"variant": v.name, "role": v.role, **{k: round(float(m), 6) for k, m in v.metrics.items()}}
                 for v in variants]
        figures = {"delta_m_by_model": delta_m_figure(table)}
        return Evaluation(variants=variants, tables={"comparison": table}, figures=figures)

    def _split(self, data: VMTData, name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pair = data.tests[name]
        if isinstance(pair, Withheld):
            raise ValueError(f"evaluate needs the {name} split")
        return pair

    def _scores(self, model_of: dict[str, nn.Module], x: torch.Tensor, y: dict[str, torch.Tensor]
                ) -> dict[str, Any]:
        """Per task: the split's metric (accumulated, MTLoRA's evaluator) and the per-image scores, each task from
        the model `model_of` names for it (one model for all, or the single-task models)."""
        predictions: dict[str, torch.Tensor] = {}
        for module in {id(m): m for m in model_of.values()}.values():
            out = predict(module, x)
            predictions |= {task: out[task] for task, m in model_of.items() if m is module and task in out}
        meter = MultiTaskMeter(SHAPES_MT_TASKS)
        meter.update(predictions, y)
        return {"split": meter.compute(),
                "items": {t.name: per_image_scores(t, predictions[t.name], y[t.name]) for t in SHAPES_MT_TASKS}}

    def _variant(self, name: str, role: str, scores: dict[str, Any], reference: dict[str, Any],
                 cfg: VMTRecipeConfig) -> VariantResult:
        """Per-task metrics and Δm (per image and over the split) on test and ood against the single-task models."""
        lower = lower_is_better(SHAPES_MT_TASKS)
        metrics: dict[str, float] = {}
        per_item: dict[str, np.ndarray] = {}
        for split, suffix in (("test", ""), ("ood", "_ood")):
            ours, ref = scores[split], reference[split]
            metrics |= {f"{task}{suffix}": value for task, value in ours["split"].items()}
            metrics[f"delta_m_split{suffix}"] = delta_m(ours["split"], ref["split"], lower)
            image_means = {t: float(np.nanmean(ref["items"][t])) for t in ref["items"]}
            per_image = sum((-1.0 if t in lower else 1.0) * (ours["items"][t] - ref["items"][t]) / image_means[t]
                            for t in image_means) * 100.0 / len(image_means)
            metrics[f"delta_m{suffix}"] = float(np.nanmean(per_image))
            per_item[f"delta_m{suffix}"] = np.nan_to_num(per_image)
        knobs = cfg.compress.knobs(QUANTIZED_RECORD) if role == "method" else {"mode": MODE_OF.get(name, name)}
        return VariantResult(name=name, role=role, method="rtn" if role == "method" else name, knobs=knobs,
                             metrics=metrics, per_item=per_item)

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        by_name = {v.name: v.metrics for v in evaluation.variants}
        figures = {"delta_m": by_name[REGISTERED]["delta_m"]}
        if LITE in by_name:
            figures["delta_m_lite"] = by_name[LITE]["delta_m"]
        return figures

    # --------------------------------------------------------------------------------------------- serving

    def input_example(self, data: VMTData, n: int = 2) -> np.ndarray:
        return data.val_split.image[:n]  # (n, S, S, 3) uint8 RGB val scenes, the served format

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """(n, S, S, 6) float32 per pixel: semseg class, parts class, saliency (0/1), unit normal (x, y, z), for
        (n, S, S, 3) RGB images of 0-255 values."""
        images = np.asarray(batch)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected RGB images shaped (n, H, W, 3), got {images.shape}")
        out = predict(model, to_input(images))
        labels = [predict_labels(t, out[t.name]).float() for t in SHAPES_MT_TASKS if t.kind != "normals"]
        normals = out["normals"] / (out["normals"].norm(dim=1, keepdim=True) + 1e-12)  # (n, 3, S, S)
        return torch.cat([torch.stack(labels, dim=1), normals], dim=1).permute(0, 2, 3, 1).numpy()


def sheet_figure(split: SceneSplit, n: int = 4) -> Any:
    fig, ax = plt.subplots(figsize=(10, 2.2 * n))
    ax.imshow(contact_sheet(split, n))
    ax.set_title("val scenes: image and every label", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def delta_m_figure(rows: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["variant"] for r in rows], [r["delta_m"] for r in rows])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("Δm vs single-task fine-tuning (%)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    return fig
