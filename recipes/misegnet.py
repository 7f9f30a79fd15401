"""MI-SegNet: mutual-information disentanglement for ultrasound segmentation on unseen devices (Bi et al., MICCAI
2023, arXiv 2303.12649; official code yuan-12138/MI-SegNet). The method is models/misegnet.py; this is its protocol.

One run = one seed. Every model of the comparison starts from the same initial weights and sees the same paired
augmented views (data/ultrasound.py: paired_views, the official Pair_Adv_Dataset_loader) in the same order:
MI-SegNet with the official update schedule (registered), the segmentation-only network E_a + D_s trained with L_seg
on the same views (the baseline), and the two ablations without L_MI and without cross-reconstruction. Each keeps the
epoch of its best source-val Dice (the official script selects its checkpoint on a test set, a leak this protocol
does not copy). Evaluate scores every model on the unseen devices' test splits and the source val split per image
(Dice, IoU, HD95), and for the models with a domain encoder measures the disentanglement: I(z_a; z_d) as a critic
trained afresh on held-out features finds it, a linear probe of the device id from pooled z_a and from pooled z_d,
and the cross-reconstruction error against |x2 - x12|.

The model is a CNN, so PPT (token pruning and pooling) does not apply. What serving runs, E_a + D_s, is compressed
with the project's weight quantizer (models/quant.py, round to nearest on a min/max grid per output channel, packed
integer codes); the training-only modules (E_d, D_r, the critic) are dropped from the compressed version.
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
from pydantic import Field, field_validator
from torch import nn

from data.ultrasound import (
    DEVICES, SOURCE_DEVICE, TARGET_DEVICES, UltrasoundSplit, contact_sheet, load_ultrasound_dataset, paired_views,
)
from data.views import DatasetViews, Withheld
from models.common.profiling import count_macs, measure_latency, size_on_disk
from models.common.reporting import Reporter
from models.common.segmentation import dice_per_item, hd95_per_item, iou_per_item
from models.misegnet import (
    MineAverage, MineCritic, MISegNet, MISegNetConfig, MISegNetTrainer, TrainConfig, critic_loss, dv_bound,
    mutual_information_estimate,
)
from recipes.base import (
    Companion, CompressionResult, Evaluation, Headline, LatencySection, Recipe, RecipeConfig, RunModels, Section,
    TrainResult, VariantResult, compare_to_parent, register_recipe, seed_everything,
)
from recipes.quant_section import WeightQuantSection, quant_record, quantize_weights, restore_weights

REGISTERED = "misegnet"
SEG_ONLY = "seg_only"
NO_MI = "no_mi"
NO_CROSS = "no_cross"
# How each model of the comparison is trained (models/misegnet.py: TrainConfig switches).
SCHEDULES: dict[str, dict[str, bool]] = {REGISTERED: {}, SEG_ONLY: {"segmentation_only": True},
                                         NO_MI: {"use_mi": False}, NO_CROSS: {"use_cross": False}}
TRAINING_ONLY_MODULES = ("domain_encoder", "rec_decoder", "critic")  # not on the served path D_s(E_a(x))
QUANTIZED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d)


class TrainSection(Section):
    """The official optimiser and schedule (train_MI_SegNet.py): Adam per module, lr 1e-4, batch 8, 5 critic rounds."""

    epochs: int = Field(6, ge=1)
    batch_size: int = Field(8, ge=2, description="the MI estimate shuffles z_d within a batch: 2 at least")
    lr: float = Field(1e-4, gt=0)
    critic_lr: float = Field(1e-4, gt=0)
    critic_steps: int = Field(5, ge=1)
    mine_rate: float = Field(0.001, gt=0, le=1, description="MINE moving-average rate of the critic's denominator")
    max_train_images: int | None = Field(None, ge=2, description="cap for smoke runs; None: the whole train split")


class ExperimentSection(Section):
    baselines: tuple[Literal["seg_only"], ...] = (SEG_ONLY,)
    ablations: tuple[Literal["no_mi", "no_cross"], ...] = (NO_MI, NO_CROSS)


class CompressSection(WeightQuantSection):
    also_bits: tuple[int, ...] = Field((4,), description="other widths measured beside it (companions)")

    @field_validator("also_bits")
    @classmethod
    def _bits_in_range(cls, also_bits: tuple[int, ...]) -> tuple[int, ...]:
        bad = [b for b in also_bits if not 2 <= b <= 8]
        if bad:
            raise ValueError(f"also_bits {bad} must lie in [2, 8]")
        return also_bits


class EvaluateSection(LatencySection):
    max_test_images: int | None = Field(None, ge=2, description="per split; None: all")
    mi_critic_steps: int = Field(400, ge=1, description="Adam steps of the fresh critic on val features")
    mi_critic_batch: int = Field(32, ge=2)
    mi_critic_lr: float = Field(1e-3, gt=0)
    mi_chunk: int = Field(25, ge=2, description="unseen-device test images per I estimate (the paired items of "
                          "mi_estimate)")
    probe_steps: int = Field(300, ge=1, description="full-batch Adam steps of the device-id linear probe")


class MISegNetRecipeConfig(RecipeConfig):
    model: MISegNetConfig = MISegNetConfig(image_size=64)
    train: TrainSection = TrainSection()
    experiment: ExperimentSection = ExperimentSection()
    compress: CompressSection = CompressSection()
    evaluate: EvaluateSection = EvaluateSection()


@dataclass(frozen=True)
class MISegNetData:
    train: UltrasoundSplit  # source device, stored uint8: paired_views draws each epoch's views from it
    x_val: torch.Tensor  # (N, 1, S, S) in [0, 1], source device
    y_val: torch.Tensor  # (N, 1, S, S) in {0, 1}
    tests: dict[str, tuple[torch.Tensor, torch.Tensor] | Withheld]  # unseen device -> (x, y) as x_val, y_val
    val_split: UltrasoundSplit
    test_splits: dict[str, UltrasoundSplit | Withheld]


def as_input(images: np.ndarray) -> torch.Tensor:
    """(N, S, S) stored uint8 (or raw 0-255 floats) -> (N, 1, S, S) float32 in [0, 1], the networks' input."""
    return torch.as_tensor(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def as_mask(masks: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(masks, dtype=np.float32)).unsqueeze(1)


def epoch_batches(split: UltrasoundSplit, batch_size: int, seed: int, epoch: int
                  ) -> list[tuple[torch.Tensor, ...]]:
    """The paired minibatches (x1, x2, x12, x21, y1, y2) of one epoch: image order and augmentation draws depend on
    (seed, epoch) only, so every model of a run sees exactly the same views. A last partial batch of one image is
    dropped (the MI estimate needs two to shuffle)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(split))
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        if len(chosen) < 2:
            continue
        views = [paired_views(split.image[i], split.mask[i], rng) for i in chosen]
        images = [torch.as_tensor(np.stack([getattr(v, name) for v in views])).unsqueeze(1)
                  for name in ("x1", "x2", "x12", "x21")]
        masks = [torch.as_tensor(np.stack([getattr(v, name) for v in views]), dtype=torch.float32).unsqueeze(1)
                 for name in ("y1", "y2")]
        batches.append((*images, *masks))
    return batches


@torch.no_grad()
def predict_masks(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, S, S) bool: sigmoid(D_s(E_a(x))) > 0.5, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)
    return (logits[:, 0] > 0).numpy()


def serving_path(model: MISegNet) -> nn.Module:
    """E_a + D_s: what serving runs, and what the size figures and the quantizer cover."""
    return nn.ModuleDict({"anatomy_encoder": model.anatomy_encoder, "seg_decoder": model.seg_decoder})


def drop_training_modules(model: MISegNet) -> MISegNet:
    """In place: E_d, D_r and the critic removed, leaving the served path D_s(E_a(x))."""
    for name in TRAINING_ONLY_MODULES:
        setattr(model, name, None)
    return model


SERVED_LAYERS = "anatomy_encoder+seg_decoder"  # the quantized layers' record


# ------------------------------------------------------------------------------------- disentanglement figures


@torch.no_grad()
def latents(model: MISegNet, x: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_a, z_d) of x in eval mode: (N, Ca, 8, 8), (N, Cd, 8, 8)."""
    was_training = model.training
    model.eval()
    try:
        chunks = x.split(batch_size)
        return (torch.cat([model.encode_anatomy(c) for c in chunks]),
                torch.cat([model.encode_domain(c) for c in chunks]))
    finally:
        model.train(was_training)


def fresh_critic_mi(fit: tuple[torch.Tensor, torch.Tensor], chunks: list[tuple[torch.Tensor, torch.Tensor]],
                    width: int, section: EvaluateSection, seed: int, mine_rate: float) -> np.ndarray:
    """I(z_a; z_d) as a critic trained afresh finds it: a MINE critic with a nonlinear head (the official affine head
    bounds the DV estimate by 0 whatever the dependence, models/misegnet.py: MineCritic) trained with MINE's
    bias-corrected gradient on the `fit` features, then the DV bound on each chunk (one fixed shuffle each).
    Returns one estimate per chunk. ASSUMED: the paper reports no held-out I; this is the protocol's measurement."""
    generator = torch.Generator().manual_seed(40_000 + seed)
    z_a, z_d = fit
    torch.manual_seed(40_000 + seed)
    critic = MineCritic(z_a.shape[1], z_d.shape[1], width, nonlinear_head=True)
    optimiser = torch.optim.Adam(critic.parameters(), lr=section.mi_critic_lr)
    average = MineAverage(mine_rate)
    batch = min(section.mi_critic_batch, len(z_a))
    critic.train()
    for _ in range(section.mi_critic_steps):
        chosen = torch.randperm(len(z_a), generator=generator)[:batch]
        loss = critic_loss(critic, z_a[chosen], z_d[chosen], torch.randperm(batch, generator=generator), average)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    critic.eval()
    with torch.no_grad():
        return np.array([float(dv_bound(critic, a, d, torch.randperm(len(a), generator=generator)))
                         for a, d in chunks])


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, fit: torch.Tensor, steps: int,
                          seed: int) -> float:
    """Top-1 (%) of a multinomial logistic regression (features standardised on the fit rows, full-batch Adam)
    trained on the rows `fit` selects and scored on the others."""
    torch.manual_seed(50_000 + seed)
    mean, std = features[fit].mean(0), features[fit].std(0).clamp(min=1e-6)
    standardised = (features - mean) / std
    probe = nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimiser = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(probe(standardised[fit]), labels[fit])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return 100.0 * float((probe(standardised[~fit]).argmax(1) == labels[~fit]).float().mean())


