"""models/apiserve/runner.py: the paged KV cache and the ragged-batch runner against the plain HF model.

A tiny random-init LLaMA with grouped-query attention (4 query heads, 2 KV heads); initializer_range 0.2 makes its
greedy continuations varied (no early loop), so a wrong position, block or mask shows up as a different token."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.apiserve.runner import KVShape, ModelRunner, PagedKVCache
from models.apiserve.scheduler import ScheduledChunk
from models.ptq import keeps_full_precision
from models.quant import QuantSpec, pack_quantized_linears, rtn_quantize

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BLOCK = 4
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def lm(tiny_gqa_llama) -> LlamaForCausalLM:
    return tiny_gqa_llama(128)


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, 128, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def hf_greedy(lm: LlamaForCausalLM, ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    # an explicit mask: generate would otherwise mask every prompt token equal to the pad id
    inputs = torch.tensor([ids])
    out = lm.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


class Driver:
    """A hand-made scheduler: sequences' token lists and block tables over the runner's GPU pool."""

    def __init__(self, lm: LlamaForCausalLM, gpu_blocks: int = 64, host_blocks: int = 32) -> None:
        self.kv = PagedKVCache.for_model(lm, gpu_blocks, host_blocks, BLOCK)
        self.runner = ModelRunner(lm, self.kv)
        self.free = list(range(gpu_blocks))[::-1]      # reversed so tables are not simply 0, 1, 2, ...
        self.tokens: dict[str, list[int]] = {}
        self.tables: dict[str, list[int]] = {}
        self.generated: dict[str, list[int]] = {}

    def add(self, seq_id: str, ids: list[int]) -> None:
        self.tokens[seq_id], self.tables[seq_id], self.generated[seq_id] = list(ids), [], []

    def chunk(self, seq_id: str, start: int, end: int) -> ScheduledChunk:
        """Positions [start, end) of the sequence, with blocks allocated to cover them."""
        table = self.tables[seq_id]
        while len(table) * BLOCK < end:
            table.append(self.free.pop())
        return ScheduledChunk(seq_id=seq_id, start=start, token_ids=self.tokens[seq_id][start:end],
                              block_table=list(table), samples_next_token=end == len(self.tokens[seq_id]),
                              kind="prefill" if end - start > 1 else "decode")

    def run(self, chunks: list[ScheduledChunk]) -> dict[str, torch.Tensor]:
        logits = self.runner.forward(chunks)
        for seq_id, row in logits.items():
            token = int(row.argmax())
            self.tokens[seq_id].append(token)
            self.generated[seq_id].append(token)
        return logits

    def prefill(self, seq_id: str, chunk_size: int, upto: int | None = None) -> None:
        """Positions [0, upto) in chunks of `chunk_size`, one iteration each."""
        upto = len(self.tokens[seq_id]) if upto is None else upto
        for start in range(0, upto, chunk_size):
            self.run([self.chunk(seq_id, start, min(start + chunk_size, upto))])

    def decode(self, seq_ids: list[str], steps: int) -> None:
        for _ in range(steps):
            self.run([self.chunk(s, len(self.tokens[s]) - 1, len(self.tokens[s])) for s in seq_ids])

    def drop(self, seq_id: str) -> None:
        self.free.extend(self.tables[seq_id])
        self.tables[seq_id] = []


def test_one_chunk_prefill_matches_the_hf_forward_and_greedy_decoding_matches_generate(lm) -> None:
    ids = prompt(11, seed=1)
    driver = Driver(lm)
    driver.add("a", ids)
    logits = driver.run([driver.chunk("a", 0, len(ids))])["a"]
    with torch.no_grad():
        reference = lm(torch.tensor([ids])).logits[0, -1]
    assert logits.shape == (128,)
    assert torch.allclose(logits, reference, atol=1e-5, rtol=1e-5)
    driver.decode(["a"], NEW_TOKENS - 1)
    assert driver.generated["a"] == hf_greedy(lm, ids)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7])
def test_chunked_prefill_gives_the_same_tokens(lm, chunk_size: int) -> None:
    ids = prompt(13, seed=2)
    driver = Driver(lm)
    driver.add("a", ids)
    driver.prefill("a", chunk_size)
    driver.decode(["a"], NEW_TOKENS - 1)
    assert driver.generated["a"] == hf_greedy(lm, ids)


@pytest.mark.parametrize("swapped_blocks", [None, 2])      # None: every block
def test_swap_out_to_host_and_back_then_continue(lm, swapped_blocks: int | None) -> None:
    ids = prompt(10, seed=3)
    driver = Driver(lm)
    driver.add("a", ids)
    driver.prefill("a", 10)
    driver.decode(["a"], 7)                                  # 18 tokens in 5 blocks, the last one partly filled
    table = driver.tables["a"]
    moved = table[-(swapped_blocks or len(table)):]
    host = list(range(30, 30 - len(moved), -1))
    driver.kv.copy_out(list(zip(moved, host)))
    driver.kv.gpu_keys[:, moved] = float("nan")              # the GPU copy is gone: only the host copy can help
    driver.kv.gpu_values[:, moved] = float("nan")
    driver.free.extend(moved)
    fresh = [driver.free.pop(0) for _ in moved]              # back into other GPU blocks
    driver.kv.copy_in(list(zip(host, fresh)))
    driver.tables["a"] = table[: len(table) - len(moved)] + fresh
    driver.decode(["a"], NEW_TOKENS - 8)
    assert driver.generated["a"] == hf_greedy(lm, ids)


@pytest.mark.parametrize("recompute_chunk", [3, 16])
def test_discard_and_recompute_in_chunks_then_continue(lm, recompute_chunk: int) -> None:
    ids = prompt(9, seed=4)
    driver = Driver(lm)
    driver.add("a", ids)
    driver.prefill("a", 9)
    driver.decode(["a"], 8)
    old = driver.tables["a"]
    driver.kv.gpu_keys[:, old] = float("nan")
    driver.kv.gpu_values[:, old] = float("nan")
    driver.drop("a")
    # recompute every position whose KV existed (all tokens but the last sampled one), in chunks, sampling nothing
    context = len(driver.tokens["a"]) - 1
    for start in range(0, context, recompute_chunk):
        chunk = driver.chunk("a", start, min(start + recompute_chunk, context))
        assert not chunk.samples_next_token
        assert driver.run([chunk]) == {}
    driver.decode(["a"], NEW_TOKENS - 9)
    assert driver.generated["a"] == hf_greedy(lm, ids)


def test_a_ragged_batch_gives_every_sequence_its_own_tokens(lm) -> None:
    prompts = {"a": prompt(5, seed=5), "b": prompt(12, seed=6), "c": prompt(9, seed=7), "d": prompt(3, seed=8)}
    driver = Driver(lm)
    for seq_id, ids in prompts.items():
        driver.add(seq_id, ids)
    driver.run([driver.chunk(s, 0, len(prompts[s])) for s in ("a", "b", "c")])     # three prefills at once
    driver.decode(["a", "b"], 2)
    # mixed iterations: decodes beside the first (non-sampling) and the last chunk of d's prefill
    driver.run([driver.chunk("a", len(driver.tokens["a"]) - 1, len(driver.tokens["a"])),
                driver.chunk("d", 0, 2),
                driver.chunk("b", len(driver.tokens["b"]) - 1, len(driver.tokens["b"])),
                driver.chunk("c", len(driver.tokens["c"]) - 1, len(driver.tokens["c"]))])
    driver.run([driver.chunk("d", 2, 3), driver.chunk("c", len(driver.tokens["c"]) - 1, len(driver.tokens["c"]))])
    driver.decode(["d", "c"], 2)
    driver.decode(list(prompts), NEW_TOKENS - 6)
    for seq_id, ids in prompts.items():
        expected = hf_greedy(lm, ids, len(driver.generated[seq_id]))
        assert driver.generated[seq_id] == expected, seq_id
        assert len(expected) >= NEW_TOKENS - 6


def test_cbq_packed_linears_with_per_token_activation_quantization_run_unchanged() -> None:
    """CBQ's served form: integer-packed 4-bit weights, 8-bit per-token activations. Per-token grids make a token's
    output independent of the other rows of the ragged batch, so the runner still matches HF exactly."""
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, pad_token_id=0)
    quantized = LlamaForCausalLM(config).eval()
    rtn_quantize(quantized, QuantSpec(4, "per_channel"), QuantSpec(8, "per_token"), skip=keeps_full_precision)
    pack_quantized_linears(quantized)
    assert type(quantized.model.layers[0].self_attn.q_proj).__name__ == "PackedQuantLinear"
    prompts = {"a": prompt(7, seed=9), "b": prompt(12, seed=10)}
    driver = Driver(quantized)
    for seq_id, ids in prompts.items():
        driver.add(seq_id, ids)
    driver.run([driver.chunk(s, 0, len(ids)) for s, ids in prompts.items()])
    driver.decode(list(prompts), 11)
    for seq_id, ids in prompts.items():
        assert driver.generated[seq_id] == hf_greedy(quantized, ids, 12), seq_id


def test_kv_bytes_per_token_and_the_runner_refuses_other_architectures(lm) -> None:
    shape = KVShape.of(lm)
    assert (shape.num_layers, shape.kv_heads, shape.head_dim) == (2, 2, 16)
    assert shape.bytes_per_token(torch.float32) == 2 * 2 * 2 * 16 * 4
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        ModelRunner(torch.nn.Linear(2, 2), PagedKVCache(shape, 1, 0, BLOCK, "cpu", torch.float32))  # type: ignore
