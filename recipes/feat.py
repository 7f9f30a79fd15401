"""FEAT — Few-shot Learning via Embedding Adaptation with Set-to-Set Functions (Ye et al., CVPR 2020), as a paperops
recipe (official code: Sha-Lab/FEAT).

`train` reads the base and val classes only: it pre-trains ConvNet-4 as a many-way classifier on the base classes
until ProtoNet accuracy on the val classes stops rising, then meta-trains, each from that same encoder, FEAT (the
registered model), ProtoNet and FEAT with λ = 0 with the paper's 1-shot settings and, when the profile asks, the
same three with the paper's 5-shot settings (the paper trains its 5-shot models separately). Every model but the
registered one is a companion; `evaluate` scores them all on the same seeded novel-class episodes, one accuracy per
episode (`per_item`), so every comparison is paired over episodes. The model is not a ViT, so nothing is compressed:
the registered version is the trained FEAT model.

Served format (one float32 array, MLflow tensor signature (-1, 1 + S*S)): an episode as rows
[label, pixel_0 .. pixel_{S*S-1}] with pixels 0..255 row-major; label 0..N-1 marks a support row of class n,
-1 a query row. The answer is (rows, N): class probabilities of every row against the support classes (support
rows are answered too, so the answer has one row per request row).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")  # figures are files for MLflow, never windows
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from models.common.profiling import count_macs, measure_latency, size_on_disk
from recipes.base import (
    Companion, CompressionResult, Evaluation, Headline, PaperFigure, Recipe, RecipeConfig, RunModels, Section,
    TrainResult, VariantResult, compare_to_parent, register_recipe, seed_everything,
)
from models.common.reporting import Reporter
from models.feat.model import QUERY_LABEL, FEATConfig, FewShotModel, images_to_input
from models.feat.train import (
    MetaTrainConfig, PretrainConfig, Split, embed_all, mean_ci95, meta_train, pretrain, sample_episode,
    sample_episodes, score_episodes,
)
from data.fewshot import SPLITS, FewShotDataset, load_fewshot_dataset
from data.views import DatasetViews


class MetaSection(Section):
    one_shot: MetaTrainConfig = MetaTrainConfig()
    five_shot: MetaTrainConfig | None = Field(None, description="the paper's separate 5-shot models (FEAT and the "
                                              "baselines again, with the 5-shot settings); None: none are trained "
                                              "and the 5-shot figures are the 1-shot models'")
    baselines: tuple[str, ...] = Field(("protonet", "feat_lambda0"), description="in-run baselines / ablations")

    @model_validator(mode="after")
    def _check(self) -> MetaSection:
        unknown = set(self.baselines) - {"protonet", "feat_lambda0"}
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; known: protonet, feat_lambda0")
        if self.one_shot.shot != 1 or (self.five_shot is not None and self.five_shot.shot != 5):
            raise ValueError("meta.one_shot.shot must be 1 and meta.five_shot.shot 5")
        return self


class EvaluateSection(Section):
    way: int = Field(5, ge=2)
    shots: tuple[int, ...] = Field((1, 5), description="test settings: way-way k-shot for each k")
    query: int = Field(15, ge=1, description="queries per class in a test episode")
    episodes: int = Field(2000, ge=2, description="test episodes per setting (the paper: 10,000)")
    seed: int = Field(2020, description="episode sampler seed: every model sees the same episodes")
    latency_runs: int = Field(10, ge=1)
    latency_warmup: int = Field(2, ge=0)


class FEATRecipeConfig(RecipeConfig):
    model: FEATConfig = FEATConfig()
    pretrain: PretrainConfig = PretrainConfig()
    meta: MetaSection = MetaSection()
    evaluate: EvaluateSection = EvaluateSection()


@dataclass(frozen=True)
class FewShotData:
    base: Split
    val: Split
    novel: Split  # Withheld in train
    raw: FewShotDataset


@dataclass(frozen=True)
class Variant:
    """One model of the run: `meta` is its meta-training (None: the pre-trained encoder as a ProtoNet, untrained)."""

    name: str
    role: str
    adapter: str  # "feat" | "none" (ProtoNet)
    meta: MetaTrainConfig | None


def variants(cfg: FEATRecipeConfig) -> list[Variant]:
    """Every model of the run, the registered FEAT first. The 1-shot models use the paper's 1-shot settings, the
    `_5shot` ones its 5-shot settings; each baseline and ablation gets the same schedule as FEAT in its setting."""
    out = [Variant("feat", "parent", "feat", cfg.meta.one_shot)]
    settings = [("", cfg.meta.one_shot)] + ([("_5shot", cfg.meta.five_shot)] if cfg.meta.five_shot else [])
    for suffix, meta in settings:
        if suffix:
            out.append(Variant(f"feat{suffix}", "companion", "feat", meta))
        if "protonet" in cfg.meta.baselines:
            out.append(Variant(f"protonet{suffix}", "baseline", "none", meta))
        if "feat_lambda0" in cfg.meta.baselines:
            out.append(Variant(f"feat_lambda0{suffix}", "ablation", "feat", dataclasses.replace(meta, balance=0.0)))
    return out + [Variant("pretrain_protonet", "baseline", "none", None)]


def _acc_key(way: int, shot: int) -> str:
    return f"acc_{way}w{shot}s"


def _ci_key(way: int, shot: int) -> str:
    return f"ci95_{way}w{shot}s"


@register_recipe
class FEATRecipe(Recipe):
    name = "feat"
    title = "FEAT: Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions"
    compression = None
    compression_skip_reason: ClassVar[str] = (
        "FEAT's model is a ConvNet-4 encoder plus a one-layer set Transformer over the N class prototypes, not a "
        "ViT: PPT prunes and pools a ViT's patch tokens, and this model has no token sequence to reduce")
    config_model = FEATRecipeConfig
    primary_metric = "acc_5w1s"
    cost_metric = "macs_ratio"  # never produced: nothing is compressed (see compression_skip_reason)
    headline = Headline("acc_5w1s", "feat", "protonet", 55.15,
                        "MiniImageNet, ConvNet-4, 5-way 1-shot (Sha-Lab/FEAT README; ProtoNet 52.61)")
    paper_figures = (
        PaperFigure("feat_acc_5w1s", 55.15, "Sha-Lab/FEAT README", "MiniImageNet, ConvNet-4, 10,000 episodes; "
                    "ours: rendered glyph classes, not comparable in absolute terms"),
        PaperFigure("protonet_acc_5w1s", 52.61, "Sha-Lab/FEAT README", "MiniImageNet, ConvNet-4 (same caveat)"),
        PaperFigure("feat_gain_5w1s_pts", 55.15 - 52.61, "Sha-Lab/FEAT README",
                    "FEAT - ProtoNet, MiniImageNet ConvNet-4 5-way 1-shot"),
        PaperFigure("feat_acc_5w5s", 71.61, "Sha-Lab/FEAT README", "MiniImageNet, ConvNet-4, 5-shot-trained "
                    "(same caveat)"),
        PaperFigure("protonet_acc_5w5s", 71.33, "Sha-Lab/FEAT README", "MiniImageNet, ConvNet-4 (same caveat)"),
        PaperFigure("feat_gain_5w5s_pts", 71.61 - 71.33, "Sha-Lab/FEAT README",
                    "FEAT - ProtoNet, MiniImageNet ConvNet-4 5-way 5-shot, each with its 5-shot-trained model"),
    )
    summary_columns = (("acc_5w1s", "5w1s %", 1.0), ("ci95_5w1s", "± 95 %", 1.0), ("acc_5w5s", "5w5s %", 1.0),
                       ("macs_per_image", "MMACs/img", 1e-6))
    macs_per_item_metric = "macs_per_image"
    smoke_overrides = (
        "model.hidden=16",
        "pretrain.max_epochs=1", "pretrain.val_episodes=10",
        "meta.one_shot.epochs=1", "meta.one_shot.episodes_per_epoch=4", "meta.one_shot.val_episodes=10",
        "meta.five_shot.epochs=1", "meta.five_shot.episodes_per_epoch=2", "meta.five_shot.val_episodes=10",
        "evaluate.episodes=100", "evaluate.latency_runs=2", "evaluate.latency_warmup=1",
    )
    deployment_description = ("FEAT (few-shot embedding adaptation, set-to-set Transformer) vs ProtoNet and FEAT "
                              "lambda=0, ConvNet-4, 1-shot and 5-shot models")
    deployment_tags = ("vision",)

    # ------------------------------------------------------------------------------------------------ data

    def load_data(self, datasets: DatasetViews, cfg: FEATRecipeConfig) -> FewShotData:
        raw = load_fewshot_dataset(datasets["data"])
        size = cfg.model.img_size
        shape = tuple(raw.x["base"].shape[1:])
        if shape != (size, size):
            raise ValueError(f"dataset images are {shape}, model.img_size is {size}")
        # A split the step may not read (novel, outside evaluate) stays Withheld.
        splits = {s: Split(images_to_input(torch.as_tensor(raw.x[s])), raw.y[s]) if raw.readable(s) else raw.x[s]
                  for s in SPLITS}
        return FewShotData(**splits, raw=raw)

    def build_model(self, cfg: FEATRecipeConfig) -> nn.Module:
        seed_everything(cfg.seed)
        return FewShotModel(cfg.model).eval()

    def companion_module(self, name: str, cfg: FEATRecipeConfig, knobs: dict[str, Any] | None) -> nn.Module:
        adapter = {v.name: v.adapter for v in variants(cfg)}
        if name not in adapter:
            raise KeyError(f"{name!r} is not a model of this FEAT run; its models: {sorted(adapter)}")
        return FewShotModel(dataclasses.replace(cfg.model, adapter=adapter[name])).eval()

    # ----------------------------------------------------------------------------------------------- train

    def train(self, model: nn.Module, data: FewShotData, cfg: FEATRecipeConfig,
              reporter: Reporter) -> TrainResult:
        """Pre-trains the encoder (base classes, val plateau), then meta-trains FEAT in place and every baseline and
        ablation from the same encoder. The models of one setting start from the same weights (the same Transformer
        init for FEAT and FEAT λ = 0) and see the same training episodes, so they differ by their method alone.
        Returns val figures only (best val accuracy per model) and the other models as companions."""
        assert isinstance(model, FewShotModel)
        generator = seed_everything(cfg.seed)
        metrics = pretrain(model, data.base, data.val, cfg.pretrain, reporter, generator, cfg.seed)
        encoder_state = copy.deepcopy(model.encoder.state_dict())
        companions: dict[str, Companion] = {}
        for variant in variants(cfg):
            if variant.name == "feat":
                target = model  # the registered model, trained in place
            else:
                seed_everything(cfg.seed)  # the parent's construction order: FEAT λ = 0 gets FEAT's Transformer init
                target = FewShotModel(dataclasses.replace(cfg.model, adapter=variant.adapter)).to(_device(model))
                companions[variant.name] = Companion(target)
            target.encoder.load_state_dict(encoder_state)
            if variant.meta is None:
                target.temperature.fill_(cfg.meta.one_shot.temperature)  # no effect on which class wins
                continue
            seed_everything(cfg.seed)  # the same dropout stream for every model
            metrics |= meta_train(target, data.base, data.val, variant.meta, reporter,
                                  cfg.seed + variant.meta.shot, prefix=variant.name)
            target.eval()
        return TrainResult(metrics, companions)

    # ---------------------------------------------------------------------------------------- compression

    def compress(self, model: nn.Module, data: Any, cfg: RecipeConfig, reporter: Reporter) -> CompressionResult:
        raise NotImplementedError(self.compression_skip_reason)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError(self.compression_skip_reason)

    # -------------------------------------------------------------------------------------------- evaluate

    def evaluate(self, models: RunModels, data: FewShotData, cfg: FEATRecipeConfig, reporter: Reporter) -> Evaluation:
        """Scores the registered FEAT model and every companion on the same seeded novel-class episodes of each
        test setting (per-episode accuracies in `per_item`, the paper's mean ± 1.96·std/√n beside them), and
        measures the registered model's cost."""
        dense = models.dense
        assert isinstance(dense, FewShotModel)
        ev = cfg.evaluate
        by_name = {"feat": dense} | dict(models.companions)
        episodes = seeded_episodes(data.novel, cfg)
        results = []
        for v in variants(cfg):
            if v.name not in by_name:
                raise KeyError(f"the train step saved no model {v.name!r}; it saved {sorted(by_name)}")
            metrics, per_item = score_on_episodes(by_name[v.name], data.novel, episodes, cfg)
            results.append(VariantResult(v.name, v.role, "protonet" if v.adapter == "none" else "feat",
                                         _knobs(v), metrics, per_item))
        rows = torch.as_tensor(episode_rows(data.raw, "novel", ev.way, 1, ev.query, ev.seed))  # one served episode
        macs = count_macs(dense, rows)
        results[0].metrics.update({"macs_per_episode": float(macs), "macs_per_image": float(macs) / len(rows),
                                   "size_bytes": float(size_on_disk(dense)),
                                   **measure_latency(dense, rows, runs=ev.latency_runs, warmup=ev.latency_warmup)})
        compare_to_parent(results, self.primary_metric)
        table = [{"variant": v.name, "role": v.role,
                  **{k: round(float(m), 4) for k, m in v.metrics.items() if k.startswith(("acc_", "ci95_", "delta",
                                                                                            "spread_"))}}
                 for v in results]
        return Evaluation(variants=results,
                          tables={"comparison": table,
                                  "per_setting": per_setting_rows({v.name: v.metrics for v in results}, cfg)},
                          figures={"accuracy_per_setting": _accuracy_figure(results, ev)})

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        by_name = {v.name: v.metrics for v in evaluation.variants}
        feat, proto = by_name["feat"], by_name.get("protonet", {})
        feat5 = by_name.get("feat_5shot", feat)
        proto5 = by_name.get("protonet_5shot", proto)
        out = {"feat_acc_5w1s": feat.get("acc_5w1s"), "protonet_acc_5w1s": proto.get("acc_5w1s"),
               "feat_acc_5w5s": feat5.get("acc_5w5s"), "protonet_acc_5w5s": proto5.get("acc_5w5s")}
        if proto:
            out["feat_gain_5w1s_pts"] = feat["acc_5w1s"] - proto["acc_5w1s"]
            if "acc_5w5s" in feat5 and "acc_5w5s" in proto5:
                out["feat_gain_5w5s_pts"] = feat5["acc_5w5s"] - proto5["acc_5w5s"]
        return {k: float(v) for k, v in out.items() if v is not None}

    # --------------------------------------------------------------------------------------------- serving

    def input_example(self, data: FewShotData, n: int = 2) -> np.ndarray:
        """A real 5-way 1-shot episode of val classes with n queries per class, in the served row layout."""
        return episode_rows(data.raw, "val", 5, 1, n, seed=0)

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        rows = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        if rows.ndim != 2 or rows.shape[1] != 1 + model.img_size ** 2:
            raise ValueError(f"expected episode rows shaped (M, 1 + {model.img_size}*{model.img_size}) = "
                             f"[label, pixels...], got {tuple(rows.shape)}")
        with torch.no_grad():
            logits = model.eval()(rows.to(_device(model)))  # (M, N)
        return torch.softmax(logits, -1).cpu().numpy()


# ------------------------------------------------------------------------------------------------ helpers


def seeded_episodes(classes: Split, cfg: FEATRecipeConfig) -> dict[int, np.ndarray]:
    """The seeded episodes of every test setting (shot -> (episodes, way * (shot + query)) indices into
    `classes`), sampled once, so every model is scored on the same episodes in the same order."""
    ev = cfg.evaluate
    return {shot: sample_episodes(classes.y, ev.way, shot, ev.query, ev.episodes, ev.seed + shot) for shot in ev.shots}


def score_on_episodes(model: FewShotModel, classes: Split, episodes: dict[int, np.ndarray], cfg: FEATRecipeConfig
                      ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`model` on the episodes of every test setting (`seeded_episodes`): per setting the mean accuracy, the paper's
    95 % half-width over episodes and the prototype spread, and the accuracy of each episode (per_item, keyed like
    the mean). The images are embedded once: the encoder is frozen at test time."""
    ev = cfg.evaluate
    embeddings = embed_all(model, classes.x)
    metrics: dict[str, float] = {}
    per_item: dict[str, np.ndarray] = {}
    for shot, shot_episodes in episodes.items():
        stats = score_episodes(model, embeddings, shot_episodes, ev.way, shot, ev.query)
        key = _acc_key(ev.way, shot)
        metrics[key], metrics[_ci_key(ev.way, shot)] = mean_ci95(stats.accuracies)
        metrics[f"spread_raw_{ev.way}w{shot}s"] = float(stats.spread_raw.mean())
        metrics[f"spread_adapted_{ev.way}w{shot}s"] = float(stats.spread_adapted.mean())
        per_item[key] = stats.accuracies
    return metrics, per_item


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _knobs(variant: Variant) -> dict[str, Any]:
    if variant.meta is None:
        return {"meta_training": False}
    knobs = dataclasses.asdict(variant.meta)
    if variant.adapter == "none":  # ProtoNet has no Transformer and no regulariser
        knobs = {k: v for k, v in knobs.items() if k not in ("balance", "temperature2", "lr_mul")}
    return knobs


def episode_rows(raw: FewShotDataset, split: str, way: int, shot: int, query: int, seed: int) -> np.ndarray:
    """A real episode of the classes of `split` in the served layout: (way*shot + way*query, 1 + S*S) float32 rows
    [label, pixels]; support rows first (labels 0..way-1), then queries (label -1)."""
    x, y = raw.x[split], raw.y[split]
    by_class = {int(c): np.flatnonzero(y == c) for c in np.unique(y)}
    idx = sample_episode(by_class, way, shot, query, np.random.default_rng(seed))
    labels = np.concatenate([np.tile(np.arange(way), shot), np.full(way * query, QUERY_LABEL)]).astype(np.float32)
    pixels = x[idx].reshape(len(idx), -1).astype(np.float32)
    return np.concatenate([labels[:, None], pixels], axis=1)


def per_setting_rows(by_variant: dict[str, dict[str, float]], cfg: FEATRecipeConfig) -> list[dict[str, Any]]:
    """The paper's table: one row per method, one column per test setting (mean ± the paper's 95 % half-width over
    episodes). A 5-shot column uses the method's 5-shot-trained model when the run trained one, else its 1-shot
    model."""
    ev = cfg.evaluate
    names = [("pretrain_protonet", "ProtoNet, pre-trained encoder only"), ("protonet", "ProtoNet"),
             ("feat_lambda0", "FEAT, lambda = 0"), ("feat", "FEAT")]
    rows = []
    for name, label in names:
        if name not in by_variant:
            continue
        row: dict[str, Any] = {"method": label, "variant": name}
        for shot in ev.shots:
            source = f"{name}_5shot" if shot == 5 and f"{name}_5shot" in by_variant else name
            metrics = by_variant[source]
            row[f"{ev.way}-way {shot}-shot"] = (f"{metrics[_acc_key(ev.way, shot)]:.2f} ± "
                                                f"{metrics[_ci_key(ev.way, shot)]:.2f}")
            row[f"{_acc_key(ev.way, shot)}_model"] = source
        rows.append(row)
    return rows


def _accuracy_figure(results: list[VariantResult], ev: EvaluateSection) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(ev.shots))
    names = [v.name for v in results]
    for j, shot in enumerate(ev.shots):
        acc = [v.metrics.get(_acc_key(ev.way, shot), np.nan) for v in results]
        ci = [v.metrics.get(_ci_key(ev.way, shot), 0.0) for v in results]
        ax.bar(np.arange(len(results)) + j * width, acc, width, yerr=ci, capsize=3, label=f"{ev.way}-way {shot}-shot")
    ax.set_xticks(np.arange(len(results)) + width * (len(ev.shots) - 1) / 2, names, rotation=25, ha="right",
                  fontsize=8)
    ax.set_ylabel("novel-class accuracy (%) ± 95 % CI over episodes")
    finite = [a for v in results for a in (v.metrics.get(_acc_key(ev.way, s)) for s in ev.shots) if a is not None]
    ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