@register_recipe
class MISegNetRecipe(Recipe):
    name = "misegnet"
    title = "MI-SegNet: mutual-information disentanglement for ultrasound segmentation on unseen devices"
    compression = "rtn"
    config_model = MISegNetRecipeConfig
    primary_metric = "dice_unseen"
    cost_metric = "size_ratio"
    headline = Headline("dice_unseen", REGISTERED, SEG_ONLY, None,
                        "the paper's Dice tables (three unseen-domain test sets) were not available to us: no "
                        "figure to set beside ours")
    summary_columns = (("dice_unseen", "Dice unseen %", 1.0), ("dice_source", "Dice source %", 1.0),
                       ("hd95_unseen", "HD95 px", 1.0), ("mi_estimate", "I(z_a;z_d)", 1.0),
                       ("size_ratio", "size ×", 1.0))
    macs_per_item_metric = "macs_per_image"
    weight_bits_knob = "bits"
    serving_params = {"threshold": 0.5}
    smoke_overrides = (
        "model.anatomy_base=4", "model.domain_base=4", "model.critic_width=8",
        "train.epochs=1", "train.max_train_images=32", "evaluate.max_test_images=30", "evaluate.mi_chunk=10",
        "evaluate.mi_critic_steps=20", "evaluate.probe_steps=20", "evaluate.latency_batch=8",
        "evaluate.latency_runs=1", "evaluate.latency_warmup=0",
    )
    deployment_description = "MI-SegNet ultrasound segmentation (seg-only baseline, ablations), weight-quantized"
    deployment_tags = ("vision", "segmentation")

    # ------------------------------------------------------------------------------------------------ data

    def load_data(self, datasets: DatasetViews, cfg: MISegNetRecipeConfig) -> MISegNetData:
        raw = load_ultrasound_dataset(datasets["data"])
        train, val = raw.split("train"), raw.split("val")
        assert isinstance(train, UltrasoundSplit) and isinstance(val, UltrasoundSplit)  # fit and val: every step
        if cfg.train.max_train_images is not None:
            train = train.subset(np.arange(min(cfg.train.max_train_images, len(train))))
        cap = cfg.evaluate.max_test_images
        val = val.subset(np.arange(min(cap or len(val), len(val))))
        test_splits: dict[str, UltrasoundSplit | Withheld] = {}
        tests: dict[str, tuple[torch.Tensor, torch.Tensor] | Withheld] = {}
        for device in TARGET_DEVICES:
            split = raw.split(f"test_{device}")
            if isinstance(split, Withheld):
                test_splits[device] = tests[device] = split
                continue
            split = split.subset(np.arange(min(cap or len(split), len(split))))
            test_splits[device] = split
            tests[device] = (as_input(split.image), as_mask(split.mask))
        return MISegNetData(train, as_input(val.image), as_mask(val.mask), tests, val, test_splits)

    def build_model(self, cfg: MISegNetRecipeConfig) -> nn.Module:
        """MI-SegNet at the run's initial weights: every model of the comparison starts from these."""
        seed_everything(cfg.seed)
        return MISegNet(cfg.model).eval()

    # ----------------------------------------------------------------------------------------------- train

    def _train_one(self, model: MISegNet, schedule: str, data: MISegNetData, cfg: MISegNetRecipeConfig,
                   reporter: Reporter) -> dict[str, float]:
        """Trains `model` in place with `schedule` and keeps the epoch of best source-val Dice."""
        t = cfg.train
        trainer = MISegNetTrainer(model, TrainConfig(lr=t.lr, critic_lr=t.critic_lr, critic_steps=t.critic_steps,
                                                     ma_rate=t.mine_rate, **SCHEDULES[schedule]),
                                  generator=torch.Generator().manual_seed(30_000 + cfg.seed))
        best_dice, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
        for epoch in range(t.epochs):
            sums: dict[str, float] = {}
            batches = epoch_batches(data.train, t.batch_size, cfg.seed, epoch)
            for batch in batches:
                for key, value in trainer.step(*batch).items():
                    sums[key] = sums.get(key, 0.0) + value
            val_dice = float(dice_per_item(predict_masks(model, data.x_val), data.y_val[:, 0].numpy() > 0).mean())
            reporter.log_metrics({f"{schedule}.{k}": v / len(batches) for k, v in sums.items()}
                                 | {f"{schedule}.val_dice": val_dice}, step=epoch)
            if val_dice > best_dice:
                best_dice, best_epoch, best_state = val_dice, epoch, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        model.eval()
        return {f"{schedule}.val_dice": best_dice, f"{schedule}.best_epoch": float(best_epoch)}

    def train(self, model: nn.Module, data: MISegNetData, cfg: MISegNetRecipeConfig,
              reporter: Reporter) -> TrainResult:
        """MI-SegNet (`model`, in place) and, from the same initial weights on the same views, the baselines and
        ablations the config names, returned as companions. Metrics: each model's best source-val Dice and epoch."""
        initial = copy.deepcopy(model.state_dict())
        schedules = [REGISTERED, *cfg.experiment.baselines, *cfg.experiment.ablations]
        reporter.log_figure("contact_sheet_source", sheet_figure({"train": data.train, "val": data.val_split}))
        metrics: dict[str, float] = {}
        companions: dict[str, Companion] = {}
        for done, schedule in enumerate(schedules, start=1):
            net = model if schedule == REGISTERED else self.build_model(cfg)
            net.load_state_dict(initial)
            metrics |= self._train_one(net, schedule, data, cfg, reporter)
            if schedule != REGISTERED:
                companions[schedule] = Companion(net)
            reporter.progress(done, len(schedules), "MI-SegNet and its baselines")
        metrics["val_dice"] = metrics[f"{REGISTERED}.val_dice"]
        return TrainResult(metrics, companions)

    # -------------------------------------------------------------------------------------------- compress

    def _quantized(self, model: MISegNet, section: CompressSection, bits: int) -> MISegNet:
        return quantize_weights(drop_training_modules(copy.deepcopy(model)), section.spec(bits),
                                QUANTIZED_LAYERS).eval()

    def compress(self, model: nn.Module, data: MISegNetData, cfg: MISegNetRecipeConfig,
                 reporter: Reporter) -> CompressionResult:
        """Round-to-nearest weight quantization of E_a + D_s at cfg.compress.bits (the version registered) and at
        each of also_bits (companions); nothing is fine-tuned. Metrics: source-val Dice of each."""
        section = cfg.compress
        dense_dice = float(dice_per_item(predict_masks(model, data.x_val), data.y_val[:, 0].numpy() > 0).mean())
        metrics = {"dense_val_dice": dense_dice}
        compressed = self._quantized(model, section, section.bits)
        companions = {}
        for bits in section.also_bits:
            companions[f"{REGISTERED}_w{bits}"] = Companion(self._quantized(model, section, bits),
                                                            knobs=section.knobs(SERVED_LAYERS, bits))
        for bits, module in ((section.bits, compressed), *((b, companions[f"{REGISTERED}_w{b}"].module)
                                                            for b in section.also_bits)):
            dice = dice_per_item(predict_masks(module, data.x_val), data.y_val[:, 0].numpy() > 0).mean()
            metrics[f"w{bits}_val_dice"] = float(dice)
        return CompressionResult(model=compressed, method="rtn", knobs=section.knobs(SERVED_LAYERS),
                                 metrics=metrics, companions=companions)

    def restore_compression(self, model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
        return restore_weights(drop_training_modules(model), knobs, QUANTIZED_LAYERS)

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        return quant_record(knobs)

    # -------------------------------------------------------------------------------------------- evaluate

    def evaluate(self, models: RunModels, data: MISegNetData, cfg: MISegNetRecipeConfig,
                 reporter: Reporter) -> Evaluation:
        """Every model on the same images: per unseen device and on the source val split Dice, IoU and HD95 per
        image; the cost of the served path; for the models with a domain encoder the disentanglement figures."""
        tests = {device: pair for device, pair in data.tests.items() if not isinstance(pair, Withheld)}
        if len(tests) != len(TARGET_DEVICES):
            raise ValueError("evaluate needs every unseen device's test split")
        bits = cfg.compress.bits
        candidates: list[tuple[str, str, nn.Module]] = [(REGISTERED, "parent", models.dense)]
        if models.compressed is not None:
            candidates.append((f"{REGISTERED}_w{bits}", "method", models.compressed))
        for name in [f"{REGISTERED}_w{b}" for b in cfg.compress.also_bits] + [*cfg.experiment.baselines,
                                                                                *cfg.experiment.ablations]:
            if name in models.companions:
                role = "baseline" if name in cfg.experiment.baselines else "ablation"
                candidates.append((name, role, models.companions[name]))
        disentangle = self._disentanglement(models, data, cfg, tests)
        latency_batch = data.x_val[: cfg.evaluate.latency_batch]
        dense_size = float(size_on_disk(serving_path(models.dense)))
        variants: list[VariantResult] = []
        for name, role, module in candidates:
            metrics, per_item = segmentation_scores(module, data, tests)
            size = float(size_on_disk(serving_path(module)))
            metrics |= {"size_bytes": size, "size_ratio": size / dense_size,
                        "macs_per_image": count_macs(module, latency_batch) / len(latency_batch)}
            if role in ("parent", "method"):
                metrics |= measure_latency(module, latency_batch, runs=cfg.evaluate.latency_runs,
                                           warmup=cfg.evaluate.latency_warmup)
            if name in disentangle:
                figures, mi_per_chunk = disentangle[name]
                metrics |= figures
                per_item["mi_estimate"] = mi_per_chunk
            knobs = cfg.compress.knobs(SERVED_LAYERS, int(name.rsplit("_w", 1)[1])) if "_w" in name else \
                {"schedule": name}
            variants.append(VariantResult(name=name, role=role, method="rtn" if "_w" in name else name,
                                          knobs=knobs, metrics=metrics, per_item=per_item))
        compare_to_parent(variants, self.primary_metric)
        table = [{"variant": v.name, "role": v.role, **{k: round(float(m), 6) for k, m in v.metrics.items()}}
                 for v in variants]
        figures = {"dice_by_device": dice_figure(table),
                   "contact_sheet_unseen": sheet_figure({d: data.test_splits[d] for d in TARGET_DEVICES})}
        return Evaluation(variants=variants, tables={"comparison": table}, figures=figures)

    def _disentanglement(self, models: RunModels, data: MISegNetData, cfg: MISegNetRecipeConfig,
                         tests: dict[str, tuple[torch.Tensor, torch.Tensor]]
                         ) -> dict[str, tuple[dict[str, float], np.ndarray]]:
        """Per model with a trained domain encoder (MI-SegNet and its two ablations): the fresh critic's I on chunks
        of the unseen-device images (fitted on the source val features), the trained critic's own I on val, the
        device-id probe accuracy from pooled z_a and pooled z_d (fit on the even, scored on the odd images of val
        and every unseen device), and the cross-reconstruction error on paired views of the unseen images."""
        ev = cfg.evaluate
        x_unseen = torch.cat([tests[d][0] for d in TARGET_DEVICES])
        x_all = torch.cat([data.x_val, x_unseen])
        device_id = torch.cat([torch.full((len(data.x_val),), DEVICES.index(SOURCE_DEVICE))]
                              + [torch.full((len(tests[d][0]),), DEVICES.index(d)) for d in TARGET_DEVICES])
        fit = torch.arange(len(x_all)) % 2 == 0
        chunk_bounds = range(0, len(x_unseen) - ev.mi_chunk + 1, ev.mi_chunk)
        pairs = cross_reconstruction_pairs(data, cfg.seed)
        found: dict[str, tuple[dict[str, float], np.ndarray]] = {}
        for name, module in [(REGISTERED, models.dense), *models.companions.items()]:
            if name not in (REGISTERED, NO_MI, NO_CROSS):
                continue
            z_a_val, z_d_val = latents(module, data.x_val)
            z_a, z_d = latents(module, x_unseen)
            chunks = [(z_a[s:s + ev.mi_chunk], z_d[s:s + ev.mi_chunk]) for s in chunk_bounds]
            mi = fresh_critic_mi((z_a_val, z_d_val), chunks, cfg.model.critic_width, ev, cfg.seed,
                                 cfg.train.mine_rate)
            pooled_a, pooled_d = (torch.cat(z).mean(dim=(2, 3)) for z in zip((z_a_val, z_d_val), (z_a, z_d)))
            x1, x2, x12 = pairs
            with torch.no_grad():
                module.eval()
                crossed = torch.cat([module.reconstruct(b, a) for a, b in zip(x1.split(64), x2.split(64))])
            found[name] = ({
                "mi_estimate": float(mi.mean()),
                "mi_own_critic": mutual_information_estimate(module, data.x_val,
                                                             generator=torch.Generator().manual_seed(cfg.seed)),
                "probe_device_za": linear_probe_accuracy(pooled_a, device_id, fit, ev.probe_steps, cfg.seed),
                "probe_device_zd": linear_probe_accuracy(pooled_d, device_id, fit, ev.probe_steps, cfg.seed),
                "probe_chance": 100.0 / len(DEVICES),
                "cross_rec_error": float((crossed - x12).abs().mean()),
                "cross_rec_reference": float((x2 - x12).abs().mean()),
            }, mi)
        return found

    # --------------------------------------------------------------------------------------------- serving

    def input_example(self, data: MISegNetData, n: int = 2) -> np.ndarray:
        return data.val_split.image[:n].astype(np.float32)  # (n, S, S) raw 0-255 val pixels, the served format

    def predict(self, model: nn.Module, batch: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """(n, S, S) uint8 lumen masks (1 = lumen) for (n, S, S) grey images of 0-255 values."""
        threshold = float((params or {}).get("threshold", self.serving_params["threshold"]))
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        images = np.asarray(batch, dtype=np.float32)
        if images.ndim != 3:
            raise ValueError(f"expected grey images shaped (n, H, W), got {images.shape}")
        model.eval()
        with torch.no_grad():
            probabilities = torch.sigmoid(model(as_input(images)))[:, 0]
        return (probabilities > threshold).numpy().astype(np.uint8)


# ------------------------------------------------------------------------------------------------ evaluation


def segmentation_scores(module: nn.Module, data: MISegNetData, tests: dict[str, tuple[torch.Tensor, torch.Tensor]]
                        ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Dice, IoU, HD95 per device (means) and over the unseen devices pooled; per image: dice_unseen (the unseen
    devices in TARGET_DEVICES order) and dice_source (the val split)."""
    metrics: dict[str, float] = {}
    per_device: dict[str, dict[str, np.ndarray]] = {}
    for device, (x, y) in [(SOURCE_DEVICE, (data.x_val, data.y_val)), *((d, tests[d]) for d in TARGET_DEVICES)]:
        pred, target = predict_masks(module, x), y[:, 0].numpy() > 0
        per_device[device] = {"dice": dice_per_item(pred, target), "iou": iou_per_item(pred, target),
                              "hd95": hd95_per_item(pred, target)}
        metrics |= {f"{score}_{device}": float(values.mean()) for score, values in per_device[device].items()}
    for score in ("dice", "iou", "hd95"):
        metrics[f"{score}_unseen"] = float(np.concatenate([per_device[d][score] for d in TARGET_DEVICES]).mean())
        metrics[f"{score}_source"] = metrics[f"{score}_{SOURCE_DEVICE}"]
    per_item = {"dice_unseen": np.concatenate([per_device[d]["dice"] for d in TARGET_DEVICES]),
                "dice_source": per_device[SOURCE_DEVICE]["dice"]}
    return metrics, per_item


def cross_reconstruction_pairs(data: MISegNetData, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x1, x2, x12) paired views of the unseen-device test images, one fixed draw: the target of
    D_r(E_a(x2), E_d(x1)) is x12 (x1's appearance on x2's geometry)."""
    rng = np.random.default_rng([seed, 60_000])
    views = [paired_views(split.image[i], split.mask[i], rng)
             for split in (data.test_splits[d] for d in TARGET_DEVICES) if isinstance(split, UltrasoundSplit)
             for i in range(len(split))]
    return tuple(torch.as_tensor(np.stack([getattr(v, name) for v in views])).unsqueeze(1)  # type: ignore[return-value]
                 for name in ("x1", "x2", "x12"))


def sheet_figure(splits: dict[str, UltrasoundSplit | Withheld], n: int = 4) -> Any:
    """One contact sheet (image | mask | overlay) per split side by side: what a reviewer checks the data by."""
    shown = {name: split for name, split in splits.items() if isinstance(split, UltrasoundSplit)}
    fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 4 * n / 4), squeeze=False)
    for ax, (name, split) in zip(axes[0], shown.items()):
        ax.imshow(contact_sheet(split, n))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def dice_figure(rows: list[dict[str, Any]]) -> Any:
    """Dice per device for every model of the comparison, from evaluate's table."""
    devices = [SOURCE_DEVICE, *TARGET_DEVICES]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(len(rows), 1)
    for k, row in enumerate(rows):
        ax.bar(np.arange(len(devices)) + k * width, [row[f"dice_{d}"] for d in devices], width, label=row["variant"])
    ax.set_xticks(np.arange(len(devices)) + 0.4 - width / 2, [f"{d}\n(source)" if d == SOURCE_DEVICE else d
                                                              for d in devices])
    ax.set_ylabel("Dice (%)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
