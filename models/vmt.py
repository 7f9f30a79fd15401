"""VMT-Adapter — once-for-all Vision Multi-Task Adapter (Xin, Du, Wang, Lin, Yan, AAAI 2024, arXiv 2312.08733), with
VMT-Adapter-Lite and the baselines it is measured against, in plain PyTorch on timm's Swin Transformer.

No official code exists (the authors' synbol/Parameter-Efficient-Transfer-Learning-Benchmark README says it "will be
released"), so this is our reconstruction from the paper's abstract and Fig. 3 caption: an adapter parallel to every
Swin MLP, shared projections, tiny task modules, Lite = tied projections. Every choice the paper does not pin down is
marked `# ASSUMED:` where it is made. In every Swin block, parallel to the MLP:

    u      = LN2(x)                                 the normalised input the MLP sees           (B, H, W, C)
    h      = act(u W_down + b_down)                 shared, W_down C x k, k = C / gamma        (B, H, W, k)
    h_t    = h * g_t + e_t                          tiny task module t: 2k parameters           (T, B, H, W, k)
    a_t    = h_t W_up + b_up                        shared, W_up k x C zero-initialised         (T, B, H, W, C)
    a_gen  = mean_t a_t = (mean_t h_t) W_up + b_up  one matmul whatever T
    x_next = x + attention (as timm) + MLP(u) + s * a_gen    the backbone stream: one pass, O(1) in T
    side_t = s * a_t                                task t's residual, kept apart from the stream

At the end of every stage task t's feature map is stage_out + side_t of the stage's last block, and task t's decoder
reads the four such maps. VMT-Adapter-Lite ties W_up = W_down^T, which halves the adapter.

Baselines: per-task adapters (one adapter set per task, the backbone run once per task: O(T)), multi-task full
fine-tuning (one trainable backbone shared by all decoders) and single-task full fine-tuning (the Δm baseline).
Losses and Δm follow MTLoRA (scale-lab/MTLoRA: main.py, mtl_loss_schemes.py, evaluation/evaluate_utils.py), the code
of the benchmark line VMT-Adapter belongs to.

Layouts: images (B, 3, S, S); timm's Swin stages are NHWC (B, H, W, C) inside the backbone; every feature map handed
to a decoder is NCHW (B, C, H, W); predictions are (B, C_t, S, S). Label maps are (B, S, S) integers with 255 =
ignore; normals targets are (B, S, S, 3) unit vectors, exactly (0, 0, 0) on invalid pixels (data/scenes.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn

from models.common.checks import at_least, non_negative, one_of, positive

IGNORE = 255  # ignore index of every label map
KINDS = ("segmentation", "saliency", "normals")
MODES = ("vmt", "vmt_lite", "per_task_adapters", "full_finetune", "single_task")
ADAPTER_MODES = ("vmt", "vmt_lite", "per_task_adapters")  # frozen backbone, only adapters + decoders train


# ---------------------------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class SwinConfig:
    """timm SwinTransformer arguments. The default is our miniature (stage maps 16x16x32, 8x8x64, 4x4x128,
    2x2x256 at 64 px); SWIN_TINY below is Swin-T, the protocol's backbone."""
    img_size: int = 64
    patch_size: int = 4
    in_chans: int = 3
    window_size: int = 4
    embed_dim: int = 32  # stage i has embed_dim * 2**i channels
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1  # timm's default; MTLoRA trains Swin-T with 0.2
    num_classes: int = 0  # 0 = no classifier; > 0 for the pre-training head (the proxy task's classes)

    def __post_init__(self) -> None:
        at_least(self, 1, "patch_size", "in_chans", "window_size", "embed_dim")
        at_least(self, 0, "num_classes")
        positive(self, "mlp_ratio")
        non_negative(self, "drop_path_rate")
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must name the same stages")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i}: {self.embed_dim * 2**i} channels not divisible by {heads} heads")


SWIN_TINY = SwinConfig(img_size=224, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                       drop_path_rate=0.2)


@dataclass(frozen=True)
class AdapterConfig:
    # ASSUMED: gamma, s and the activation are not given by the paper (tunable); AdaptFormer's ReLU bottleneck with
    # s = 1 and gamma = 4 (k = C/4: the sum over Swin-T's blocks of 2C^2/gamma is 1.08 M, ~1 % of 4x Swin-T, the
    # paper's ~1 %).
    reduction: int = 4  # gamma: k = C // gamma bottleneck channels in a block of C channels
    scale: float = 1.0  # s, fixed
    act: str = "relu"

    def __post_init__(self) -> None:
        at_least(self, 1, "reduction")
        positive(self, "scale")
        one_of(self, "act", ("relu", "gelu"))


