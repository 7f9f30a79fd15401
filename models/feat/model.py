"""FEAT — Few-shot Embedding Adaptation with a Transformer (Ye, Hu, Zhan, Sha, CVPR 2020, arXiv 1812.03664), and
ProtoNet, in plain PyTorch (the official code is Sha-Lab/FEAT, model/models/feat.py).

    E: ConvNet-4, 4 x [3x3 conv 64, BN, ReLU, 2x2 max-pool]; at 32 px the last feature map is 2x2, so the
       final max-pool is 2x2 (the paper's 5x5 at 84 px) -> a 64-d embedding.
    prototypes  c_n = mean of class n's support embeddings                  (N, d)
    FEAT        c^ = LN(c + Dropout_0.5(W_o softmax(Q K^T / sqrt(d)) V))    one head, no FFN, attention dropout 0.1
    logits      -||E(x_q) - c^_n||^2 / tau                                  (Euclidean)
    regulariser for every class n: S_n = its K support + Q query embeddings; the same Transformer within S_n;
                mu_n = mean of the adapted S_n; logits_reg = -||E(x) - mu_n||^2 / tau2 for every instance x
                (un-adapted, authors' issue #63); L = CE(logits) + lambda * CE(logits_reg)
ProtoNet is the same model without the adaptation (adapter "none").

The served input is one float32 array per request ("episode rows", documented in the FEAT recipe): row =
[label, pixel_0, ..., pixel_{H*W-1}], label 0..N-1 for support rows and -1 for query rows. `forward` takes that
array as a tensor and returns the (rows, N) logits of every row against the adapted prototypes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.common.checks import at_least, below, non_negative, one_of

QUERY_LABEL = -1  # label column value of a query row in the served episode layout


@dataclass(frozen=True)
class FEATConfig:
    img_size: int = 32  # images are (img_size, img_size), one channel; four 2x2 pools need at least 16
    hidden: int = 64  # ConvNet-4 channels; the embedding has this many dimensions
    adapter: str = "feat"  # feat = set-to-set Transformer; none = ProtoNet
    attn_dropout: float = 0.1  # dropout on the attention weights
    out_dropout: float = 0.5  # dropout after the output projection W_o
    num_classes_pretrain: int = 64  # classes of the pre-training head (base classes)

    def __post_init__(self) -> None:
        at_least(self, 16, "img_size")
        at_least(self, 1, "hidden")
        at_least(self, 2, "num_classes_pretrain")
        one_of(self, "adapter", ("feat", "none"))
        non_negative(self, "attn_dropout", "out_dropout")
        below(self, 1, "attn_dropout", "out_dropout")


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class ConvNet4(nn.Module):
    """(B, 1, S, S) -> (B, hidden): four conv blocks (S -> S/16) then a max-pool over what is left (2x2 at 32 px)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.blocks = nn.Sequential(conv_block(1, hidden), conv_block(hidden, hidden), conv_block(hidden, hidden),
                                    conv_block(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)  # (B, hidden, S/16, S/16)
        return torch.amax(h, dim=(2, 3))  # (B, hidden): the final max-pool over the remaining map


class SetAttention(nn.Module):
    """FEAT's set-to-set function: single-head scaled dot-product self-attention with residual + LayerNorm and no
    feed-forward sub-layer. Permutation-equivariant over the set axis: permuting the inputs permutes the outputs."""

    def __init__(self, d: int, attn_dropout: float = 0.1, out_dropout: float = 0.5) -> None:
        super().__init__()
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_k = nn.Linear(d, d, bias=False)
        self.w_v = nn.Linear(d, d, bias=False)
        std = math.sqrt(2.0 / (d + d))  # N(0, sqrt(2 / (d_model + d_k))), d_k = d
        for w in (self.w_q, self.w_k, self.w_v):
            nn.init.normal_(w.weight, mean=0.0, std=std)
        self.w_o = nn.Linear(d, d)
        nn.init.xavier_normal_(self.w_o.weight)
        self.scale = math.sqrt(d)  # attention temperature sqrt(d_k)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out_dropout = nn.Dropout(out_dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, d) — B sets of n elements
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)  # (B, n, d) each
        attn = torch.softmax(q @ k.transpose(1, 2) / self.scale, dim=-1)  # (B, n, n)
        out = self.attn_dropout(attn) @ v  # (B, n, d)
        return self.norm(x + self.out_dropout(self.w_o(out)))  # (B, n, d)


