"""Pure training and evaluation loops of FEAT / ProtoNet: pre-training as a many-way classifier on the base
classes until ProtoNet accuracy on the val classes stops rising (best-val checkpoint), episodic meta-training
(best-val checkpoint), and episodic testing: every model is scored on the same sampled episodes, one accuracy per
episode, with the paper's 95 % half-width (1.96·std/√n over episodes) beside the mean."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.common.checks import at_least, at_most, non_negative, positive
from models.common.reporting import Reporter
from models.feat.model import FewShotModel, euclidean_logits


VAL_QUERY = 15  # queries per class in a pre-training val episode (pretrain.py: 16-way 1-shot, 15 queries)


@dataclass(frozen=True)
class PretrainConfig:
    max_epochs: int = 200  # pretrain.py's max_epoch; the plateau (patience) ends it sooner
    patience: int = 3  # stop after this many epochs without a new best val accuracy (the val plateau)
    batch_size: int = 128
    lr: float = 1e-3  # Adam (pretrain.py's optimiser for ConvNet)
    weight_decay: float = 5e-4
    val_way: int = 16  # model selection: val_way-way 1-shot ProtoNet accuracy on val
    val_episodes: int = 200

    def __post_init__(self) -> None:
        non_negative(self, "max_epochs", "weight_decay")
        at_least(self, 1, "patience", "batch_size", "val_episodes")
        at_least(self, 2, "val_way")
        positive(self, "lr")


@dataclass(frozen=True)
class MetaTrainConfig:
    shot: int = 1
    way: int = 5
    query: int = 15  # queries per class in a training episode
    epochs: int = 20
    episodes_per_epoch: int = 100
    lr: float = 1e-4  # Adam lr of the encoder
    lr_mul: float = 10.0  # the Transformer's lr is lr * lr_mul
    step_size: int = 20  # StepLR step in epochs
    gamma: float = 0.5
    balance: float = 1.0  # lambda: weight of the contrastive regulariser (0 = ablation)
    temperature: float = 64.0  # tau of the main logits
    temperature2: float = 16.0  # tau2 of the regulariser logits
    val_episodes: int = 200  # val episodes per epoch (best-val checkpoint)
    val_query: int = 15  # queries per class in a val episode

    def __post_init__(self) -> None:
        at_least(self, 1, "shot", "query", "epochs", "episodes_per_epoch", "step_size", "val_episodes", "val_query")
        at_least(self, 2, "way")
        positive(self, "lr", "lr_mul", "gamma", "temperature", "temperature2")
        at_most(self, 1, "gamma")
        non_negative(self, "balance")


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, 1, S, S) float in [-1, 1]
    y: np.ndarray  # (N,) global class ids

    def by_class(self) -> dict[int, np.ndarray]:
        return {int(c): np.flatnonzero(self.y == c) for c in np.unique(self.y)}


def sample_episode(by_class: dict[int, np.ndarray], way: int, shot: int, query: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices (way * (shot + query),) ordered shot-major: position i belongs to episode class i % way; the first
    way * shot are the support, the rest the queries."""
    classes = rng.choice(sorted(by_class), size=way, replace=False)
    per_class = np.stack([rng.choice(by_class[int(c)], size=shot + query, replace=False) for c in classes])  # (N, K+Q)
    return per_class.T.reshape(-1)


