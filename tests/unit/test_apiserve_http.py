"""paperops/serve_llm.py: the APIServe HTTP server for real — uvicorn on a free 127.0.0.1 port, a tiny random-init
LLaMA behind the engine — under a bounded concurrent load of good, tool-calling, streaming and bad requests."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch
import uvicorn
from transformers import LlamaConfig, LlamaForCausalLM

from models.apiserve.costs import IterationTimeModel
from models.common.lm import TokenizedLM, train_bpe_tokenizer
from paperops.serve_llm import EngineOptions, create_app, engine_for_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n\n"
        "Alas, poor Yorick! I knew him, Horatio, a fellow of infinite jest.\n\n") * 20


@pytest.fixture(scope="module")
def model() -> TokenizedLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return TokenizedLM(LlamaForCausalLM(config).eval(), train_bpe_tokenizer(TEXT, 300), 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: TokenizedLM, corpus: Path, **options: Any) -> Iterator[str]:
    engine, _ = engine_for_model(model, EngineOptions(
        gpu_blocks=24, host_blocks=64, block_size=4, max_returned_tokens=8,
        time_model=IterationTimeModel(a_ms_per_token=0.05, c_ms=2.0, saturation_tokens=16),
        swap_bytes_per_s=4e6, retrieval_corpus=corpus, **options))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model="tiny/1", policy="infercept"), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not engine.is_running                      # the app's lifespan stopped the engine's loop
    engine.scheduler.blocks.assert_empty()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def server(model, corpus) -> Iterator[str]:
    yield from serve(model, corpus)


def post(url: str, body: Any, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/completions", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in reply.iter_lines() if line]


def test_a_completion_with_tool_calls_streams_its_events_in_order(server) -> None:
    events = stream(server, {"prompt": "To be, or not", "max_tokens": 8, "tool_calls": [
        {"after_tokens": 3, "tool": "calculator", "arguments": {"expression": "6 * 7"}},
        {"after_tokens": 5, "tool": "retrieval", "arguments": {"query": "Yorick"}}]})
    kinds = [e["event"] for e in events]
    assert kinds == ["token"] * 3 + ["tool_call", "tool_result"] + ["token"] * 2 + ["tool_call", "tool_result"] \
        + ["token"] * 3 + ["done"]
    assert events[4]["text"] == "42" and events[4]["tool"] == "calculator"
    assert events[8]["text"].startswith("Alas, poor Yorick!") and events[8]["returned_tokens"] == 8  # cut to 8
    done = events[-1]
    assert done["summary"]["generated_ids"] == [e["token_id"] for e in events if e["event"] == "token"]
    # the same request without streaming: the same tokens (greedy), in one JSON answer
    reply = post(server, {"prompt": "To be, or not", "max_tokens": 8, "tool_calls": [
        {"after_tokens": 3, "tool": "calculator", "arguments": {"expression": "6 * 7"}},
        {"after_tokens": 5, "tool": "retrieval", "arguments": {"query": "Yorick"}}]})
    assert reply.status_code == 200
    assert reply.json()["generated_ids"] == done["summary"]["generated_ids"]
    assert reply.json()["text"] == done["text"] and len(reply.json()["tool_events"]) == 4


@pytest.mark.parametrize("raw, message", [
    (b'{"prompt": "To be", "max_tokens": ', "malformed JSON"),
    (json.dumps({"prompt": "To be", "tool_calls": [{"after_tokens": 1, "tool": "shell"}]}).encode(),
     "unknown tool 'shell'; this server offers calculator, environment, retrieval, timed_stub"),
    (json.dumps({"prompt": "To be " * 80, "max_tokens": 4}).encode(), "exceeds the context limit"),
    (json.dumps({"prompt": "To be", "max_tokens": 0}).encode(), "max_tokens: Input should be greater than"),
    (json.dumps({"prompt": "To be", "temperature": 1.0}).encode(), "temperature: Extra inputs"),
    (json.dumps(["To be"]).encode(), "invalid request"),
])
def test_bad_requests_get_a_clear_400(server, raw: bytes, message: str) -> None:
    reply = post(server, None, raw=raw)
    assert reply.status_code == 400
    assert message in reply.json()["error"]


def test_sixteen_concurrent_requests_are_all_answered_or_cleanly_refused(server) -> None:
    good = [{"prompt": "To be", "max_tokens": 6},
            {"prompt": "Whether 'tis nobler", "max_tokens": 10,
             "tool_calls": [{"after_tokens": 4, "tool": "environment", "arguments": {"action": "look"}}]},
            {"prompt": "Alas, poor", "max_tokens": 8,
             "tool_calls": [{"after_tokens": 2, "tool": "timed_stub", "arguments": {"duration_s": 0.2, "tokens": 4}}]},
            {"prompt": "a fellow of", "max_tokens": 7, "stream": True,
             "tool_calls": [{"after_tokens": 5, "tool": "calculator", "arguments": {"expression": "2 ** 10"}}]}]
    bad = [{"prompt": "To be", "tool_calls": [{"after_tokens": 1, "tool": "nope"}]},
           {"prompt": "", "max_tokens": 3}]
    bodies = [good[i % 4] for i in range(12)] + bad * 2
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda body: post(server, body), bodies))
    statuses = [r.status_code for r in replies]
    assert statuses == [200] * 12 + [400] * 4
    for body, reply in zip(bodies[:12], replies[:12]):
        if body.get("stream"):
            events = [json.loads(line) for line in reply.text.splitlines()]
            assert events[-1]["event"] == "done" and len(events[-1]["summary"]["generated_ids"]) == 7
        else:
            assert len(reply.json()["generated_ids"]) == body["max_tokens"]
    # identical requests got identical tokens however the batch was composed
    assert replies[0].json()["generated_ids"] == replies[4].json()["generated_ids"] == replies[8].json()[
        "generated_ids"]
    health = httpx.get(f"{server}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["requests_in_flight"] == 0
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'paperops_apiserve_requests_completed_total{policy="infercept"} 12' in metrics
    assert 'paperops_apiserve_http_refused_400_total{policy="infercept"} 4' in metrics
    assert "# TYPE paperops_apiserve_gpu_blocks_used gauge" in metrics


def test_a_full_queue_answers_503_and_the_server_keeps_serving(model, corpus) -> None:
    for url in serve(model, corpus, max_pending=2):
        slow_call = {"after_tokens": 1, "tool": "timed_stub", "arguments": {"duration_s": 1.5, "tokens": 2}}
        slow = {"prompt": "To be", "max_tokens": 3, "tool_calls": [slow_call]}
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = [pool.submit(post, url, slow) for _ in range(2)]
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/health", timeout=10).json()["requests_in_flight"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            refused = post(url, {"prompt": "To be", "max_tokens": 2})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "2 requests in flight" in refused.json()["error"]
            assert [f.result().status_code for f in first] == [200, 200]
        assert post(url, {"prompt": "To be", "max_tokens": 2}).status_code == 200
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