@dataclass(frozen=True)
class TaskSpec:
    """One dense task: its name (the key of predictions, targets and metrics), the kind that picks loss and metric,
    the decoder's output channels and the loss weight."""
    name: str
    kind: str  # segmentation: CE + mIoU; saliency: balanced BCE + mIoU; normals: L1 + mean angular error
    channels: int  # segmentation: classes; saliency: 1 logit; normals: 3
    loss_weight: float

    def __post_init__(self) -> None:
        one_of(self, "kind", KINDS)
        non_negative(self, "loss_weight")
        if not self.name or "." in self.name:
            raise ValueError(f"task name must be non-empty without '.', got {self.name!r}")
        required = {"saliency": 1, "normals": 3}.get(self.kind)
        if required is not None and self.channels != required:
            raise ValueError(f"a {self.kind} task has {required} output channel(s), got {self.channels}")
        if self.kind == "segmentation":
            at_least(self, 2, "channels")

    @property
    def classes(self) -> int:
        """Classes of the mIoU; saliency is background vs salient. 0 for normals."""
        return {"segmentation": self.channels, "saliency": 2, "normals": 0}[self.kind]


# The four PASCAL-Context tasks on ShapesMT's label sets (data/scenes.py: 5 semseg classes, 4 parts classes) with
# MTLoRA's loss weights (main.py): semseg 1, human parts 2, saliency 5, normals 10.
SHAPES_MT_TASKS = (
    TaskSpec("semseg", "segmentation", 5, 1.0),
    TaskSpec("parts", "segmentation", 4, 2.0),
    TaskSpec("saliency", "saliency", 1, 5.0),
    TaskSpec("normals", "normals", 3, 10.0),
)


@dataclass(frozen=True)
class MultiTaskConfig:
    mode: str = "vmt"  # one of MODES
    tasks: tuple[TaskSpec, ...] = SHAPES_MT_TASKS
    adapter: AdapterConfig = AdapterConfig()
    decoder_width: int = 32  # channels inside every task decoder

    def __post_init__(self) -> None:
        one_of(self, "mode", MODES)
        at_least(self, 1, "decoder_width")
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be a non-empty tuple with unique names, got {names}")
        if self.mode == "single_task" and len(names) != 1:
            raise ValueError(f"mode single_task trains exactly one task, got {names}")


# ---------------------------------------------------------------------------------------------------------------------
# Backbone


def build_swin(cfg: SwinConfig) -> SwinTransformer:
    """A randomly initialised timm Swin Transformer (nothing is downloaded; pre-trained weights are loaded by the
    caller)."""
    return SwinTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                           num_classes=cfg.num_classes, embed_dim=cfg.embed_dim, depths=cfg.depths,
                           num_heads=cfg.num_heads, window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
                           drop_path_rate=cfg.drop_path_rate)


def stage_channels(swin: SwinTransformer) -> list[int]:
    return [int(info["num_chs"]) for info in swin.feature_info]


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """timm's Swin keeps (..., H, W, C); the conv decoders want (..., C, H, W)."""
    return x.movedim(-1, -3)


