"""PPT — token Pruning & Pooling Transformers (Wu et al., arXiv 2310.01812), as a paperops recipe.

Train a DeiT on the dataset (the parent); compress it with PPT (models/ppt.py) and fine-tune it with PPT on (the
method). Beside it, with exactly the same fine-tune (epochs, schedule, data order, augmentation), the compress step
fine-tunes ToMe and EViT at PPT's token budget (same r at the same blocks) and the dense parent itself ("dense +
same fine-tune", the reference for PPT's accuracy change). Evaluate scores all of them, and PPT, ToMe and EViT off
the shelf (ablations), on the same test images in one run, with per-image top-1 for the paired intervals.
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
from pydantic import Field
from torch import nn

from models import ppt
from models.common.classifier import TrainConfig, predict_logits, top1_accuracy, top1_per_item, train_classifier
from models.common.profiling import count_macs, measure_latency, size_on_disk
from recipes.base import (
    Companion, CompressionResult, Evaluation, Headline, LatencySection, PaperFigure, Recipe, RecipeConfig, RunModels,
    VariantResult, compare_to_parent, TrainResult, register_recipe, seed_everything,
)
from models.common.reporting import Reporter
from models.common.vit import ViTConfig, build_vit, images_to_input, random_translate
from data.images import ImageDataset, load_image_dataset
from data.views import DatasetViews
from recipes.ppt_section import FinetunedPPTSection, ppt_knobs, ppt_record


class CompressSection(FinetunedPPTSection):
    """PPT, fine-tuned with the classifier loop the DeiT was trained with; the baselines and the dense parent get the
    same fine-tune."""

    finetune: TrainConfig = TrainConfig(epochs=1.0, lr=1e-4, min_lr=1e-6, warmup_epochs=0.0)
    baselines: tuple[Literal["tome", "evit"], ...] = Field(
        ("tome", "evit"), description="token-reduction baselines at PPT's budget, fine-tuned exactly as PPT is")


class EvaluateSection(LatencySection):
    max_test_images: int | None = Field(None, ge=1, description="smoke runs only: score the first n test images")


class PPTRecipeConfig(RecipeConfig):
    model: ViTConfig = ViTConfig()
    train: TrainConfig = TrainConfig()
    compress: CompressSection = CompressSection(r=16, blocks=(3, 6, 9))
    evaluate: EvaluateSection = EvaluateSection()


@dataclass(frozen=True)
class TensorSplits:
    x_train: torch.Tensor  # (N, C, S, S)
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor  # Withheld in train and compress
    y_test: torch.Tensor
    raw: ImageDataset


DENSE_SAME_FINETUNE = "dense_same_finetune"  # the parent fine-tuned as PPT is: the reference for PPT's accuracy change


def equal_budget(method: str) -> str:
    """The variant name of a baseline fine-tuned at PPT's token budget."""
    return f"{method}_equal_budget"


def off_the_shelf(method: str) -> str:
    """The variant name of a method applied to the dense parent without fine-tuning."""
    return f"{method}_offtheshelf"


