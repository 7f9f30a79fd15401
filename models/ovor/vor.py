"""Virtual Outlier Regularization (OVOR, arXiv 2402.04129; official code jpmorganchase/ovor, learners/ood.py): masked
cross-entropy, energy, NPOS outlier synthesis and the energy-threshold Huber loss. Pure tensor functions; the official
code's faiss kNN is torch.cdist + topk here, and the feature dimension and device come from the inputs.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

OutlierCenter = Literal["boundary", "origin"]


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, task_classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the current task's logits only (OVOR/CODA-P `NormalNN`).

    logits: (B, K) over all classes; targets: (B,) class ids, all in task_classes; task_classes: (T,) class ids.
    The official code sets earlier classes' logits to -inf and slices future ones off: the same as a softmax over
    the task's T columns, which is what this computes (mean over the batch).
    """
    lookup = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
    lookup[task_classes] = torch.arange(len(task_classes), device=logits.device)
    local = lookup[targets]  # (B,) index within the task
    if (local < 0).any():
        raise ValueError("masked_cross_entropy: a target is not a class of the current task")
    return F.cross_entropy(logits[:, task_classes], local)


def energy(logits: torch.Tensor, task_classes: torch.Tensor) -> torch.Tensor:
    """E(z) = -logsumexp over the current task's logits. (B, K) -> (B,)."""
    return -torch.logsumexp(logits[:, task_classes], dim=-1)


def vor_loss(energy_id: torch.Tensor, energy_ood: torch.Tensor, tau_id: float, tau_ood: float,
             weight: float = 0.1) -> torch.Tensor:
    """lambda * [Huber(relu(E_id - tau_id), 0) + Huber(relu(tau_ood - E_ood), 0)], Huber delta 1, mean reduction.

    ID energies above tau_id and outlier energies below tau_ood are penalised; everything else costs nothing.
    """
    zero_id, zero_ood = torch.zeros_like(energy_id), torch.zeros_like(energy_ood)
    return weight * (F.huber_loss(F.relu(energy_id - tau_id), zero_id)
                     + F.huber_loss(F.relu(tau_ood - energy_ood), zero_ood))


def kth_nn_distance(queries: torch.Tensor, index: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """Squared L2 distance of each query (Q, D) to its k-th nearest row of `index` (M, D) -> (Q,).

    exclude_self: the queries are the index itself, so each row's zero distance to itself is skipped.
    """
    distances = torch.cdist(queries, index).pow(2)  # (Q, M)
    kk = k + 1 if exclude_self else k
    if kk > index.shape[0]:
        raise ValueError(f"k={k} needs more than {index.shape[0]} index points")
    return distances.topk(kk, dim=-1, largest=False).values[:, -1]


def boundary_points(features: torch.Tensor, k: int, select: int) -> torch.Tensor:
    """Indices of the `select` ID features with the largest k-th-NN distance among the L2-normalised features."""
    normed = F.normalize(features, dim=-1)
    return kth_nn_distance(normed, normed, k, exclude_self=True).topk(min(select, len(features))).indices


def synthesize_outliers(features: torch.Tensor, num_outliers: int, k: int, select: int, sample_from: int,
                        cov: float, center: OutlierCenter, generator: torch.Generator | None = None) -> torch.Tensor:
    """NPOS virtual outliers for one task's ID features (N, D) -> (num_outliers, D), in the features' space.

    boundary (the paper / NPOS, default): L2-normalise; take the `select` boundary points; draw `sample_from`
      offsets cov * N(0, I) around each of them in the normalised space; keep the `num_outliers` candidates with
      the largest k-th-NN distance to the ID set. ASSUMED (the paper does not say how normalised outliers meet the
      head, which sees un-normalised features): each kept candidate is scaled back by its boundary point's norm.
    origin (the official code, learners/ood.py): `sample_from` offsets cov * N(0, I) around the origin of the raw
      feature space, the same offsets repeated for every boundary point, scored against the normalised ID set;
      the boundary points only fix the number of copies.
    """
    n, dim = features.shape
    normed = F.normalize(features, dim=-1)
    boundary = boundary_points(features, k, select)  # (S,)
    noise = torch.randn(len(boundary) if center == "boundary" else 1, sample_from, dim, generator=generator)
    noise = noise.to(features.device, features.dtype) * cov
    if center == "boundary":
        candidates = (normed[boundary][:, None, :] + noise).reshape(-1, dim)  # (S * sample_from, D)
        scale = features[boundary].norm(dim=-1).repeat_interleave(sample_from)  # (S * sample_from,)
    elif center == "origin":
        candidates = noise.expand(len(boundary), -1, -1).reshape(-1, dim)  # the same offsets S times
        scale = torch.ones(len(candidates), device=features.device, dtype=features.dtype)
    else:
        raise ValueError(f"outlier center must be 'boundary' or 'origin', got {center!r}")
    score = kth_nn_distance(candidates, normed, k)  # (S * sample_from,)
    keep = score.topk(min(num_outliers, len(candidates))).indices
    return candidates[keep] * scale[keep, None]
