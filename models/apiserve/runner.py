"""The tensor side of the engine: a paged KV cache and a model runner that pushes one ragged batch of chunks
through a LLaMA model (vLLM-shaped: the scheduler owns which blocks belong to whom, this file owns the tensors).

The runner drives the model's own modules (embedding, per-layer norms, q/k/v/o projections, MLP, final norm,
lm_head, rotary embedding), so quantized linears patched in by CBQ run unchanged; only attention is re-done here,
over each chunk's KV blocks instead of a contiguous per-request cache. Every token of every chunk goes through the
projections and the MLP as one (n_tokens, hidden) matrix, so an iteration's cost grows with its token count the way
the scheduler's `T(n) = a·n + c` model assumes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

if TYPE_CHECKING:
    from models.apiserve.scheduler import ScheduledChunk


@dataclass(frozen=True)
class KVShape:
    """What one token's KV looks like in one layer, read from the model's config."""

    num_layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, lm: LlamaForCausalLM) -> KVShape:
        config = lm.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.num_key_value_heads, head_dim)

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        """K and V of every layer: what one token of context occupies (and moves when swapped)."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    """K and V of every layer in fixed-size blocks: a GPU pool on the model's device and a host pool on the CPU.

    Both pools are (num_layers, num_blocks, kv_heads, block_size, head_dim); block `b` of the GPU pool holds the
    same token slots in every layer, so one block id (from the scheduler's block table) addresses a token range
    across the whole model. Swapping copies whole blocks between the pools, every layer at once."""

    def __init__(self, shape: KVShape, gpu_blocks: int, host_blocks: int, block_size: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        self.shape, self.block_size, self.device = shape, block_size, torch.device(device)
        gpu = (shape.num_layers, gpu_blocks, shape.kv_heads, block_size, shape.head_dim)
        host = (shape.num_layers, host_blocks, shape.kv_heads, block_size, shape.head_dim)
        self.gpu_keys = torch.zeros(gpu, dtype=dtype, device=self.device)
        self.gpu_values = torch.zeros(gpu, dtype=dtype, device=self.device)
        # pinned host memory makes the device -> host copies asynchronous-capable on CUDA; the CPU has no such thing
        pin = self.device.type == "cuda"
        self.host_keys = torch.zeros(host, dtype=dtype, pin_memory=pin)
        self.host_values = torch.zeros(host, dtype=dtype, pin_memory=pin)

    @classmethod
    def for_model(cls, lm: LlamaForCausalLM, gpu_blocks: int, host_blocks: int, block_size: int) -> PagedKVCache:
        parameter = next(lm.parameters())
        return cls(KVShape.of(lm), gpu_blocks, host_blocks, block_size, parameter.device, parameter.dtype)

    def copy_out(self, mapping: list[tuple[int, int]]) -> None:
        """Swap out: GPU block -> host block for each (gpu_block, host_block)."""
        if not mapping:
            return
        gpu = torch.tensor([g for g, _ in mapping], device=self.device)
        host = torch.tensor([h for _, h in mapping])
        self.host_keys[:, host] = self.gpu_keys[:, gpu].cpu()
        self.host_values[:, host] = self.gpu_values[:, gpu].cpu()

    def copy_in(self, mapping: list[tuple[int, int]]) -> None:
        """Swap in: host block -> GPU block for each (host_block, gpu_block)."""
        if not mapping:
            return
        host = torch.tensor([h for h, _ in mapping])
        gpu = torch.tensor([g for _, g in mapping], device=self.device)
        self.gpu_keys[:, gpu] = self.host_keys[:, host].to(self.device)
        self.gpu_values[:, gpu] = self.host_values[:, host].to(self.device)


class ModelRunner:
    """One iteration of the engine: `forward(chunks)` writes each chunk's new K/V into its blocks and returns the
    next-token logits of every chunk that ends at its sequence's current end."""

    def __init__(self, lm: LlamaForCausalLM, kv: PagedKVCache) -> None:
        if not isinstance(lm, LlamaForCausalLM):
            raise TypeError(f"the runner drives LLaMA-architecture models (LlamaForCausalLM), not {type(lm).__name__}")
        self.lm, self.kv = lm.eval(), kv
        self.device = kv.device

    @torch.no_grad()
    def forward(self, chunks: list[ScheduledChunk]) -> dict[str, torch.Tensor]:
        if not chunks:
            return {}
        block_size = self.kv.block_size
        token_ids = torch.tensor([t for c in chunks for t in c.token_ids], device=self.device)          # (N,)
        positions = torch.tensor([c.start + i for c in chunks for i in range(len(c.token_ids))],
                                 device=self.device)                                                      # (N,)
        # the cache slot of each new token: block `table[p // block_size]`, offset `p % block_size`
        slot_blocks = torch.tensor([c.block_table[(c.start + i) // block_size]
                                    for c in chunks for i in range(len(c.token_ids))], device=self.device)  # (N,)
        slot_offsets = positions % block_size                                                              # (N,)
        ends = list(itertools.accumulate(len(c.token_ids) for c in chunks))     # row after each chunk's last token

        model = self.lm.model
        hidden = model.embed_tokens(token_ids)                                                            # (N, d)
        cos, sin = model.rotary_emb(hidden, positions[None])                                              # (1, N, hd)
        cos, sin = cos[0], sin[0]                                                                         # (N, hd)
        for layer_index, layer in enumerate(model.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)                                                        # (N, d)
            q = attention.q_proj(normed).unflatten(-1, (-1, attention.head_dim))                          # (N, H, hd)
            k = attention.k_proj(normed).unflatten(-1, (-1, attention.head_dim))                          # (N, KV, hd)
            v = attention.v_proj(normed).unflatten(-1, (-1, attention.head_dim))                          # (N, KV, hd)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            keys, values = self.kv.gpu_keys[layer_index], self.kv.gpu_values[layer_index]        # (B, KV, bs, hd)
            keys[slot_blocks, :, slot_offsets] = k
            values[slot_blocks, :, slot_offsets] = v
            outputs = []
            for chunk, end in zip(chunks, ends):
                begin = end - len(chunk.token_ids)
                outputs.append(self._chunk_attention(attention, q[begin:end], chunk, keys, values))
            attended = torch.cat(outputs)                                                                  # (N, H * hd)
            hidden = hidden + attention.o_proj(attended)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))

        sampled = [(chunk.seq_id, end - 1) for chunk, end in zip(chunks, ends) if chunk.samples_next_token]
        if not sampled:
            return {}
        last = hidden[torch.tensor([row for _, row in sampled], device=self.device)]                      # (S, d)
        logits = self.lm.lm_head(model.norm(last))                                                        # (S, vocab)
        return {seq_id: row for (seq_id, _), row in zip(sampled, logits)}

    def _chunk_attention(self, attention: torch.nn.Module, q: torch.Tensor, chunk: ScheduledChunk,
                         keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Causal attention of one chunk's queries (L, H, hd) over positions [0, start + L) of its own blocks."""
        length = chunk.start + len(chunk.token_ids)
        blocks = torch.tensor(chunk.block_table[: -(-length // self.kv.block_size)], device=self.device)
        # (nb, KV, bs, hd) -> (KV, nb * bs, hd), cut to the sequence's length
        k = keys[blocks].transpose(0, 1).flatten(1, 2)[:, :length]                                        # (KV, T, hd)
        v = values[blocks].transpose(0, 1).flatten(1, 2)[:, :length]                                      # (KV, T, hd)
        query_positions = torch.arange(chunk.start, length, device=self.device)                           # (L,)
        visible = torch.arange(length, device=self.device)[None, :] <= query_positions[:, None]           # (L, T)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=visible,
                                             scale=attention.scaling, enable_gqa=True)                    # (H, L, hd)
        return out.transpose(0, 1).flatten(1)                                                             # (L, H * hd)