@register_recipe
class PPTRecipe(Recipe):
    name = "ppt"
    title = "PPT: Token Pruning and Pooling for Efficient Vision Transformers"
    compression = "ppt"
    config_model = PPTRecipeConfig
    primary_metric = "top1"
    cost_metric = "macs_ratio"
    headline = Headline("top1", "ppt", "tome_equal_budget", 79.8,
                        "DeiT-S on ImageNet-1k at -37 % MACs (arXiv 2310.01812)")
    paper_figures = (
        PaperFigure("macs_reduction_pct", 37.0, "arXiv 2310.01812 abstract",
                    "DeiT-S 4.6 -> ~2.9 GFLOPs (MACs) on ImageNet-1k"),
        PaperFigure("throughput_gain_pct", 45.0, "arXiv 2310.01812 abstract", "DeiT-S, one GPU"),
        PaperFigure("top1_drop_pts", 0.0, "arXiv 2310.01812 abstract",
                    "no accuracy drop after fine-tuning (ours: vs the dense model fine-tuned the same)",
                    higher_is_better=False),
        PaperFigure("top1_offtheshelf_drop_pts", 79.8 - 79.498, "xjwu1024/PPT README",
                    "DeiT-S 79.498 off the shelf vs 79.8 dense (tau=7e-5, r=50 @ 3/6/9)", higher_is_better=False),
    )
    summary_columns = (("top1", "top-1 %", 1.0), ("macs_per_image", "MMACs/img", 1e-6), ("macs_ratio", "MACs ×", 1.0))
    macs_per_item_metric = "macs_per_image"
    smoke_overrides = (
        "model.embed_dim=32", "model.num_heads=2",
        "train.epochs=0.5", "train.max_train_images=1024", "train.warmup_epochs=0.1",
        "compress.finetune.epochs=0.25", "compress.finetune.max_train_images=512",
        "compress.finetune.warmup_epochs=0.05",
        "evaluate.max_test_images=256", "evaluate.latency_batch=16", "evaluate.latency_runs=2",
        "evaluate.latency_warmup=1",
    )
    deployment_description = ("PPT (token pruning & pooling) on a ViT: data -> GX -> train -> compress -> evaluate "
                              "-> register -> promote")
    deployment_tags = ("vision",)

    def load_data(self, datasets: DatasetViews, cfg: PPTRecipeConfig) -> TensorSplits:
        raw = load_image_dataset(datasets["data"])
        size = cfg.model.img_size
        y_train = torch.as_tensor(raw.y_train, dtype=torch.long)
        x_test, y_test = raw.x_test, raw.y_test  # Withheld unless the step may read test (evaluate)
        if raw.readable("test"):
            y_test = torch.as_tensor(raw.y_test, dtype=torch.long)
            x_test = images_to_input(raw.x_test, size)
            if cfg.evaluate.max_test_images is not None:
                x_test, y_test = x_test[: cfg.evaluate.max_test_images], y_test[: cfg.evaluate.max_test_images]
        return TensorSplits(images_to_input(raw.x_train, size), y_train, images_to_input(raw.x_val, size),
                            torch.as_tensor(raw.y_val, dtype=torch.long), x_test, y_test, raw)

    def build_model(self, cfg: PPTRecipeConfig) -> nn.Module:
        seed_everything(cfg.seed)
        return build_vit(cfg.model).eval()

    def train(self, model: nn.Module, data: TensorSplits, cfg: PPTRecipeConfig, reporter: Reporter) -> TrainResult:
        generator = seed_everything(cfg.seed)
        metrics = train_classifier(model, data.x_train, data.y_train, cfg.train, reporter, generator,
                                   augment=random_translate)
        metrics["top1"] = top1_accuracy(predict_logits(model, data.x_val), data.y_val)  # val, not test
        return TrainResult(metrics)

    def _num_patches(self, model: nn.Module) -> int:
        return int(model.patch_embed.num_patches)

    def compress(self, model: nn.Module, data: TensorSplits, cfg: PPTRecipeConfig,
                 reporter: Reporter) -> CompressionResult:
        """PPT fine-tuned (the registered child), and with the same fine-tune, from the same dense weights: ToMe and
        EViT at PPT's token budget, and the dense model itself. Only val is read."""
        num_patches = self._num_patches(model)
        dense = copy.deepcopy(model)  # every companion starts from the parent's weights, before PPT patches `model`
        trc = cfg.compress.finetune_reduction_config(num_patches)
        metrics = self._finetune("ppt", ppt.compress(model, trc), data, cfg, reporter)
        metrics["top1"] = metrics["ppt_val_top1"]
        companions = {}
        for method in cfg.compress.baselines:
            baseline_trc = cfg.compress.reduction_config(num_patches, method=method)
            module = ppt.compress(copy.deepcopy(dense), baseline_trc)
            metrics |= self._finetune(equal_budget(method), module, data, cfg, reporter)
            companions[equal_budget(method)] = Companion(module, ppt_knobs(baseline_trc))
        metrics |= self._finetune(DENSE_SAME_FINETUNE, dense, data, cfg, reporter)
        companions[DENSE_SAME_FINETUNE] = Companion(dense)
        return CompressionResult(model=model, method="ppt", knobs=ppt_knobs(trc), metrics=metrics,
                                 companions=companions)

    def _finetune(self, name: str, model: nn.Module, data: TensorSplits, cfg: PPTRecipeConfig,
                  reporter: Reporter) -> dict[str, float]:
        """cfg.compress.finetune on `model` in place, from the same generator state for every model (same batches,
        same augmentation): training statistics and the val top-1 afterwards, prefixed by `name`."""
        generator = seed_everything(cfg.seed + 1)
        metrics = train_classifier(model, data.x_train, data.y_train, cfg.compress.finetune, reporter, generator,
                                   augment=random_translate, metric_prefix=f"{name}_finetune")
        metrics[f"{name}_val_top1"] = top1_accuracy(predict_logits(model, data.x_val), data.y_val)
        return metrics

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        return ppt_record(knobs)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        return ppt.compress(model, ppt.TokenReductionConfig(**knobs))

    def evaluate(self, models: RunModels, data: TensorSplits, cfg: PPTRecipeConfig, reporter: Reporter) -> Evaluation:
        dense, compressed = models.dense, models.compressed
        num_patches = self._num_patches(dense)
        candidates: list[tuple[str, str, nn.Module, ppt.TokenReductionConfig | None]] = [
            ("dense", "parent", dense, None),
            (DENSE_SAME_FINETUNE, "baseline", models.companions[DENSE_SAME_FINETUNE], None),
            ("ppt", "method", compressed, ppt.current_config(compressed)),
        ]
        for method in cfg.compress.baselines:
            module = models.companions[equal_budget(method)]
            candidates.append((equal_budget(method), "baseline", module, ppt.current_config(module)))
        for method in ("ppt", *cfg.compress.baselines):
            trc = cfg.compress.reduction_config(num_patches, method=method)
            candidates.append((off_the_shelf(method), "ablation", ppt.compress(copy.deepcopy(dense), trc), trc))

        latency_batch = data.x_test[: cfg.evaluate.latency_batch]
        dense_macs = count_macs(dense, latency_batch) / len(latency_batch)
        variants, layer_rows = [], []
        for i, (name, role, model, trc) in enumerate(candidates):
            if trc is not None:
                ppt.reset_reduction_stats(model)
            logits = predict_logits(model, data.x_test)
            top1 = top1_accuracy(logits, data.y_test)
            stats = ppt.reduction_stats(model) if trc is not None else []
            macs = count_macs(model, latency_batch) / len(latency_batch)
            timing = measure_latency(model, latency_batch, runs=cfg.evaluate.latency_runs,
                                     warmup=cfg.evaluate.latency_warmup)
            metrics = {"top1": top1, "macs_per_image": macs, "macs_ratio": macs / dense_macs,
                       "size_bytes": float(size_on_disk(model)), **timing}
            for s in stats:
                metrics[f"pool_fraction_block{s['block']}"] = float(s["pool_fraction"])
                layer_rows.append({"variant": name, **s})
            variants.append(VariantResult(name=name, role=role, method=trc.method if trc else "dense",
                                          knobs=ppt_knobs(trc) if trc else {}, metrics=metrics,
                                          per_item={"top1": top1_per_item(logits, data.y_test)}))
            reporter.progress(i + 1, len(candidates), "evaluate variants")

        compare_to_parent(variants, self.primary_metric)
        table = [{"variant": v.name, "role": v.role, **{k: round(float(m), 6) for k, m in v.metrics.items()}}
                 for v in variants]
        return Evaluation(variants=variants, tables={"comparison": table, "per_layer_reduction": layer_rows},
                          figures={"accuracy_vs_macs": _accuracy_vs_macs_figure(variants),
                                   "pool_fraction_per_layer": _pool_fraction_figure(layer_rows)})

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        by_name = {v.name: v.metrics for v in evaluation.variants}
        method = by_name["ppt"]
        return {"macs_reduction_pct": 100.0 * (1.0 - method["macs_ratio"]),
                "throughput_gain_pct": 100.0 * (method["throughput_ratio"] - 1.0),
                "top1_drop_pts": by_name[DENSE_SAME_FINETUNE]["top1"] - method["top1"],
                "top1_offtheshelf_drop_pts": by_name["dense"]["top1"] - by_name[off_the_shelf("ppt")]["top1"]}

    def input_example(self, data: TensorSplits, n: int = 2) -> np.ndarray:
        return data.raw.x_val[:n].astype(np.float32)  # (n, H, W) raw val pixels, the served format

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        img_size = model.patch_embed.img_size[0]
        logits = predict_logits(model, images_to_input(np.asarray(batch, dtype=np.float32), img_size))
        return torch.softmax(logits, -1).numpy()  # (n, num_classes) class probabilities

    def check_config(self, cfg: PPTRecipeConfig) -> None:
        cfg.compress.check_fits(self.architecture(cfg))


def _accuracy_vs_macs_figure(variants: list[VariantResult]) -> Any:
    fig, ax = plt.subplots(figsize=(5, 4))
    for v in variants:
        ax.scatter(v.metrics["macs_per_image"] / 1e6, v.metrics["top1"], s=40)
        ax.annotate(v.name, (v.metrics["macs_per_image"] / 1e6, v.metrics["top1"]), fontsize=8)
    ax.set_xlabel("MMACs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy vs MACs")
    fig.tight_layout()
    return fig


def _pool_fraction_figure(layer_rows: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(5, 4))
    for name in dict.fromkeys(r["variant"] for r in layer_rows):
        rows = [r for r in layer_rows if r["variant"] == name]
        ax.plot([r["block"] for r in rows], [r["pool_fraction"] for r in rows], marker="o", label=name)
    ax.set_xlabel("block")
    ax.set_ylabel("fraction of images pooled")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