def stage_features(swin: SwinTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """The four stage outputs of a plain (or adapted, generic stream only) Swin as NCHW maps (B, C_i, H_i, W_i):
    (B, 3, S, S) -> [(B, C, S/4, S/4), (B, 2C, S/8, S/8), (B, 4C, S/16, S/16), (B, 8C, S/32, S/32)].
    The final norm and the classifier of timm's forward are not applied: they belong to the classification head."""
    x = swin.patch_embed(images)  # (B, S/4, S/4, C) NHWC
    maps = []
    for stage in swin.layers:
        x = stage(x)  # (B, H_i, W_i, C_i) NHWC: timm's patch merging, then the blocks
        maps.append(_nchw(x))
    return maps


# ---------------------------------------------------------------------------------------------------------------------
# VMT adapter


class VMTAdapter(nn.Module):
    """One block's adapter: the shared down/up projections and the task modules (g_t, e_t) of `tasks` tasks.

    lite=True ties W_up = W_down^T (VMT-Adapter-Lite). Either way the adapter's output is exactly 0 at
    initialisation, so step 0 is the frozen backbone: VMT zero-initialises W_up and b_up; tied weights cannot be
    zero, so Lite starts every g_t at 0 instead (with e_t = 0 and b_up = 0, h_t = 0)."""

    def __init__(self, dim: int, bottleneck: int, tasks: int, cfg: AdapterConfig, lite: bool) -> None:
        super().__init__()
        self.scale = cfg.scale
        self.act = nn.ReLU() if cfg.act == "relu" else nn.GELU()
        self.down = nn.Linear(dim, bottleneck)  # W_down, b_down (timm's Linear init)
        # ASSUMED: the tiny task module is a per-channel scale and shift of the bottleneck, g_t, e_t in R^k.
        # ASSUMED (Lite): g_t starts at 0 (the other option: a learnable s starting at 0), so s stays the
        # same fixed scale as VMT's and each g_t grows from 0 as VMT's zero-initialised W_up does.
        self.task_scale = nn.Parameter(torch.full((tasks, bottleneck), 0.0 if lite else 1.0))  # g_t
        self.task_shift = nn.Parameter(torch.zeros(tasks, bottleneck))  # e_t
        self.up_weight = None if lite else nn.Parameter(torch.zeros(dim, bottleneck))  # W_up^T as a Linear weight
        self.up_bias = nn.Parameter(torch.zeros(dim))  # b_up

    def _up(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.down.weight.t() if self.up_weight is None else self.up_weight  # (C, k); Lite: W_down^T
        return F.linear(h, weight, self.up_bias)

    def bottleneck(self, u: torch.Tensor) -> torch.Tensor:
        return self.act(self.down(u))  # (B, H, W, C) -> h (B, H, W, k)

    def generic(self, h: torch.Tensor) -> torch.Tensor:
        """s * a_gen (B, H, W, C). The task module is affine in h, so mean_t h_t = h * mean_t g_t + mean_t e_t: the
        backbone stream costs one k-dim scale-shift and one up-projection whatever T."""
        # ASSUMED: the task-generic output that joins the backbone stream is the mean of the tasks' a_t.
        return self.scale * self._up(h * self.task_scale.mean(0) + self.task_shift.mean(0))

    def per_task(self, h: torch.Tensor) -> torch.Tensor:
        """side_t = s * a_t for every task, (T, B, H, W, C)."""
        # ASSUMED: s * a_t, kept out of the stream, is task t's task-specific residual.
        h_t = h * self.task_scale[:, None, None, None] + self.task_shift[:, None, None, None]  # (T, B, H, W, k)
        return self.scale * self._up(h_t)


class AdaptedSwinBlock(SwinTransformerBlock):
    """timm's SwinTransformerBlock with adapters parallel to its MLP. `adapters` holds one VMTAdapter per backbone
    pass: VMT has one (serving all T tasks), the per-task baseline T (one task each); `adapter` picks the pass.
    The attention half is timm's own `_attn`, unchanged."""

    adapters: nn.ModuleList

    def _backbone(self, x: torch.Tensor, adapter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x + attention + MLP(u), timm's block (B, H, W, C), and the adapter's bottleneck h (B, H, W, k)."""
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        u = self.norm2(x)  # the MLP and the adapter read the same normalised tokens
        return x + self.drop_path2(self.mlp(u)), self.adapters[adapter].bottleneck(u)

    # ASSUMED: the adapter term is added outside the MLP's drop-path, as AdaptFormer adds its parallel adapter.
    def forward(self, x: torch.Tensor, adapter: int = 0) -> torch.Tensor:
        x, h = self._backbone(x, adapter)
        return x + self.adapters[adapter].generic(h)  # (B, H, W, C)

    def forward_with_sides(self, x: torch.Tensor, adapter: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output (B, H, W, C) and the side outputs of the adapter's tasks (T, B, H, W, C)."""
        x, h = self._backbone(x, adapter)
        chosen = self.adapters[adapter]
        return x + chosen.generic(h), chosen.per_task(h)


def _patch_blocks(swin: SwinTransformer, passes: int, tasks_per_pass: int, cfg: AdapterConfig,
                  lite: bool) -> SwinTransformer:
    if passes < 1 or tasks_per_pass < 1:
        raise ValueError(f"tasks must be >= 1, got {min(passes, tasks_per_pass)}")
    blocks = [blk for stage in swin.layers for blk in stage.blocks]
    for blk in blocks:  # every check before the first change, so a refused call leaves swin as it was
        if type(blk) is not SwinTransformerBlock:
            raise TypeError(f"expected timm's SwinTransformerBlock, got {type(blk).__name__} (already adapted?)")
        if blk.dim < cfg.reduction:
            raise ValueError(f"reduction={cfg.reduction} leaves no bottleneck channel in a {blk.dim}-dim block")
    for blk in blocks:
        ref = blk.norm2.weight
        blk.__class__ = AdaptedSwinBlock
        blk.adapters = nn.ModuleList(VMTAdapter(blk.dim, blk.dim // cfg.reduction, tasks_per_pass, cfg, lite)
                                     for _ in range(passes)).to(device=ref.device, dtype=ref.dtype)
    return swin


def apply_vmt_adapters(swin: SwinTransformer, tasks: int, cfg: AdapterConfig, lite: bool = False) -> SwinTransformer:
    """Patch every block of `swin` in place with one VMT adapter shared by `tasks` tasks (lite: VMT-Adapter-Lite)
    and return it. `swin(x)` then runs the generic stream; `multitask_features` gives every task's maps."""
    return _patch_blocks(swin, passes=1, tasks_per_pass=tasks, cfg=cfg, lite=lite)


def apply_per_task_adapters(swin: SwinTransformer, tasks: int, cfg: AdapterConfig) -> SwinTransformer:
    """The per-task baseline: every block gets `tasks` independent adapter sets of one task each, so
    `multitask_features` runs the backbone once per task."""
    # ASSUMED: each set is a one-task VMTAdapter (its g, e are absorbable into W_up, b_up: a plain adapter) and its
    # task reads stage_out + side the same way as VMT's, so the two differ only in what is shared.
    return _patch_blocks(swin, passes=tasks, tasks_per_pass=1, cfg=cfg, lite=False)


def multitask_features(swin: SwinTransformer, images: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per task, per stage, the NCHW map (B, C_i, H_i, W_i) its decoder reads: stage_out + side_t.

    One backbone pass per adapter set: once for VMT and Lite whatever T, T times for per-task adapters. Entry t is
    task module t (VMT, Lite) or adapter set t (per-task adapters)."""
    first = swin.layers[0].blocks[0]
    if not isinstance(first, AdaptedSwinBlock):
        raise ValueError("swin has no adapters (call apply_vmt_adapters or apply_per_task_adapters first)")
    features: list[list[torch.Tensor]] = []
    for adapter in range(len(first.adapters)):
        x = swin.patch_embed(images)  # (B, S/4, S/4, C) NHWC
        taps = []  # per stage (T_pass, B, C_i, H_i, W_i)
        for stage in swin.layers:
            x = stage.downsample(x)  # timm's patch merging (identity in stage 0)
            *body, last = stage.blocks
            for blk in body:
                x = blk(x, adapter=adapter)
            # ASSUMED: task-specific features are tapped at the LAST block of every stage only; the earlier
            # blocks' per-task residuals reach the tasks only through the shared stream (as their mean).
            x, sides = last.forward_with_sides(x, adapter=adapter)  # (B, H, W, C), (T_pass, B, H, W, C)
            taps.append(_nchw(x.unsqueeze(0) + sides))
        features += [[tap[t] for tap in taps] for t in range(taps[0].shape[0])]
    return features


def freeze_backbone(swin: nn.Module) -> None:
    """Only the adapters (shared projections and task modules) of `swin` stay trainable."""
    # ASSUMED: the LayerNorms are frozen with everything else (the paper does not say whether they are tuned).
    swin.requires_grad_(False)
    for module in swin.modules():
        if isinstance(module, VMTAdapter):
            module.requires_grad_(True)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------------------
# Decoders and the multi-task model


class TaskDecoder(nn.Module):
    """A light FPN-like head: 1x1 lateral convs bring the four stage maps to `width` channels, all are upsampled
    to the largest (S/4) and summed, two 3x3 conv-BN-ReLU fuse them, a 1x1 conv predicts, and a bilinear x4
    upsampling returns to the input size."""
    # ASSUMED: the paper's decoder is not reproduced (MTLoRA uses HRNet-style heads); sum fusion, as an FPN.

    def __init__(self, in_channels: Sequence[int], out_channels: int, width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        top = maps[0].shape[-2:]  # stage 1, S/4
        y = sum(F.interpolate(lateral(m), size=top, mode="bilinear", align_corners=False)
                for lateral, m in zip(self.lateral, maps))  # (B, width, S/4, S/4)
        y = self.head(self.fuse(y))  # (B, out, S/4, S/4)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)  # (B, out, S, S)


class MultiTaskModel(nn.Module):
    """Backbone (+ adapters, by mode) and one decoder per task; forward(images) -> {task: (B, C_t, S, S)}.

    vmt / vmt_lite       frozen backbone, VMT adapters, one backbone pass
    per_task_adapters    frozen backbone, one adapter set per task, one backbone pass per task
    full_finetune        the whole backbone trains, one pass shared by every decoder
    single_task          full_finetune with one task (the Δm baseline, one model per task)

    The model takes ownership of `swin` and changes it in place: its classifier and final norm are dropped (the
    dense model never reads them, so they neither train nor count), adapters are patched in, the backbone frozen."""

    def __init__(self, swin: SwinTransformer, cfg: MultiTaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        swin.reset_classifier(0)
        swin.norm = nn.Identity()
        tasks = len(cfg.tasks)
        if cfg.mode in ("vmt", "vmt_lite"):
            apply_vmt_adapters(swin, tasks, cfg.adapter, lite=cfg.mode == "vmt_lite")
        elif cfg.mode == "per_task_adapters":
            apply_per_task_adapters(swin, tasks, cfg.adapter)
        if cfg.mode in ADAPTER_MODES:
            freeze_backbone(swin)
        self.backbone = swin
        channels = stage_channels(swin)
        self.decoders = nn.ModuleDict({t.name: TaskDecoder(channels, t.channels, cfg.decoder_width)
                                       for t in cfg.tasks})

    def task_features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per task (in cfg.tasks order), per stage, the NCHW map its decoder reads."""
        if self.cfg.mode in ADAPTER_MODES:
            return multitask_features(self.backbone, images)
        shared = stage_features(self.backbone, images)
        return [shared] * len(self.cfg.tasks)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = (images.shape[-2], images.shape[-1])
        return {task.name: self.decoders[task.name](maps, size)
                for task, maps in zip(self.cfg.tasks, self.task_features(images))}


# ---------------------------------------------------------------------------------------------------------------------
# Losses (MTLoRA's mtl_loss_schemes.py, with 255 ignored everywhere)


def _valid_normals(target: torch.Tensor) -> torch.Tensor:
    return target.abs().sum(-1) > 0  # (B, H, W): invalid normals are exactly (0, 0, 0)


def _unit(pred: torch.Tensor) -> torch.Tensor:
    return pred / (pred.norm(dim=1, keepdim=True) + 1e-12)  # MTLoRA's Normalize, over the channel axis


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-mean cross-entropy over non-ignored pixels; logits (B, K, H, W), target (B, H, W). 0 if none is valid
    (F.cross_entropy would give NaN)."""
    target = target.long()
    valid = (target != IGNORE).sum()
    return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / valid.clamp_min(1)


def saliency_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE (MTLoRA's BalancedCrossEntropyLoss, HED-style): with w = the fraction of negatives among
    the valid pixels, (w * sum over positives + (1 - w) * sum over negatives) / valid pixels.
    logits (B, 1, H, W), target (B, H, W) in {0, 1, 255}."""
    valid = target != IGNORE
    salient = ((target > 0) & valid).float()
    background = ((target == 0) & valid).float()
    n_valid = valid.sum().clamp_min(1)
    w = background.sum() / n_valid
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], salient, reduction="none")  # (B, H, W)
    return (w * (bce * salient).sum() + (1 - w) * (bce * background).sum()) / n_valid


def normals_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the L2-normalised prediction (B, 3, H, W) and the GT (B, H, W, 3) over the valid pixels, averaged
    per component as MTLoRA's NormalsLoss (sum / valid elements)."""
    valid = _valid_normals(target).unsqueeze(1)  # (B, 1, H, W)
    diff = (_unit(pred) - _nchw(target)).abs() * valid
    return diff.sum() / (3 * valid.sum()).clamp_min(1)


def task_loss(task: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.kind == "segmentation":
        return segmentation_loss(pred, target)
    if task.kind == "saliency":
        return saliency_loss(pred, target)
    return normals_loss(pred, target)


def multitask_loss(tasks: Sequence[TaskSpec], preds: Mapping[str, torch.Tensor],
                   targets: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = sum_t w_t L_t (MTLoRA: semseg 1, parts 2, saliency 5, normals 10); returns L and the unweighted L_t."""
    losses = {t.name: task_loss(t, preds[t.name], targets[t.name]) for t in tasks}
    total = sum(t.loss_weight * losses[t.name] for t in tasks)
    return total, losses


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and Δm


def predict_labels(task: TaskSpec, pred: torch.Tensor) -> torch.Tensor:
    """Label map (B, H, W) of a segmentation (argmax) or saliency (sigmoid > 0.5) prediction."""
    # ASSUMED: saliency is scored at one threshold (0.5) as a two-class mIoU; MTLoRA's SaliencyMeter takes the best
    # of thresholds 0.05..0.95 instead.
    if task.kind == "saliency":
        return (pred[:, 0] > 0).long()
    return pred.argmax(1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts, rows = GT, columns = prediction, over the pixels whose GT is not 255."""
    valid = target != IGNORE
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (int(t.max()) >= classes or int(p.max()) >= classes or int(p.min()) < 0):
        raise ValueError(f"labels must lie in 0..{classes - 1} (or be {IGNORE} in the target)")
    return torch.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def miou_from_confusion(confusion: torch.Tensor) -> float:
    """Mean IoU in percent over the classes present in the GT or the prediction."""
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    present = union > 0
    return float(100 * (tp[present] / union[present]).mean()) if present.any() else float("nan")


def mean_iou(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    return miou_from_confusion(confusion_matrix(pred, target, classes))


def angular_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between the normalised prediction (B, 3, H, W) and the GT (B, H, W, 3), one per valid pixel."""
    cos = (_unit(pred) * _nchw(target)).sum(1)  # (B, H, W)
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))[_valid_normals(target)]


def mean_angular_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(angular_errors(pred, target).double().mean())


class MultiTaskMeter:
    """Metrics over a whole split: confusion matrices and angle sums accumulate over batches (as MTLoRA's meters), so
    the mIoU is the split's, not a mean of batch mIoUs. compute() -> {task: mIoU % or mean angular error in degrees}."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.tasks = tuple(tasks)
        self.confusion = {t.name: torch.zeros(t.classes, t.classes, dtype=torch.long)
                          for t in self.tasks if t.kind != "normals"}
        self.angle_sum = {t.name: 0.0 for t in self.tasks if t.kind == "normals"}
        self.angle_count = {name: 0 for name in self.angle_sum}

    @torch.no_grad()
    def update(self, preds: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        for task in self.tasks:
            pred, target = preds[task.name], targets[task.name]
            if task.kind == "normals":
                errors = angular_errors(pred, target).double()
                self.angle_sum[task.name] += float(errors.sum())
                self.angle_count[task.name] += errors.numel()
            else:
                self.confusion[task.name] += confusion_matrix(predict_labels(task, pred), target, task.classes).cpu()

    def compute(self) -> dict[str, float]:
        out = {name: miou_from_confusion(c) for name, c in self.confusion.items()}
        out |= {name: s / self.angle_count[name] if self.angle_count[name] else math.nan
                for name, s in self.angle_sum.items()}
        return {t.name: out[t.name] for t in self.tasks}


def lower_is_better(tasks: Sequence[TaskSpec]) -> frozenset[str]:
    """The tasks whose metric is an error (normals' mean angular error); the others are mIoUs."""
    return frozenset(t.name for t in tasks if t.kind == "normals")


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float], lower_is_better: Collection[str]) -> float:
    """Δm in percent: (100 / T) * sum_t (-1)^{l_t} (M_t - B_t) / B_t, l_t = 1 for lower-is-better metrics; the
    baseline is single-task full fine-tuning (MTLoRA's calculate_multi_task_performance, times 100)."""
    if set(metrics) != set(baseline):
        raise ValueError(f"metrics {sorted(metrics)} and baseline {sorted(baseline)} must name the same tasks")
    total = sum((-1.0 if task in lower_is_better else 1.0) * (metrics[task] - baseline[task]) / baseline[task]
                for task in metrics)
    return 100.0 * total / len(metrics)
