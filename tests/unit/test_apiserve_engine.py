"""models/apiserve/engine.py: the serving loop on a real (tiny, random-init) LLaMA with real tools.

The key check (issue 7): under every policy, in a GPU pool far too small for the requests (so
KV is swapped, discarded and recomputed, preempted and brought back), greedy decoding gives token for token what
an uninterrupted HF `generate` gives with the tools' results spliced in at the call points; and every KV block is
free again at the end."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from models.apiserve.costs import IterationTimeModel, SwapTimeModel
from models.apiserve.engine import EngineBusy, RequestError, ToolCall, build_engine
from models.apiserve.runner import KVShape
from models.apiserve.scheduler import POLICIES
from models.apiserve.tools import ToolError, default_toolbox
from models.common.lm import train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n\n"
        "Alas, poor Yorick! I knew him, Horatio, a fellow of infinite jest.\n\n"
        "There's rosemary, that's for remembrance; pray, love, remember.\n") * 20
BLOCK = 4
RETURNED_CAP = 8
REQUESTS = [   # (prompt, max_tokens, tool calls)
    ("To be, or not to be", 20, [ToolCall(5, "calculator", {"expression": "12 * 7"}),
                                 ToolCall(12, "retrieval", {"query": "Yorick"})]),
    ("Whether 'tis nobler in the mind to suffer the slings and arrows", 16,
     [ToolCall(4, "environment", {"action": "open fridge", "episode": "e"}),
      ToolCall(8, "environment", {"action": "take apple", "episode": "e"})]),
    ("Or to take arms", 24, [ToolCall(3, "timed_stub", {"duration_s": 0.3, "tokens": 6}),
                             ToolCall(10, "timed_stub", {"duration_s": 0.05, "tokens": 3})]),
    ("There's rosemary", 12, []),
    ("Alas, poor Yorick! I knew him", 18, [ToolCall(9, "calculator", {"expression": "1 / 0"})]),
    ("a sea of troubles", 14, [ToolCall(2, "timed_stub", {"duration_s": 0.15, "tokens": 5})]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXT, 300)


@pytest.fixture(scope="module")
def lm(tiny_gqa_llama) -> LlamaForCausalLM:
    return tiny_gqa_llama(300)


def engine_for(lm, tokenizer, policy: str, gpu_blocks: int = 24, max_pending: int = 64):
    # T(n) = 0.05 n + 2 ms with S = 16; the swap link moves about 4 blocks during an empty iteration
    bytes_per_token = KVShape.of(lm).bytes_per_token(torch.float32)
    return build_engine(lm, tokenizer, default_toolbox(TEXT), policy=policy, gpu_blocks=gpu_blocks, host_blocks=64,
                        block_size=BLOCK, max_model_len=80,
                        time_model=IterationTimeModel(a_ms_per_token=0.05, c_ms=2.0, saturation_tokens=16),
                        swap_model=SwapTimeModel(bytes_per_token, bytes_per_token * 16 / 0.002),
                        max_returned_tokens=RETURNED_CAP, max_pending=max_pending)


@torch.no_grad()
def spliced_reference(lm, tokenizer, prompt: str, max_tokens: int, calls: list[ToolCall]) -> list[int]:
    """Greedy HF generation segment by segment, with each tool's result (from a fresh toolbox) appended."""
    tools = default_toolbox(TEXT)
    ids, generated, done = tokenizer.encode(prompt).ids, [], 0
    for upto, call in [(c.after_tokens, c) for c in calls] + [(max_tokens, None)]:
        inputs = torch.tensor([ids])
        out = lm.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=upto - done,
                          do_sample=False, pad_token_id=0, eos_token_id=None)[0, len(ids):].tolist()
        ids, generated, done = ids + out, generated + out, upto
        if call is not None:
            try:
                text = tools.call(call.tool, call.arguments)
            except ToolError as exc:
                text = f"error: {exc}"
            ids = ids + tokenizer.encode(text).ids[:RETURNED_CAP]
    return generated


@pytest.fixture(scope="module")
def references(lm, tokenizer) -> list[list[int]]:
    return [spliced_reference(lm, tokenizer, *request) for request in REQUESTS]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_is_bit_exact_with_an_uninterrupted_run_and_frees_every_block(lm, tokenizer, references,
                                                                                   policy: str) -> None:
    engine = engine_for(lm, tokenizer, policy)
    handles = [engine.submit(prompt, max_tokens, calls) for prompt, max_tokens, calls in REQUESTS]
    engine.run_until_done(timeout_s=120)
    for handle, reference, (_, max_tokens, calls) in zip(handles, references, REQUESTS):
        events = list(handle.events(timeout_s=0))
        assert events[-1].kind == "done", events[-1]
        assert handle.generated_ids == reference, (policy, handle.request_id)
        assert events[-1].summary["generated_ids"] == reference
        assert [e.token_id for e in events if e.kind == "token"] == reference
        assert [e.tool for e in events if e.kind == "tool_call"] == [c.tool for c in calls]
        assert len([e for e in events if e.kind == "tool_result"]) == len(calls)
    engine.scheduler.blocks.assert_empty()
    stats = engine.scheduler.stats
    assert stats.finished == len(REQUESTS) and not engine.scheduler.has_unfinished()
    # the pool was small enough that KV really moved: discarded and recomputed, or swapped out and back
    assert stats.recompute_tokens > 0 or stats.swap_out_blocks > 0
    if policy == "swap":
        assert stats.swap_out_blocks > 0 and stats.swap_in_blocks == stats.swap_out_blocks
    if policy in ("vllm", "improved_discard"):
        assert stats.discards >= sum(len(calls) for _, _, calls in REQUESTS) and stats.swap_out_blocks == 0


