"""Fixtures shared by unit tests that opt in."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny-model tests: on matrices this small threads only add
    synchronisation, and on a busy 2-core machine they stall (the APIServe engine tests run 6x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def _tiny_gqa_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_gqa_llama() -> Callable[[int], LlamaForCausalLM]:
    """Builds a seeded random 2-layer LLaMA with grouped-query attention (4 heads, 2 KV heads) for a vocabulary
    size; initializer_range 0.2 so its greedy output varies with the context (a near-uniform model repeats)."""
    return _tiny_gqa_llama
