"""OnePrompt: a frozen timm ViT with one shared set of prefix-tuning prompts and a linear head over all classes.

OnePrompt (Huang et al., OVOR, ICLR 2024, arXiv 2402.04129; official code jpmorganchase/ovor, models/zoo.py) prepends
learnable key and value vectors to the attention of a few chosen blocks: a G-prompt at the first blocks and an E-prompt
at the next ones, each of length L = L/2 key vectors + L/2 value vectors, shared by every task (no pool, no query pass).
timm >= 0.9 fuses attention, so the prompted blocks get `PromptedAttention`, whose forward re-implements timm's and
concatenates the prefix to K and V before scaled-dot-product attention. Only those blocks change class; the rest stay
timm's.

The prompts live in the attention modules they feed (`backbone.blocks.<i>.attn.prompt`), so they are saved and
loaded with the model, and models/ppt.py can carry them through its own attention (`prefix_kv`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from models.common.checks import at_least, non_negative, one_of, positive
from models.common.vit import load_vit_checkpoint


@dataclass(frozen=True)
class BackboneConfig:
    """The frozen ViT (this project's miniature: a tiny timm VisionTransformer pre-trained in-project)."""

    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    embed_dim: int = 64
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # Local pre-trained backbone weights (safetensors or torch state dict); set = no in-project pre-training.
    # Nothing is downloaded.
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        at_least(self, 8, "img_size", "embed_dim")
        at_least(self, 1, "patch_size", "in_chans", "depth", "num_heads")
        positive(self, "mlp_ratio")


@dataclass(frozen=True)
class PromptConfig:
    """Prefix lengths count key + value vectors (the paper's G length 10 = 5 keys + 5 values)."""

    g_length: int = 4  # G-prompt length (keys + values), even
    g_blocks: tuple[int, ...] = (0, 1)
    e_length: int = 8  # E-prompt length (keys + values), even
    e_blocks: tuple[int, ...] = (2, 3)
    init: str = "uniform"  # uniform | normal; CODA-P/OVOR use uniform [0, 1)

    def __post_init__(self) -> None:
        non_negative(self, "g_length", "e_length")
        one_of(self, "init", ("uniform", "normal"))
        if self.g_length % 2 or self.e_length % 2:
            raise ValueError(f"g_length and e_length count keys + values and must be even, got "
                             f"{self.g_length} and {self.e_length}")
        if set(self.g_blocks) & set(self.e_blocks):
            raise ValueError(f"g_blocks {self.g_blocks} and e_blocks {self.e_blocks} overlap")

    def lengths(self) -> dict[int, int]:
        """block index -> prompt length (keys + values)."""
        out = {b: self.g_length for b in self.g_blocks if self.g_length}
        out |= {b: self.e_length for b in self.e_blocks if self.e_length}
        return dict(sorted(out.items()))


class PromptedAttention(Attention):
    """timm Attention with a learnable prefix: `prompt` (L, C) = L/2 key rows then L/2 value rows.

    The prefix is in the K/V space (after the qkv projection), split over heads like the keys, as in CODA-P's
    and OVOR's `vit.py`. `prompt_enabled = False` runs the plain backbone (pre-training, the query pass of a
    two-pass method).
    """

    prompt: nn.Parameter
    prompt_enabled: bool

    def prefix_kv(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, H, L/2, hd) prefix keys and values, or None when the prompt is switched off."""
        if not self.prompt_enabled:
            return None
        half = self.prompt.shape[0] // 2
        def split(p: torch.Tensor) -> torch.Tensor:  # (L/2, C) -> (B, H, L/2, hd)
            return p.reshape(half, self.num_heads, self.head_dim).permute(1, 0, 2)[None].expand(batch_size, -1, -1, -1)
        return split(self.prompt[:half]), split(self.prompt[half:])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("prompted attention takes no attention mask (a ViT has none)")
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        prefix = self.prefix_kv(B)
        if prefix is not None:
            k = torch.cat([prefix[0], k], dim=2)  # (B, H, L/2 + N, hd)
            v = torch.cat([prefix[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, N, H * hd)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))  # (B, N, C)


def init_prompt(length: int, dim: int, init: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh (length, dim) prompt: uniform [0, 1) as CODA-P/OVOR, or N(0, 0.02^2)."""
    if init == "uniform":
        return torch.rand(length, dim, generator=generator)
    return torch.randn(length, dim, generator=generator) * 0.02


def add_prompts(backbone: VisionTransformer, cfg: PromptConfig, generator: torch.Generator | None = None) -> None:
    """Give the chosen blocks a PromptedAttention with a fresh prompt (in place; other blocks untouched)."""
    depth = len(backbone.blocks)
    for block, length in cfg.lengths().items():
        if block >= depth:
            raise ValueError(f"prompt block {block} does not exist in a ViT with {depth} blocks")
        attn = backbone.blocks[block].attn
        if type(attn) is not Attention:
            raise TypeError(f"block {block} has {type(attn).__name__}; prompts go into timm's Attention")
        attn.__class__ = PromptedAttention
        attn.prompt = nn.Parameter(init_prompt(length, attn.attn_dim, cfg.init, generator))
        attn.prompt_enabled = True


class OnePromptViT(nn.Module):
    """Frozen ViT + OnePrompt prefixes + Linear(D -> total classes). forward gives logits over all classes."""

    def __init__(self, backbone_cfg: BackboneConfig, prompt_cfg: PromptConfig, num_classes: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if backbone_cfg.embed_dim % backbone_cfg.num_heads:
            raise ValueError(f"embed_dim {backbone_cfg.embed_dim} is not divisible by num_heads "
                             f"{backbone_cfg.num_heads}")
        c = backbone_cfg
        self.backbone = VisionTransformer(
            img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=0,
            embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
            class_token=True, global_pool="token",
        )
        add_prompts(self.backbone, prompt_cfg, generator)
        self.head = nn.Linear(c.embed_dim, num_classes)

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [m.prompt for m in self.backbone.modules() if isinstance(m, PromptedAttention)]

    def prompted_blocks(self) -> list[int]:
        return [i for i, b in enumerate(self.backbone.blocks) if isinstance(b.attn, PromptedAttention)]

    def load_backbone(self, path: str) -> None:
        """Pre-trained plain-ViT weights (the paper's ImageNet ViT-B/16) into the backbone; the prompts, which no
        plain ViT has, keep their initial values."""
        load_vit_checkpoint(self.backbone, path, [f"blocks.{i}.attn.prompt" for i in self.prompted_blocks()])

    def freeze_backbone(self) -> None:
        """Every backbone weight frozen; prompts and head train."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for p in self.prompt_parameters():
            p.requires_grad_(True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D): the final-LayerNorm cls token of the prompted backbone."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


@contextmanager
def prompts_disabled(model: nn.Module) -> Iterator[None]:
    """Run the plain backbone: every PromptedAttention skips its prefix inside the block."""
    modules = [m for m in model.modules() if isinstance(m, PromptedAttention)]
    before = [m.prompt_enabled for m in modules]
    for m in modules:
        m.prompt_enabled = False
    try:
        yield
    finally:
        for m, b in zip(modules, before):
            m.prompt_enabled = b


class TwoPassPromptViT(nn.Module):
    """The cost model of L2P / DualPrompt / CODA-P at inference: a query pass of the plain backbone, then the
    prompted pass (the query selects the prompt; here the query's output is only computed, its cost is what
    matters). Used to count MACs for the one-pass check (the paper's abstract: OnePrompt needs one ViT
    pass at inference), never trained."""

    def __init__(self, model: OnePromptViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with prompts_disabled(self.model):
            query = self.model.features(x)  # (B, D) the query features of the pool methods
        return self.model(x) + 0.0 * query.sum()
