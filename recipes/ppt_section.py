"""The one PPT config section of every ViT recipe (ppt, w2s, ovor) and its conversion to the model's
TokenReductionConfig (models/ppt.py). Shared schema, not a paper: recipes/__init__.py lists it in _NOT_PAPERS."""
from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field
from timm.models.vision_transformer import VisionTransformer

from models import ppt
from recipes.base import Section


class PPTSection(Section):
    """PPT off the shelf. `r` and `blocks` have no default: they depend on the ViT's depth and token count, so every
    profile states them (and a paper's default section states its own)."""

    r: int = Field(ge=0, description="tokens removed at each compression block (prefix K/V tokens are kept)")
    blocks: tuple[int, ...] = Field(description="0-indexed blocks that compress (after attention)")
    tau: float | None = Field(None, gt=0, description="variance threshold; None = CV rule from the patch count")
    tau_cv: float = Field(1.64, gt=0, description="CV the rule uses off the shelf (7e-5 at 196 patches)")
    prop_attn: bool = Field(True, description="proportional attention for the methods whose tokens carry a size "
                            "(PPT, ToMe); EViT's never do")

    def reduction_config(self, num_patches: int, method: str = "ppt",
                         cv: float | None = None) -> ppt.TokenReductionConfig:
        """The model config of `method` (PPT, or a baseline at the same budget) for a ViT with `num_patches` patch
        tokens: tau as set, else the CV rule at `cv` (None = tau_cv, the off-the-shelf CV)."""
        cv = self.tau_cv if cv is None else cv
        tau = self.tau if self.tau is not None else ppt.tau_for_tokens(num_patches, cv)
        return ppt.TokenReductionConfig(method=method, r=self.r, blocks=tuple(self.blocks), tau=tau, tau_cv=cv,
                                        prop_attn=self.prop_attn and method in ppt.METHODS_WITH_TOKEN_SIZES)

    def check_fits(self, vit: VisionTransformer) -> None:
        """r and blocks against the ViT they compress (models/ppt.py: check_fits), named by their config keys."""
        try:
            ppt.check_fits(vit, self.reduction_config(int(vit.patch_embed.num_patches)))
        except ValueError as exc:
            raise ValueError(f"compress.{exc}") from exc


class FinetunedPPTSection(PPTSection):
    """PPT, then a short fine-tune with PPT on at its own CV (the paper's 6e-5 instead of 7e-5 at 196 patches). A
    recipe adds its `finetune` field: the training config of its own loop."""

    finetune_tau_cv: float = Field(1.52, gt=0, description="CV for fine-tuning (6e-5 at 196 patches)")

    def finetune_reduction_config(self, num_patches: int) -> ppt.TokenReductionConfig:
        return self.reduction_config(num_patches, cv=self.finetune_tau_cv)


def ppt_knobs(trc: ppt.TokenReductionConfig) -> dict[str, Any]:
    """The config as JSON-ready knobs (what the registry records); `TokenReductionConfig(**knobs)` rebuilds it."""
    return dataclasses.asdict(trc) | {"blocks": list(trc.blocks)}


def ppt_record(knobs: dict[str, Any]) -> dict[str, str]:
    """The knobs a reviewer filters PPT versions by, as flat registry tags."""
    return {"strategy": str(knobs["method"]), "r": str(knobs["r"]), "blocks": ",".join(str(b) for b in knobs["blocks"])}