def test_tool_events_carry_the_tools_text(lm, tokenizer) -> None:
    engine = engine_for(lm, tokenizer, "infercept", gpu_blocks=64)
    calc = engine.submit("To be", 6, [ToolCall(2, "calculator", {"expression": "12 * 7"})])
    broken = engine.submit("To be", 6, [ToolCall(3, "calculator", {"expression": "1 / 0"})])
    world = engine.submit("To be", 6, [ToolCall(1, "environment", {"action": "look"})])
    engine.run_until_done(timeout_s=60)
    events = {h.request_id: list(h.events(timeout_s=0)) for h in (calc, broken, world)}
    results = {request_id: next(e for e in seen if e.kind == "tool_result") for request_id, seen in events.items()}
    assert results[calc.request_id].text == "84" and not results[calc.request_id].failed
    assert results[broken.request_id].text == "error: division by zero in '1 / 0'"
    assert results[broken.request_id].failed
    assert results[world.request_id].text.startswith("You are in the kitchen.")
    assert results[calc.request_id].returned_tokens == len(tokenizer.encode("84").ids)
    assert engine.counters["tool_calls"] == 3 and engine.counters["tool_errors"] == 1
    # the final text is everything after the prompt: generated tokens with the result spliced in
    done = events[calc.request_id][-1]
    assert done.text == tokenizer.decode(done.summary["output_ids"]) and "84" in done.text
    assert len(done.summary["generated_ids"]) == 6 and done.summary["ttft_s"] >= 0


def test_bad_requests_are_refused_before_they_reach_the_scheduler(lm, tokenizer) -> None:
    engine = engine_for(lm, tokenizer, "infercept")
    with pytest.raises(ToolError, match="unknown tool 'python'"):
        engine.submit("To be", 8, [ToolCall(2, "python", {})])
    with pytest.raises(RequestError, match="exceeds the context limit of 79 tokens"):
        engine.submit("To be", 70, [ToolCall(2, "calculator", {"expression": "1"})])
    with pytest.raises(RequestError, match="after_tokens 8 must be > 0 .* and < max_tokens 8"):
        engine.submit("To be", 8, [ToolCall(8, "calculator", {"expression": "1"})])
    with pytest.raises(RequestError, match="prompt is empty"):
        engine.submit("", 8)
    assert engine.counters["requests_submitted"] == 0 and not engine.scheduler.has_unfinished()


def test_a_full_admission_queue_refuses_with_busy_and_recovers(lm, tokenizer) -> None:
    engine = engine_for(lm, tokenizer, "infercept", max_pending=2)
    engine.submit("To be", 4)
    engine.submit("Or not", 4)
    with pytest.raises(EngineBusy, match="2 requests in flight"):
        engine.submit("to be", 4)
    engine.run_until_done(timeout_s=60)
    again = engine.submit("to be", 4)
    engine.run_until_done(timeout_s=60)
    assert again.result(timeout_s=0).kind == "done"
    assert engine.counters["requests_completed"] == 3 and engine.counters["requests_rejected_busy"] == 1


def test_background_loop_serves_concurrent_submissions(lm, tokenizer) -> None:
    engine = engine_for(lm, tokenizer, "infercept")
    engine.start()
    try:
        handles = [engine.submit(prompt, max_tokens, calls) for prompt, max_tokens, calls in REQUESTS[:3]]
        finals = [h.result(timeout_s=60) for h in handles]
    finally:
        engine.stop()
    assert [f.kind for f in finals] == ["done"] * 3
    engine.scheduler.blocks.assert_empty()


def test_stopping_the_engine_ends_the_requests_it_leaves_unfinished(lm, tokenizer) -> None:
    engine = engine_for(lm, tokenizer, "infercept")
    engine.start()
    waiting = engine.submit("To be", 4, [ToolCall(1, "timed_stub", {"duration_s": 1.0, "tokens": 2})])
    events = waiting.events(timeout_s=30)
    assert [next(events).kind, next(events).kind] == ["token", "tool_call"]
    engine.stop()
    final = next(events)
    assert final.kind == "error" and "the engine was stopped" in final.text
    assert not engine.is_running