def euclidean_logits(x: torch.Tensor, centres: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., M, d), (..., N, d) -> (..., M, N): -||x_m - c_n||^2 / temperature; leading dims are separate episodes."""
    return -(x[..., :, None, :] - centres[..., None, :, :]).pow(2).sum(-1) / temperature  # exact, no sqrt in the grad


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """(S, d) embeddings with labels in 0..n_way-1 -> (n_way, d) class means."""
    one_hot = F.one_hot(support_labels, n_way).to(support.dtype)  # (S, N)
    counts = one_hot.sum(0)  # (N,)
    if bool((counts == 0).any()):
        raise ValueError(f"every class 0..{n_way - 1} needs at least one support example; counts {counts.tolist()}")
    return one_hot.T @ support / counts[:, None]


@dataclass
class EpisodeOutput:
    logits: torch.Tensor  # (Q, N) query logits against the (adapted) prototypes
    reg_logits: torch.Tensor | None  # (N * (K + Q), N) contrastive-regulariser logits, FEAT in training only


class FewShotModel(nn.Module):
    """ConvNet-4 encoder + optional FEAT adapter + the pre-training head (used only before meta-training)."""

    def __init__(self, cfg: FEATConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        # tau of the Euclidean logits: a buffer, so the served model carries the value meta-training used
        self.register_buffer("temperature", torch.tensor(64.0))
        self.encoder = ConvNet4(cfg.hidden)
        self.adapter = SetAttention(cfg.hidden, cfg.attn_dropout, cfg.out_dropout) if cfg.adapter == "feat" else None
        self.pretrain_head = nn.Linear(cfg.hidden, cfg.num_classes_pretrain)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, 1, S, S) -> (B, d)

    def adapt(self, protos: torch.Tensor) -> torch.Tensor:
        """(..., N, d) prototypes -> (..., N, d) task-adapted prototypes (identity for ProtoNet); each leading index
        is a separate episode, whose N prototypes form one set."""
        if self.adapter is None:
            return protos
        return self.adapter(protos.reshape(-1, *protos.shape[-2:])).reshape(protos.shape)

    def classify(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                 n_way: int) -> torch.Tensor:
        """Embeddings in, (Q, N) logits out: the test-time path (only the support set is transformed)."""
        return euclidean_logits(query, self.adapt(prototypes(support, support_labels, n_way)),
                                float(self.temperature))

    def episode(self, images: torch.Tensor, n_way: int, k_shot: int, n_query: int,
                temperature2: float | None = None) -> EpisodeOutput:
        """A meta-training episode: images (N*(K+Q), 1, S, S) ordered shot-major — the first N*K are the support
        (labels arange(N) repeated K times), the rest the queries (arange(N) repeated Q times)."""
        emb = self.embed(images)  # (N*(K+Q), d)
        d = emb.shape[-1]
        support, query = emb[: n_way * k_shot], emb[n_way * k_shot :]
        labels = torch.arange(n_way, device=emb.device)
        logits = self.classify(support, labels.repeat(k_shot), query, n_way)  # (N*Q, N)
        reg_logits = None
        if self.adapter is not None and self.training and temperature2 is not None:
            per_class = emb.view(k_shot + n_query, n_way, d).transpose(0, 1)  # (N, K+Q, d): S_n per class
            centres = self.adapter(per_class).mean(1)  # (N, d): mean of each adapted S_n
            instances = emb.view(k_shot + n_query, n_way, d).reshape(-1, d)  # (N*(K+Q), d) shot-major, un-adapted
            reg_logits = euclidean_logits(instances, centres, temperature2)  # (N*(K+Q), N)
        return EpisodeOutput(logits=logits, reg_logits=reg_logits)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Served path. rows: (M, 1 + S*S) = [label, pixels 0..255]; label 0..N-1 (support) or -1 (query).
        Returns (M, N) logits of every row against the adapted prototypes of the support rows."""
        labels = rows[:, 0].round().long()  # (M,)
        images = images_to_input(rows[:, 1:].reshape(-1, self.img_size, self.img_size))  # (M, 1, S, S)
        is_support = labels != QUERY_LABEL
        n_way = int(labels[is_support].max().item()) + 1 if bool(is_support.any()) else 0
        if n_way < 1 or bool(((labels < QUERY_LABEL) | (labels >= n_way)).any()):
            raise ValueError("an episode needs support rows labelled 0..N-1 (and query rows labelled -1)")
        emb = self.embed(images)  # (M, d)
        return self.classify(emb[is_support], labels[is_support], emb, n_way)


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """(B, S, S) pixels 0..255 -> (B, 1, S, S) floats in [-1, 1]."""
    if images.ndim != 3:
        raise ValueError(f"expected images shaped (B, S, S), got {tuple(images.shape)}")
    return (images.float() / 127.5 - 1.0)[:, None]
