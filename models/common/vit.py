"""The one ViT factory and checkpoint loader of the vision recipes: a timm VisionTransformer built from config,
never downloaded (PPT's DeiT, the weak-to-strong student; OVOR's prompted backbone loads through the same loader).

The PPT tiny profile is a DeiT-Ti-shaped ViT (12 blocks, so PPT's blocks 3/6/9 exist) on 32x32 single-channel
images with 4x4 patches: 64 patch tokens + cls, this project's miniature. A full profile names a timm
architecture (deit_small_patch16_224) and optionally a local checkpoint file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from models.common.checks import at_least, below, non_negative, positive


@dataclass(frozen=True)
class ViTConfig:
    timm_name: str | None = None  # timm architecture for the full profile; None = the fields below
    checkpoint: str | None = None  # local weights file (safetensors or torch state dict); nothing is downloaded
    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 96
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        at_least(self, 8, "img_size", "embed_dim")
        at_least(self, 1, "patch_size", "in_chans", "depth", "num_heads")
        at_least(self, 2, "num_classes")
        positive(self, "mlp_ratio")
        non_negative(self, "drop_path_rate")
        below(self, 1, "drop_path_rate")


def build_vit(cfg: ViTConfig) -> VisionTransformer:
    num_classes = cfg.num_classes
    if cfg.timm_name is not None:
        model = timm.create_model(cfg.timm_name, pretrained=False, num_classes=num_classes,
                                  in_chans=cfg.in_chans, img_size=cfg.img_size, drop_path_rate=cfg.drop_path_rate)
    else:
        if cfg.embed_dim % cfg.num_heads:
            raise ValueError(f"model.embed_dim={cfg.embed_dim} is not divisible by model.num_heads={cfg.num_heads}")
        model = VisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=num_classes,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path_rate, class_token=True, global_pool="token",
        )
    if cfg.checkpoint is not None:
        load_vit_checkpoint(model, cfg.checkpoint)
    return model


def load_vit_checkpoint(model: nn.Module, path: str | Path, new_parameters: Sequence[str] = ()) -> None:
    """Loads a local ViT state dict (safetensors, or a torch file holding it, possibly under "model") into `model`
    in place, without the checkpoint's classification head: a pre-trained backbone meets a new task's classes.

    Every other weight must fit. `new_parameters` names the model's parameters that a plain ViT checkpoint cannot
    hold (prompts added on top of the backbone); they, and the model's own head, keep their initial values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.get("model", state).items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.") and k not in new_parameters]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the model: missing={missing} unexpected={unexpected}")


def images_to_input(images: np.ndarray | torch.Tensor, img_size: int) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) pixels in 0..255 -> (N, C, img_size, img_size) floats in [-1, 1].

    Smaller images are zero-padded around the centre rather than resized, so digits keep their stroke width
    and the border becomes the background tokens that pruning is meant to find.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h > img_size or w > img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    else:
        top, left = (img_size - h) // 2, (img_size - w) // 2
        x = F.pad(x, (left, img_size - w - left, top, img_size - h - top))
    return x / 127.5 - 1.0


def random_translate(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shifts each image by up to max_shift pixels; the cheap augmentation a ViT needs on 4k images."""
    shifts = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=generator)
    out = torch.full_like(x, -1.0)  # background value after images_to_input
    h, w = x.shape[-2:]
    for i, (dy, dx) in enumerate(shifts.tolist()):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out
