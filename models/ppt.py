"""Token reduction for timm Vision Transformers: PPT, with ToMe and EViT as baselines at equal budget.

PPT (Wu et al., arXiv 2310.01812) decides per image and per compression block whether the tokens are better *pooled*
(ToMe's bipartite soft matching, when importance is flat and the redundancy is duplication) or *pruned* (drop the least
significant tokens, when importance is peaked and the redundancy is inattention). The decision is the variance of the
normalised significance scores against a threshold tau (official code: xjwu1024/PPT, ppt_deit.py).

The three methods share one patched Block and one patched Attention; they differ only in the reduce-tokens
strategy called between the attention residual and the MLP (`prune_or_pool_tokens`, `merge_tokens`,
`prune_and_fuse_tokens`). Patching swaps the classes of the model's existing modules in place, as ToMe does, so
no parameter is added and the state dict is unchanged; `uncompress` swaps them back.

PPT and ToMe tokens carry a size (the number of original patches a token stands for: a merge sums them) and every
patched block applies proportional attention (logits + log(size_j)), as both official codes do for DeiT. EViT's
tokens carry none: its fused token is one token to plain softmax attention, as in the official EViT code
(youweiliang/evit, evit.py), which has no proportional attention. The sizes live on a small state object shared by
the model and its blocks.

Prefix attention (prefix/prompt tuning): an Attention subclass that defines `prefix_kv(batch_size)` returning
extra (B, H, P, hd) keys and values, or None, keeps them through the patch. Its class is combined with
TokenReductionAttention, the P prefix entries join K and V in every block (never as tokens: they are not scored,
pruned, merged or sized), and the cls row handed to the strategies covers the image tokens only.

Not compatible with gradient checkpointing: the token sizes are carried from block to block outside the
autograd graph, so a recomputed segment would read the sizes of the end of the forward pass.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Attention, resolve_self_attn_mask
from timm.models.vision_transformer import Block, VisionTransformer

__all__ = [
    "METHODS", "METHODS_WITH_TOKEN_SIZES", "TokenReductionConfig", "tau_for_tokens", "compress", "uncompress",
    "current_config", "reduction_stats", "reset_reduction_stats", "significance_scores", "bipartite_soft_matching",
    "merge_weighted_by_size", "prune_lowest_scores", "keep_top_and_fuse_rest", "prune_or_pool_tokens",
    "merge_tokens", "prune_and_fuse_tokens", "TokenReductionBlock", "TokenReductionAttention",
]

METHODS = ("ppt", "tome", "evit")
METHODS_WITH_TOKEN_SIZES = ("ppt", "tome")  # EViT fuses without a size, so proportional attention has nothing to use


@dataclass(frozen=True)
class TokenReductionConfig:
    method: str                 # "ppt" | "tome" | "evit"
    r: int                      # tokens removed at each reduction block (same meaning for all three methods)
    blocks: tuple[int, ...]     # 0-indexed reduction blocks; () = every block (ToMe's native schedule)
    tau: float | None = None    # PPT variance threshold; None = CV rule on the model's patch count
    tau_cv: float = 1.64        # CV for the rule: 7e-5 at 196 patches <=> 1.64, 6e-5 <=> 1.52
    prop_attn: bool = True      # proportional attention (logits + log(size)) in every block; PPT and ToMe only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.r < 0:
            raise ValueError(f"r must be >= 0, got {self.r}")
        if any(b < 0 for b in self.blocks):
            raise ValueError(f"blocks must be 0-indexed block numbers, got {self.blocks}")
        if self.tau is not None and not self.tau >= 0:
            raise ValueError(f"tau must be >= 0 (or None for the CV rule), got {self.tau}")
        if not self.tau_cv > 0:
            raise ValueError(f"tau_cv must be > 0, got {self.tau_cv}")
        if self.prop_attn and self.method not in METHODS_WITH_TOKEN_SIZES:
            raise ValueError(f"prop_attn must be False for method {self.method!r}: its tokens carry no size "
                             "(EViT's fused token is one token to plain softmax attention)")
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))


def tau_for_tokens(num_patches: int, cv: float = 1.64) -> float:
    """PPT's variance threshold for a model with `num_patches` patch tokens (cls not counted).

    The scores are normalised to sum to 1 over the N'-1 = num_patches patch tokens, so their mean is
    1/num_patches and a variance threshold is a coefficient-of-variation threshold in disguise:
    tau' = (CV / (N' - 1))**2. The official tau = 7e-5 at 196 patches is CV ~= 1.64.
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    return (cv / num_patches) ** 2


