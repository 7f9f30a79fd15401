"""The HTTP face of the APIServe engine (`paperops serve-llm`): completions whose requests may call tools, streamed
as NDJSON token events; a health check; Prometheus metrics.

    POST /v1/completions  {"prompt": str, "max_tokens": int, "stream": bool,
                           "tool_calls": [{"after_tokens": int, "tool": str, "arguments": {...}}]}
        stream=true : application/x-ndjson, one event per line: token, tool_call, tool_result, then done (or error)
        stream=false: one JSON object (the done event's text, token ids and timings)
        400 malformed JSON / invalid fields / unknown tool / prompt too long for the context; 413 body too large;
        503 when the admission queue is full (Retry-After) or the engine has stopped
    GET /health    200 {"status": "ok", ...} while the engine loop runs, else 503
    GET /metrics   Prometheus text format

The engine's loop runs in a background thread, started and stopped with the app; each request's events cross
into asyncio through `loop.call_soon_threadsafe`, so one slow client never blocks the loop or other requests.
"""
from __future__ import annotations

import asyncio
import json
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.apiserve.calibration import calibrate, measure_swap_bandwidth
from models.apiserve.costs import IterationTimeModel, SwapTimeModel
from models.apiserve.engine import Engine, EngineBusy, EngineEvent, RequestError, ToolCall, build_engine
from models.apiserve.runner import KVShape, PagedKVCache
from models.apiserve.tools import Calculator, Environment, Retrieval, TimedStub, ToolBox, ToolError
from models.common.lm import TokenizedLM

MAX_BODY_BYTES = 1 << 20
METRIC_PREFIX = "paperops_apiserve_"
CALIBRATION_TOKENS = [8, 16, 32, 64, 128, 256, 512]


@dataclass(frozen=True)
class EngineOptions:
    policy: str = "infercept"
    gpu_blocks: int = 256
    host_blocks: int = 1024
    block_size: int = 16
    max_model_len: int | None = None        # default: the model's max_position_embeddings, capped by the GPU pool
    max_pending: int = 64
    max_returned_tokens: int = 64
    time_model: IterationTimeModel | None = None    # default: measured on this machine at start-up
    swap_bytes_per_s: float | None = None           # default: measured on this machine at start-up
    retrieval_corpus: Path | None = None            # the retrieval tool is offered only when this file exists


def engine_for_model(model: TokenizedLM, options: EngineOptions) -> tuple[Engine, list[str]]:
    """The engine `paperops serve-llm` runs, and lines that say how it was set up (calibration, tools)."""
    lm, notes = model.lm, []
    assert model.tokenizer is not None
    limit = options.gpu_blocks * options.block_size
    max_model_len = min(options.max_model_len or lm.config.max_position_embeddings, limit)
    time_model = options.time_model
    if time_model is None:
        measured = calibrate(lm, CALIBRATION_TOKENS, block_size=options.block_size, repeats=3, warmup=1)
        time_model = measured.model
        notes.append(f"iteration time measured here: T(n) = {time_model.a_ms_per_token:.4f}·n + "
                     f"{time_model.c_ms:.2f} ms, saturation S = {time_model.saturation_tokens} "
                     f"(n = {measured.token_counts})")
    bandwidth = options.swap_bytes_per_s
    if bandwidth is None:
        probe = PagedKVCache.for_model(lm, gpu_blocks=32, host_blocks=32, block_size=options.block_size)
        bandwidth = measure_swap_bandwidth(probe, blocks=32)
        notes.append(f"KV swap bandwidth measured here: {bandwidth / 1e9:.2f} GB/s")
    parameter = next(lm.parameters())
    swap_model = SwapTimeModel(KVShape.of(lm).bytes_per_token(parameter.dtype), bandwidth)
    tools: list[Any] = [Calculator(), Environment(), TimedStub()]
    corpus = options.retrieval_corpus
    if corpus is not None and corpus.is_file():
        tools.append(Retrieval.from_file(corpus))
        notes.append(f"retrieval over {corpus}")
    elif corpus is not None:
        notes.append(f"retrieval tool off: no corpus at {corpus} (build it with `paperops data {corpus.parent.name}`)")
    else:
        notes.append("retrieval tool off: no corpus given")
    engine = build_engine(lm, model.tokenizer, ToolBox(tools), policy=options.policy, gpu_blocks=options.gpu_blocks,
                          host_blocks=options.host_blocks, block_size=options.block_size,
                          max_model_len=max_model_len, time_model=time_model, swap_model=swap_model,
                          max_returned_tokens=options.max_returned_tokens, max_pending=options.max_pending)
    notes.append(f"policy {options.policy}; KV pools: {options.gpu_blocks} GPU + {options.host_blocks} host blocks "
                 f"of {options.block_size} tokens; context limit {max_model_len} tokens; tools: "
                 + ", ".join(sorted(engine.tools.tools)))
    return engine, notes


class ToolCallBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after_tokens: int = Field(ge=1, description="the call happens once this many tokens have been generated")
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class CompletionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(32, ge=1)
    tool_calls: list[ToolCallBody] = Field(default_factory=list)
    stream: bool = False


def _event_json(event: EngineEvent) -> dict[str, Any]:
    # identity tests: a token id 0 is a value, only the unset defaults (None, False) are left out
    return {"event": event.kind} | {k: v for k, v in asdict(event).items()
                                    if k != "kind" and v is not None and v is not False}


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def create_app(engine: Engine, *, model: str, policy: str) -> FastAPI:
    """The app around `engine`; its lifespan starts the engine's loop thread and stops it."""
    http_counts: dict[str, int] = {"400": 0, "413": 0, "503": 0}
    count_lock = threading.Lock()

    def refuse(status: int, message: str, **headers: str) -> JSONResponse:
        with count_lock:
            http_counts[str(status)] += 1
        return _error(status, message, **headers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="paperops APIServe", lifespan=lifespan)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return refuse(413, f"request body of {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            body = CompletionBody.model_validate(json.loads(raw))
        except json.JSONDecodeError as exc:
            return refuse(400, f"malformed JSON: {exc}")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            return refuse(400, f"invalid request: {problems}")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def deliver(event: EngineEvent) -> None:      # on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        calls = [ToolCall(c.after_tokens, c.tool, c.arguments) for c in body.tool_calls]
        try:
            handle = engine.submit(body.prompt, body.max_tokens, calls, on_event=deliver)
        except (RequestError, ToolError) as exc:
            return refuse(400, str(exc))
        except EngineBusy as exc:
            return refuse(503, f"server busy: {exc}", **{"Retry-After": "1"})
        except RuntimeError as exc:
            return refuse(503, str(exc))

        if body.stream:
            async def lines() -> AsyncIterator[bytes]:
                while True:
                    event = await events.get()
                    yield (json.dumps(_event_json(event)) + "\n").encode()
                    if event.kind in ("done", "error"):
                        return
            return StreamingResponse(lines(), media_type="application/x-ndjson",
                                     headers={"X-Request-Id": handle.request_id})
        tool_events: list[dict[str, Any]] = []
        while True:
            event = await events.get()
            if event.kind in ("tool_call", "tool_result"):
                tool_events.append(_event_json(event))
            if event.kind == "error":
                return _error(500, event.text)
            if event.kind == "done":
                assert event.summary is not None
                return {"id": handle.request_id, "model": model, "policy": policy, "text": event.text,
                        "tool_events": tool_events, **event.summary}

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = engine.failure is None and engine.is_running
        status = {"status": "ok" if alive else "stopped", "model": model, "policy": policy,
                  "requests_in_flight": engine.snapshot()[1]["requests_in_flight"]}
        if engine.failure is not None:
            status["error"] = repr(engine.failure)
        return JSONResponse(status, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        counters, gauges = engine.snapshot()
        with count_lock:
            counters |= {f"http_refused_{code}": float(n) for code, n in http_counts.items()}
        lines = []
        for kind, values, suffix in (("counter", counters, "_total"), ("gauge", gauges, "")):
            for name, value in sorted(values.items()):
                metric = f"{METRIC_PREFIX}{name}{suffix}"
                lines += [f"# TYPE {metric} {kind}", f'{metric}{{policy="{policy}"}} {value:g}']
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app