def sample_episodes(labels: np.ndarray, way: int, shot: int, query: int, episodes: int, seed: int) -> np.ndarray:
    """(episodes, way * (shot + query)) indices into the items labelled `labels`, each row one `sample_episode`:
    the same seed gives the same episodes, so models scored on them are compared pair by pair."""
    by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    rng = np.random.default_rng(seed)
    return np.stack([sample_episode(by_class, way, shot, query, rng) for _ in range(episodes)])


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the 95 % half-width 1.96·std/√n (FEAT's compute_confidence_interval; std with ddof 0)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


@torch.no_grad()
def embed_all(model: FewShotModel, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, 1, S, S) -> (N, d) embeddings in eval mode (BatchNorm running statistics)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.embed(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class EpisodeStats:
    accuracies: np.ndarray  # (episodes,) percent correct per episode
    spread_raw: np.ndarray  # (episodes,) mean inter-prototype / mean query-to-own-prototype distance, raw prototypes
    spread_adapted: np.ndarray  # the same with the adapted prototypes


@torch.no_grad()
def score_episodes(model: FewShotModel, embeddings: torch.Tensor, episodes: np.ndarray, way: int, shot: int,
                   query: int, chunk: int = 500) -> EpisodeStats:
    """Scores `model` on every episode (rows of `sample_episodes`) of the items whose embeddings are given. The
    encoder is frozen at test time, so the images are embedded once and the episodes index the embeddings; the
    episodes are batched, `chunk` at a time, through the prototypes, the adaptation and the logits."""
    model.eval()
    if episodes.shape[1] != way * (shot + query):
        raise ValueError(f"episodes hold {episodes.shape[1]} items each, {way}-way {shot}-shot with {query} queries "
                         f"needs {way * (shot + query)}")
    query_labels = torch.arange(way, device=embeddings.device).repeat(query)  # (N*Q,)
    acc, spread_raw, spread_adapted = [], [], []
    for start in range(0, len(episodes), chunk):
        idx = torch.as_tensor(episodes[start : start + chunk], device=embeddings.device)
        e = embeddings[idx]  # (E, N*(K+Q), d)
        support, queries = e[:, : way * shot], e[:, way * shot :]  # (E, N*K, d), (E, N*Q, d)
        raw = support.reshape(len(e), shot, way, -1).mean(1)  # (E, N, d): shot-major, so class n is position n % N
        adapted = model.adapt(raw)  # (E, N, d)
        logits = euclidean_logits(queries, adapted, float(model.temperature))  # (E, N*Q, N)
        acc.append(100.0 * (logits.argmax(-1) == query_labels).float().mean(-1))
        spread_raw.append(_spread(raw, queries, query_labels))
        spread_adapted.append(_spread(adapted, queries, query_labels))
    return EpisodeStats(*(torch.cat(parts).double().cpu().numpy() for parts in (acc, spread_raw, spread_adapted)))


def _spread(protos: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
    """(E, N, d) prototypes, (E, M, d) queries -> (E,) mean distance between prototypes / mean distance of a query
    to its own class's prototype."""
    n = protos.shape[1]
    inter = torch.cdist(protos, protos).sum((1, 2)) / (n * (n - 1))
    intra = (queries - protos[:, query_labels]).norm(dim=-1).mean(-1)
    return inter / intra


def pretrain(model: FewShotModel, base: Split, val: Split, cfg: PretrainConfig, reporter: Reporter,
             generator: torch.Generator, seed: int) -> dict[str, float]:
    """Many-way classifier on the base classes (Adam, cross-entropy), run to its val plateau: after every epoch the
    encoder is scored by val_way-way 1-shot ProtoNet accuracy on the val classes (the same episodes every epoch),
    training stops once `patience` epochs in a row bring no new best (or at max_epochs), and the best epoch's
    weights are kept. `pretrain.plateau` says which of the two ended it."""
    classes = np.unique(base.y)
    if len(classes) != model.pretrain_head.out_features:
        raise ValueError(f"{len(classes)} base classes but a {model.pretrain_head.out_features}-way pre-training head")
    targets = torch.as_tensor(np.searchsorted(classes, base.y), dtype=torch.long)
    device = next(model.parameters()).device
    params = list(model.encoder.parameters()) + list(model.pretrain_head.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    val_way = min(cfg.val_way, len(np.unique(val.y)))
    val_episodes = sample_episodes(val.y, val_way, 1, VAL_QUERY, cfg.val_episodes, seed + 7)

    def val_accuracy() -> float:
        return float(score_episodes(model, embed_all(model, val.x), val_episodes, val_way, 1,
                                    VAL_QUERY).accuracies.mean())

    best = val_accuracy()
    best_state, best_epoch, epoch, step = copy.deepcopy(model.encoder.state_dict()), 0, 0, 0
    steps_per_epoch = math.ceil(len(targets) / cfg.batch_size)
    while epoch < cfg.max_epochs and epoch - best_epoch < cfg.patience:
        epoch += 1
        model.train()
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            logits = model.pretrain_head(model.embed(base.x[idx].to(device)))  # (B, C_base)
            loss = F.cross_entropy(logits, targets[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            reporter.log_metrics({"pretrain_loss": loss.item()}, step=step)
            reporter.progress(step, cfg.max_epochs * steps_per_epoch, "pre-train step")
        acc = val_accuracy()
        reporter.log_metrics({"pretrain_val_protonet_acc": acc}, step=epoch)
        if acc > best:
            best, best_state, best_epoch = acc, copy.deepcopy(model.encoder.state_dict()), epoch
    model.encoder.load_state_dict(best_state)
    model.eval()
    return {"pretrain.best_val_acc": best, "pretrain.best_epoch": float(best_epoch), "pretrain.epochs": float(epoch),
            "pretrain.steps": float(step), "pretrain.plateau": float(epoch - best_epoch >= cfg.patience)}


def meta_train(model: FewShotModel, train: Split, val: Split, cfg: MetaTrainConfig, reporter: Reporter,
               seed: int, prefix: str) -> dict[str, float]:
    """Episodic training (Adam, encoder lr, Transformer lr x lr_mul, StepLR); CE on the queries plus
    balance x the contrastive regulariser (FEAT only). Keeps the weights of the epoch with the best val accuracy
    (way-way shot-shot episodes of the val classes)."""
    model.temperature.fill_(cfg.temperature)
    device = next(model.parameters()).device
    groups = [{"params": list(model.encoder.parameters()), "lr": cfg.lr}]
    if model.adapter is not None:
        groups.append({"params": list(model.adapter.parameters()), "lr": cfg.lr * cfg.lr_mul})
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    by_class = train.by_class()
    rng = np.random.default_rng(seed)
    query_labels = torch.arange(cfg.way, device=device).repeat(cfg.query)
    aux_labels = torch.arange(cfg.way, device=device).repeat(cfg.shot + cfg.query)

    val_episodes = sample_episodes(val.y, cfg.way, cfg.shot, cfg.val_query, cfg.val_episodes, seed + 11)

    def val_accuracy() -> float:
        return float(score_episodes(model, embed_all(model, val.x), val_episodes, cfg.way, cfg.shot,
                                    cfg.val_query).accuracies.mean())

    best = val_accuracy()
    best_state, best_epoch, step = copy.deepcopy(model.state_dict()), 0, 0
    total = cfg.epochs * cfg.episodes_per_epoch
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for _ in range(cfg.episodes_per_epoch):
            idx = sample_episode(by_class, cfg.way, cfg.shot, cfg.query, rng)
            out = model.episode(train.x[idx].to(device), cfg.way, cfg.shot, cfg.query,
                                cfg.temperature2 if cfg.balance > 0 else None)
            loss = F.cross_entropy(out.logits, query_labels)
            total_loss = loss
            if out.reg_logits is not None:
                total_loss = loss + cfg.balance * F.cross_entropy(out.reg_logits, aux_labels)
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            optimizer.step()
            step += 1
            acc = 100.0 * (out.logits.argmax(-1) == query_labels).float().mean().item()
            reporter.log_metrics({f"{prefix}.train_loss": total_loss.item(), f"{prefix}.train_acc": acc}, step=step)
            reporter.progress(step, total, f"{prefix} episode")
        reporter.log_metrics({f"{prefix}.lr_{['encoder', 'transformer'][i]}": g["lr"]
                              for i, g in enumerate(optimizer.param_groups)}, step=epoch)
        scheduler.step()
        acc = val_accuracy()
        reporter.log_metrics({f"{prefix}.val_acc": acc}, step=epoch)
        if acc > best:
            best, best_state, best_epoch = acc, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    model.eval()
    return {f"{prefix}.best_val_acc": best, f"{prefix}.best_epoch": float(best_epoch),
            f"{prefix}.episodes": float(step)}