# ----------------------------------------------------------------------------------------------------------------
# Building blocks (pure tensor functions; x is (B, N, C) with the cls token at index 0, size is (B, N, 1))


class AttentionInfo(NamedTuple):
    keys: torch.Tensor                   # (B, H, N, hd) after k_norm: what the tokens were compared by
    values: torch.Tensor                 # (B, H, N, hd)
    cls_attention: torch.Tensor | None   # (B, H, N) attention probabilities of the cls query row


def significance_scores(cls_attention: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """s_j = (sum_h A^h[cls, j]) * ||v_j||_2 over patch tokens, normalised to sum to 1 per image.

    cls_attention: (B, H, N); values: (B, H, N, hd). Returns (B, N-1), patch tokens only.
    """
    B, H, N, hd = values.shape
    value_norm = values.transpose(1, 2).reshape(B, N, H * hd).norm(dim=-1)  # (B, N), heads concatenated
    scores = (cls_attention.sum(dim=1) * value_norm)[:, 1:]  # (B, N-1)
    return scores / scores.sum(dim=-1, keepdim=True)


def removable_tokens(tokens: int) -> int:
    """Most tokens one reduction block removes from a sequence of `tokens` (cls included): half the patch tokens.
    The cls token is not a candidate, and in bipartite matching side A must keep at least as many as it gives."""
    return (tokens - 1) // 2


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Callable[..., torch.Tensor]:
    """ToMe's matching: returns merge(x, reduce="sum") that takes (B, N, C) to (B, N - r, C).

    metric: (B, N, c). Tokens alternate into A (even index, holds cls) and B (odd); each A token picks its most
    cosine-similar B token and the r best-matched A tokens are folded into their partners. The output is the
    unmerged A tokens in their original order (so cls stays at index 0) followed by the B tokens.
    """
    B, N, _ = metric.shape
    r = min(r, removable_tokens(N))
    with torch.no_grad():  # the matching is a discrete choice; gradients flow through merge() only
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]  # (B, Na, c), (B, Nb, c)
        similarity = a @ b.transpose(-1, -2)  # (B, Na, Nb)
        similarity[:, 0, :] = -math.inf  # cls never merges
        best_similarity, best_partner = similarity.max(dim=-1)  # (B, Na)
        order = best_similarity.argsort(dim=-1, descending=True)  # (B, Na)
        merged_a = order[:, :r]  # (B, r)
        kept_a = order[:, r:].sort(dim=-1).values  # (B, Na - r); sorted, so cls (index 0) comes first
        partner = best_partner.gather(1, merged_a)  # (B, r) index into B

    def merge(x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        C = x.shape[-1]
        src, dst = x[:, ::2], x[:, 1::2]  # (B, Na, C), (B, Nb, C)
        kept = src.gather(1, kept_a[..., None].expand(-1, -1, C))  # (B, Na - r, C)
        moving = src.gather(1, merged_a[..., None].expand(-1, -1, C))  # (B, r, C)
        dst = dst.scatter_reduce(1, partner[..., None].expand(-1, -1, C), moving, reduce=reduce)  # (B, Nb, C)
        return torch.cat([kept, dst], dim=1)  # (B, N - r, C)

    return merge


def merge_weighted_by_size(merge: Callable[..., torch.Tensor], x: torch.Tensor,
                           size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a merge so that a merged token is the size-weighted mean of its parts and its size their sum."""
    x = merge(x * size, reduce="sum")  # (B, N - r, C)
    size = merge(size, reduce="sum")  # (B, N - r, 1)
    return x / size, size


def prune_lowest_scores(x: torch.Tensor, size: torch.Tensor, scores: torch.Tensor,
                        r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the r patch tokens with the lowest scores; cls and the kept tokens keep their order and sizes.

    scores: (B, N-1) over patch tokens only, so cls cannot be dropped.
    """
    B, N, C = x.shape
    keep = scores.topk(N - 1 - r, dim=-1).indices.sort(dim=-1).values + 1  # (B, N-1-r) token indices
    keep = torch.cat([keep.new_zeros(B, 1), keep], dim=1)  # (B, N-r), cls first
    x = x.gather(1, keep[..., None].expand(-1, -1, C))
    size = size.gather(1, keep[..., None])
    return x, size


def keep_top_and_fuse_rest(x: torch.Tensor, cls_attention: torch.Tensor, r: int) -> torch.Tensor:
    """EViT: keep the N-2-r most attended patch tokens, fuse the other r+1 into one token (net r fewer).

    cls_attention: (B, N-1) cls attention over patch tokens, averaged over heads. The fused token is the sum of
    the dropped tokens weighted by their cls attention, not renormalised, and it carries no size: from here on it is
    one token like any other, kept or fused again by the next reduction (youweiliang/evit, evit.py). The kept tokens
    stay in their original order (EViT orders them by attention; attention and the MLP do not see the order).
    """
    B, N, C = x.shape
    order = cls_attention.argsort(dim=-1, descending=True)  # (B, N-1)
    keep = order[:, : N - 2 - r].sort(dim=-1).values + 1  # (B, N-2-r) token indices
    drop = order[:, N - 2 - r:] + 1  # (B, r+1)
    kept_x = x.gather(1, keep[..., None].expand(-1, -1, C))  # (B, N-2-r, C)
    dropped_x = x.gather(1, drop[..., None].expand(-1, -1, C))  # (B, r+1, C)
    weight = cls_attention.gather(1, drop - 1)[..., None]  # (B, r+1, 1)
    fused_x = (dropped_x * weight).sum(dim=1, keepdim=True)  # (B, 1, C)
    return torch.cat([x[:, :1], kept_x, fused_x], dim=1)  # (B, N-r, C)


# ----------------------------------------------------------------------------------------------------------------
# Reduce-tokens strategies: (x, size, attention info, r, tau) -> (x, size, number of images pooled). size is (B, N, 1)
# for the methods in METHODS_WITH_TOKEN_SIZES and None for EViT.


def merge_tokens(x: torch.Tensor, size: torch.Tensor, info: AttentionInfo, r: int,
                 tau: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ToMe: every image pools, matched on the keys averaged over heads."""
    x, size = merge_weighted_by_size(bipartite_soft_matching(info.keys.mean(dim=1), r), x, size)
    return x, size, x.shape[0]


def prune_and_fuse_tokens(x: torch.Tensor, size: None, info: AttentionInfo, r: int,
                          tau: float) -> tuple[torch.Tensor, None, int]:
    """EViT: every image prunes by cls attention averaged over heads, the dropped tokens fused into one (no size)."""
    return keep_top_and_fuse_rest(x, info.cls_attention[:, :, 1:].mean(dim=1), r), None, 0


def prune_or_pool_tokens(x: torch.Tensor, size: torch.Tensor, info: AttentionInfo, r: int,
                         tau: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """PPT: per image, pool (score variance < tau) or prune (variance >= tau); both leave N - r tokens."""
    scores = significance_scores(info.cls_attention, info.values)  # (B, N-1)
    pool = scores.var(dim=-1) < tau  # (B,) unbiased variance, as torch.var in the official code
    metric = info.keys.mean(dim=1)  # (B, N, hd)
    n_pool = int(pool.sum())
    if n_pool == x.shape[0]:
        return (*merge_weighted_by_size(bipartite_soft_matching(metric, r), x, size), n_pool)
    if n_pool == 0:
        return (*prune_lowest_scores(x, size, scores, r), 0)
    pool_idx = pool.nonzero().squeeze(1)  # (Bp,)
    prune_idx = (~pool).nonzero().squeeze(1)  # (B - Bp,)
    x_pool, size_pool = merge_weighted_by_size(bipartite_soft_matching(metric[pool_idx], r),
                                               x[pool_idx], size[pool_idx])
    x_prune, size_prune = prune_lowest_scores(x[prune_idx], size[prune_idx], scores[prune_idx], r)
    restore = torch.cat([pool_idx, prune_idx]).argsort()  # back to the batch order
    x = torch.cat([x_pool, x_prune])[restore]  # (B, N - r, C)
    size = torch.cat([size_pool, size_prune])[restore]  # (B, N - r, 1)
    return x, size, n_pool


ReduceTokens = Callable[[torch.Tensor, torch.Tensor | None, AttentionInfo, int, float],
                        tuple[torch.Tensor, torch.Tensor | None, int]]

# method -> (strategy, whether it needs the cls attention row, which forces the explicit attention path)
_STRATEGIES: dict[str, tuple[ReduceTokens, bool]] = {
    "ppt": (prune_or_pool_tokens, True),
    "tome": (merge_tokens, False),
    "evit": (prune_and_fuse_tokens, True),
}


# ----------------------------------------------------------------------------------------------------------------
# Patched timm modules


@dataclass
class _BlockStats:
    tokens_in: int = 0
    tokens_out: int = 0
    pooled_images: int = 0
    pruned_images: int = 0


@dataclass(eq=False)
class _TokenReductionState:
    """Shared by the model and its blocks; plain attributes, so nothing reaches the state dict."""
    config: TokenReductionConfig
    tau: float
    reduction_blocks: frozenset[int]
    size: torch.Tensor | None = None  # (B, N, 1) after the latest block; None = every token is one patch, or EViT
    stats: dict[int, _BlockStats] = field(default_factory=dict)


class TokenReductionAttention(Attention):
    """timm Attention with proportional attention that also hands back keys, values and the cls attention row.

    timm's forward uses fused SDPA, which never materialises the attention probabilities; a reduction block needs
    the cls row of them, so it takes the explicit path. Other blocks keep SDPA (with log(size) as an additive
    mask), because the explicit (B, H, N, N) matrix is the slow part of attention on every device.
    """

    _base_attention: type[Attention] = Attention  # the class `uncompress` restores

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, need_cls_attention: bool = False) -> tuple[torch.Tensor, AttentionInfo]:
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
        q, k = self.q_norm(q), self.k_norm(k)
        prefix_kv = getattr(self, "prefix_kv", None)
        prefix = prefix_kv(B) if prefix_kv is not None else None
        P = 0 if prefix is None else prefix[0].shape[2]
        k_all = k if prefix is None else torch.cat([prefix[0], k], dim=2)  # (B, H, P + N, hd)
        v_all = v if prefix is None else torch.cat([prefix[1], v], dim=2)

        bias = None
        if attn_mask is not None or is_causal:
            bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)
        if size is not None:
            log_size = size.log()[:, None, None, :, 0].to(q.dtype)  # (B, 1, 1, N)
            bias = log_size if bias is None else bias + log_size
        if bias is not None and P:
            bias = F.pad(bias, (P, 0))  # prefix keys: no mask, size 1 (log 1 = 0)

        cls_attention = None
        if need_cls_attention or not self.fused_attn:
            logits = (q * self.scale) @ k_all.transpose(-2, -1)  # (B, H, N, P + N)
            if bias is not None:
                logits = logits + bias
            probs = logits.softmax(dim=-1)
            # scored before dropout so that the prune/pool decision does not depend on dropout noise
            cls_attention = probs[:, :, 0, P:]  # (B, H, N): the image tokens' columns
            out = self.attn_drop(probs) @ v_all  # (B, H, N, hd)
        else:
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias,
                                                 dropout_p=self.attn_drop.p if self.training else 0.0)

        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, N, H * hd)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        out = self.proj_drop(self.proj(out))  # (B, N, C)
        return out, AttentionInfo(keys=k, values=v, cls_attention=cls_attention)


class TokenReductionBlock(Block):
    """timm Block that reduces tokens between the attention residual and the MLP when it is a reduction block."""

    _token_reduction: _TokenReductionState
    _block_index: int

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        state = self._token_reduction
        cfg = state.config
        if self._block_index == 0:
            state.size = None  # a new sequence starts: every token is one patch

        B, N, _ = x.shape
        r = 0
        if self._block_index in state.reduction_blocks:
            r = min(cfg.r, removable_tokens(N))
        reduce_tokens, needs_cls_attention = _STRATEGIES[cfg.method]

        x_attn, info = self.attn(self.norm1(x), size=state.size if cfg.prop_attn else None, attn_mask=attn_mask,
                                 is_causal=is_causal, need_cls_attention=r > 0 and needs_cls_attention)
        x = x + self.drop_path1(self.ls1(x_attn))  # (B, N, C)

        if self._block_index in state.reduction_blocks:
            stats = state.stats.setdefault(self._block_index, _BlockStats())
            if r > 0:
                size = state.size
                if size is None and cfg.method in METHODS_WITH_TOKEN_SIZES:
                    size = x.new_ones(B, N, 1)
                x, state.size, n_pooled = reduce_tokens(x, size, info, r, state.tau)  # (B, N - r, C)
                stats.pooled_images += n_pooled
                stats.pruned_images += B - n_pooled
            stats.tokens_in, stats.tokens_out = N, x.shape[1]

        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def _check_blocks_exist(cfg: TokenReductionConfig, depth: int) -> None:
    missing = [b for b in cfg.blocks if b >= depth]
    if missing:
        raise ValueError(f"blocks {missing} do not exist in a model with {depth} blocks")


def check_fits(model: VisionTransformer, cfg: TokenReductionConfig) -> None:
    """Raises ValueError, naming the field and its bound, when `cfg` asks `model` for what it does not have: a
    reduction block beyond its depth, or an r its first reduction block cannot remove in full. Later blocks remove
    r capped at `removable_tokens` of what reaches them, ToMe's schedule (r=50 at blocks 3/6/9 of DeiT-S removes 50,
    50, 48), so only the first block bounds r. `compress` itself caps r silently: it must rebuild recorded models."""
    _check_blocks_exist(cfg, len(model.blocks))
    tokens = int(model.patch_embed.num_patches) + 1  # + cls; nothing is removed before the first reduction block
    first = min(cfg.blocks, default=0)
    if cfg.r > removable_tokens(tokens):
        raise ValueError(f"r={cfg.r} exceeds {removable_tokens(tokens)}, the most tokens block {first} can remove "
                         f"({tokens} tokens enter it, cls included; a block removes at most half the patch tokens)")


def compress(model: VisionTransformer, cfg: TokenReductionConfig,
             calib: torch.Tensor | None = None) -> VisionTransformer:
    """Patch `model` in place for token reduction and return it; calling again re-configures it.

    calib: optional example batch (B, C, H, W). When given, one no-grad forward runs right after patching so a
    schedule that does not fit the model fails here rather than in the middle of a pipeline; the reduction
    statistics are reset afterwards.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"compress expects a timm VisionTransformer, got {type(model).__name__}")
    if model.cls_token is None or model.num_prefix_tokens != 1:
        raise ValueError("token reduction needs exactly one prefix token, the cls token "
                         f"(cls_token={'yes' if model.cls_token is not None else 'no'}, "
                         f"num_prefix_tokens={model.num_prefix_tokens})")
    depth = len(model.blocks)
    _check_blocks_exist(cfg, depth)
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, TokenReductionBlock) or _reduction_attention_class(type(blk.attn)) is None:
            raise TypeError(f"block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; only timm's "
                            "Block with Attention (or an Attention subclass with prefix_kv) can be patched")

    # One tau for all blocks, rescaled only for the model's resolution: the official threshold is a single
    # constant for every compression block, and the rising score variance with depth (so deep blocks prune
    # more) is the behaviour it is tuned on. Rescaling per block by the entering token count would remove it.
    num_patches = int(model.patch_embed.num_patches)
    tau = cfg.tau if cfg.tau is not None else tau_for_tokens(num_patches, cfg.tau_cv)
    reduction_blocks = frozenset(cfg.blocks) if cfg.blocks else frozenset(range(depth))
    state = _TokenReductionState(config=cfg, tau=float(tau), reduction_blocks=reduction_blocks)
    state.stats = {b: _BlockStats() for b in sorted(reduction_blocks)}

    model._token_reduction = state
    for i, blk in enumerate(model.blocks):
        blk.__class__ = TokenReductionBlock
        blk.attn.__class__ = _reduction_attention_class(type(blk.attn))
        blk._token_reduction = state
        blk._block_index = i

    if calib is not None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(calib)
        model.train(was_training)
        reset_reduction_stats(model)
    return model


def uncompress(model: VisionTransformer) -> VisionTransformer:
    """Undo `compress` in place (back to timm's Block and Attention) and return the model."""
    for blk in model.blocks:
        if isinstance(blk, TokenReductionBlock):
            blk.__class__ = Block
            del blk._token_reduction, blk._block_index
        if isinstance(blk.attn, TokenReductionAttention):
            blk.attn.__class__ = type(blk.attn)._base_attention
    if hasattr(model, "_token_reduction"):
        del model._token_reduction
    return model


_PREFIX_CLASSES: dict[type, type] = {}


def _reduction_attention_class(cls: type) -> type | None:
    """The patched class for an attention class: TokenReductionAttention for timm's Attention, a combined class
    (TokenReductionAttention's forward, the original's prefix_kv) for an Attention subclass with prefix K/V, the
    class itself when already patched; None when the class cannot be patched."""
    if issubclass(cls, TokenReductionAttention):
        return cls
    if cls is Attention:
        return TokenReductionAttention
    if issubclass(cls, Attention) and callable(getattr(cls, "prefix_kv", None)):
        if cls not in _PREFIX_CLASSES:
            _PREFIX_CLASSES[cls] = type(f"TokenReduction{cls.__name__}", (TokenReductionAttention, cls),
                                        {"_base_attention": cls, "__module__": __name__})
        return _PREFIX_CLASSES[cls]
    return None


def _state(model: VisionTransformer) -> _TokenReductionState:
    state = getattr(model, "_token_reduction", None)
    if state is None:
        raise ValueError("model is not compressed (call models.ppt.compress first)")
    return state


def current_config(model: VisionTransformer) -> TokenReductionConfig | None:
    """The configuration the model is patched with (tau resolved), or None for an uncompressed model."""
    state = getattr(model, "_token_reduction", None)
    if state is None:
        return None
    return dataclasses.replace(state.config, tau=state.tau)


def reduction_stats(model: VisionTransformer) -> list[dict]:
    """Per reduction block, accumulated since the last reset: token counts and how many images pooled/pruned."""
    rows = []
    for block, s in sorted(_state(model).stats.items()):
        seen = s.pooled_images + s.pruned_images
        rows.append({"block": block, "tokens_in": s.tokens_in, "tokens_out": s.tokens_out,
                     "pooled_images": s.pooled_images, "pruned_images": s.pruned_images,
                     "pool_fraction": s.pooled_images / seen if seen else math.nan})
    return rows


def reset_reduction_stats(model: VisionTransformer) -> None:
    state = _state(model)
    state.stats = {b: _BlockStats() for b in sorted(state.reduction_blocks)}
