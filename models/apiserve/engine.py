"""The continuous-batching loop that serves an augmented LM (InferCept, arXiv 2402.01869): every iteration the scheduler
plans, the engine does the plan's KV block copies, the runner pushes the plan's chunks through the model, greedy tokens
go back to the scheduler, and a request that reaches one of its calls is paused while the tool runs on a thread pool.
When the tool returns, its text is tokenized and handed back with `scheduler.resume`; the scheduler decides how the
paused request's KV was kept (preserve / swap / discard) and prefills the returned tokens.

Thread model: the scheduler, the runner and the KV cache belong to the loop's thread (`start()` runs it in the
background, `run_until_done()` in the caller's thread). `submit` may be called from any thread: requests and tool
results reach the loop through locked in-boxes. Each request's events (token, tool_call, tool_result, done, error)
go to its handle's queue, or to a callback the caller gives (the HTTP server's bridge into asyncio).

Calls happen at stated points of a request (`ToolCall.after_tokens` generated tokens), as in the paper's driver:
the engine serves the interception pattern a workload describes, with real tools. Decoding is greedy and ignores
end-of-text (the driver's `ignore_eos`), so a request always generates `max_tokens` tokens.
"""
from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

from models.apiserve.blocks import BlockManager
from models.apiserve.costs import IterationTimeModel, SwapTimeModel
from models.apiserve.runner import ModelRunner, PagedKVCache
from models.apiserve.scheduler import Scheduler, Sequence
from models.apiserve.tools import ToolBox, ToolError
from models.apiserve.workload import CallSpec, Segment

IDLE_POLL_S = 0.02      # while every request is paused, re-plan this often: preserved KV may move as T̂ grows


class RequestError(ValueError):
    """A request the engine will not take as given (the HTTP server answers 400 with the message)."""


class EngineBusy(RuntimeError):
    """The admission queue is full (the HTTP server answers 503); retry later."""


@dataclass(frozen=True)
class ToolCall:
    after_tokens: int               # the call happens once the request has generated this many tokens in total
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineEvent:
    kind: str                       # "token" | "tool_call" | "tool_result" | "done" | "error"
    request_id: str
    token_id: int | None = None     # token
    text: str = ""                  # token: the new text; tool_result: the tool's text; done: all text after
                                    # the prompt (generated and returned); error: the message
    tool: str | None = None         # tool_call, tool_result
    arguments: dict[str, Any] | None = None   # tool_call
    returned_tokens: int | None = None        # tool_result: tokens appended to the context
    failed: bool = False            # tool_result: the tool raised; its error message is what the model reads
    summary: dict[str, Any] | None = None     # done: token ids and per-request times


class RequestHandle:
    """What `submit` returns: the request's id and its events, in order, ending with "done" or "error"."""

    def __init__(self, request_id: str, prompt_ids: list[int], tokenizer: Tokenizer,
                 on_event: Callable[[EngineEvent], None] | None) -> None:
        self.request_id, self.prompt_ids = request_id, prompt_ids
        self.sequence: Sequence | None = None   # the scheduler's view of the request (times, counters)
        self.generated_ids: list[int] = []
        self.output_ids: list[int] = []       # generated and returned tokens, in context order
        self._tokenizer, self._text = tokenizer, ""
        self._events: queue.Queue[EngineEvent] = queue.Queue()
        self._on_event = on_event or self._events.put

    def emit(self, event: EngineEvent) -> None:
        try:
            self._on_event(event)
        except Exception:       # a caller's callback that fails (a closed event loop) must not stop the engine
            pass

    def append_output(self, ids: list[int]) -> str:
        """Extend the output; returns the text it adds (held back while it ends inside a multi-byte character)."""
        self.output_ids.extend(ids)
        text = self._tokenizer.decode(self.output_ids)
        if text.endswith("\ufffd"):
            return ""
        new, self._text = text[len(self._text):], text
        return new

    def events(self, timeout_s: float | None = None) -> Iterator[EngineEvent]:
        """The events in order, waiting for each (only when no `on_event` callback was given); queue.Empty when
        none comes within `timeout_s`."""
        while True:
            event = self._events.get(timeout=timeout_s)
            yield event
            if event.kind in ("done", "error"):
                return

    def result(self, timeout_s: float | None = None) -> EngineEvent:
        """The final event, "done" or "error"."""
        *_, last = self.events(timeout_s)
        return last


class Engine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, tools: ToolBox, tokenizer: Tokenizer, *,
                 max_returned_tokens: int = 64, max_pending: int = 64, tool_workers: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runner, self.scheduler, self.tools, self.tokenizer = runner, scheduler, tools, tokenizer
        self.max_returned_tokens, self.max_pending = max_returned_tokens, max_pending
        self.clock = clock
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._inbox: deque[Sequence] = deque()
        self._returns: deque[tuple[str, str, str, bool, float]] = deque()  # (request, tool, text, failed, when)
        self._handles: dict[str, RequestHandle] = {}                     # unfinished requests
        self._calls_out = 0
        self._tools = ThreadPoolExecutor(max_workers=tool_workers, thread_name_prefix="apiserve-tool")
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.failure: BaseException | None = None
        self.counters = {"requests_submitted": 0, "requests_rejected_busy": 0, "requests_completed": 0,
                         "requests_failed": 0, "tokens_generated": 0, "tool_calls": 0, "tool_errors": 0}

    # ---- requests in ---------------------------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self.scheduler.max_model_len

    def submit(self, prompt: str | list[int], max_tokens: int, tool_calls: list[ToolCall] | tuple[ToolCall, ...] = (),
               on_event: Callable[[EngineEvent], None] | None = None) -> RequestHandle:
        """Admit a request or raise RequestError (bad request) / EngineBusy (queue full). Tool results are cut to
        `max_returned_tokens`, so a request is admitted only if its prompt, its tokens and that many returned
        tokens per call fit in `max_model_len`."""
        prompt_ids = self.tokenizer.encode(prompt).ids if isinstance(prompt, str) else list(prompt)
        segments = self._segments(prompt_ids, max_tokens, sorted(tool_calls, key=lambda c: c.after_tokens))
        if self.failure is not None:
            raise RuntimeError(f"the engine stopped after an error: {self.failure!r}")
        with self._lock:
            if len(self._handles) >= self.max_pending:
                self.counters["requests_rejected_busy"] += 1
                raise EngineBusy(f"{len(self._handles)} requests in flight, the limit is {self.max_pending}")
            request_id = f"req-{next(self._ids)}"
            handle = RequestHandle(request_id, prompt_ids, self.tokenizer, on_event)
            handle.sequence = Sequence(request_id, self.clock(), list(prompt_ids), segments)
            self._handles[request_id] = handle
            self._inbox.append(handle.sequence)
            self.counters["requests_submitted"] += 1
        self._wakeup.set()
        return handle

    def _segments(self, prompt_ids: list[int], max_tokens: int, calls: list[ToolCall]) -> list[Segment]:
        if not prompt_ids:
            raise RequestError("the prompt is empty: there is nothing to continue")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        worst = len(prompt_ids) + max_tokens + len(calls) * self.max_returned_tokens
        if worst > self.max_model_len - 1:
            raise RequestError(
                f"prompt of {len(prompt_ids)} tokens + max_tokens {max_tokens} + {len(calls)} tool call(s) × "
                f"{self.max_returned_tokens} returned tokens = {worst} exceeds the context limit of "
                f"{self.max_model_len - 1} tokens")
        segments, done = [], 0
        for call in calls:
            self.tools.check(call.tool)    # ToolError (a ValueError) for an unknown tool
            if not done < call.after_tokens < max_tokens:
                raise RequestError(f"tool call after_tokens {call.after_tokens} must be > {done} (the previous "
                                   f"call) and < max_tokens {max_tokens}")
            spec = CallSpec(call.tool, json.dumps(call.arguments, sort_keys=True),
                            duration_s=_stated_duration(call))
            segments.append(Segment(call.after_tokens - done, spec))
            done = call.after_tokens
        segments.append(Segment(max_tokens - done))
        return segments

    # ---- the loop ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="apiserve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
        self._tools.shutdown(wait=False, cancel_futures=True)
        if self._handles:       # nobody will finish them: end their streams rather than leave callers waiting
            self._fail(RuntimeError("the engine was stopped"))

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.step():
                    self._wakeup.wait(IDLE_POLL_S)
            except BaseException as exc:           # a bug: fail every request loudly rather than hang them
                self._fail(exc)
                return

    def run_until_done(self, timeout_s: float = 600.0) -> None:
        """Serve in this thread until every submitted request has finished (tests, calibration, benchmarks)."""
        deadline = self.clock() + timeout_s
        while True:
            with self._lock:
                if not self._handles:
                    return
            if self.clock() > deadline:
                raise TimeoutError(f"{len(self._handles)} requests unfinished after {timeout_s} s")
            try:
                if not self.step():
                    self._wakeup.wait(IDLE_POLL_S)
            except BaseException as exc:
                self._fail(exc)
                raise

    def step(self) -> bool:
        """One iteration; False when there was nothing to compute (every request paused, or none)."""
        self._wakeup.clear()
        self._admit_and_resume()
        if not self.scheduler.has_unfinished():
            return False
        plan = self.scheduler.schedule(self.clock())
        # swap-outs before swap-ins: a GPU block a swap-out frees may receive a swap-in in the same plan
        self.runner.kv.copy_out(plan.swap_out)
        self.runner.kv.copy_in(plan.swap_in)
        logits = self.runner.forward(plan.chunks)
        next_tokens = {seq_id: int(torch.argmax(row)) for seq_id, row in logits.items()}
        for event in self.scheduler.finish_iteration(plan, next_tokens, self.clock()):
            self._on_scheduler_event(event.kind, event.seq_id, event.token, event.call)
        return bool(plan.chunks)

    def _admit_and_resume(self) -> None:
        with self._lock:
            admitted, returned = list(self._inbox), list(self._returns)
            self._inbox.clear()
            self._returns.clear()
        for seq in admitted:
            self.scheduler.add(seq)
        for request_id, tool, text, failed, when in returned:
            token_ids = self.tokenizer.encode(text).ids[: self.max_returned_tokens]
            handle = self._handles[request_id]
            self.counters["tool_errors"] += failed
            handle.emit(EngineEvent("tool_result", request_id, text=text, tool=tool, returned_tokens=len(token_ids),
                                    failed=failed))
            handle.append_output(token_ids)
            self.scheduler.resume(request_id, token_ids, when)

    def _on_scheduler_event(self, kind: str, request_id: str, token: int | None, call: CallSpec | None) -> None:
        handle = self._handles[request_id]
        if kind == "token":
            assert token is not None
            handle.generated_ids.append(token)
            self.counters["tokens_generated"] += 1
            handle.emit(EngineEvent("token", request_id, token_id=token, text=handle.append_output([token])))
        elif kind == "intercept":
            assert call is not None
            arguments = json.loads(call.arguments)
            # each request acts in its own world of the environment tool unless it names an episode
            if call.tool == "environment":
                arguments.setdefault("episode", request_id)
            handle.emit(EngineEvent("tool_call", request_id, tool=call.tool, arguments=arguments))
            with self._lock:
                self._calls_out += 1
            self.counters["tool_calls"] += 1
            future = self._tools.submit(self.tools.call, call.tool, arguments)
            future.add_done_callback(lambda done: self._tool_returned(request_id, call.tool, done))
        elif kind == "finish":
            self._finish(request_id)

    def _tool_returned(self, request_id: str, tool: str, future: Future) -> None:
        """On a tool thread: hand the result to the loop. A failure's message is the result the model reads."""
        error = future.exception()
        if error is None:
            text = future.result()
        else:
            text = f"error: {error}" if isinstance(error, ToolError) else f"error: {type(error).__name__}: {error}"
        with self._lock:
            self._returns.append((request_id, tool, text, error is not None, self.clock()))
            self._calls_out -= 1
        self._wakeup.set()

    def _finish(self, request_id: str) -> None:
        with self._lock:
            handle = self._handles.pop(request_id)
        seq = handle.sequence
        self.counters["requests_completed"] += 1
        assert seq.finish_s is not None and seq.first_token_s is not None
        active_s = seq.finish_s - seq.arrival_s - seq.intercepted_s
        summary = {"prompt_tokens": len(handle.prompt_ids), "generated_ids": list(handle.generated_ids),
                   "output_ids": list(handle.output_ids), "ttft_s": seq.first_token_s - seq.arrival_s,
                   "latency_s": seq.finish_s - seq.arrival_s, "intercepted_s": seq.intercepted_s,
                   "normalized_latency_s": active_s / max(seq.generated, 1)}
        handle.emit(EngineEvent("done", request_id, text=self.tokenizer.decode(handle.output_ids), summary=summary))

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        self.counters["requests_failed"] += len(handles)
        for handle in handles:
            handle.emit(EngineEvent("error", handle.request_id, text=f"engine error: {type(exc).__name__}: {exc}"))

    # ---- what the server reports -----------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """(counters, gauges) for /metrics; read from another thread, each value is one atomic read."""
        stats, blocks = self.scheduler.stats, self.scheduler.blocks
        with self._lock:
            in_flight, calls_out = len(self._handles), self._calls_out
        counters = {**{k: float(v) for k, v in self.counters.items()},
                    "iterations": float(stats.iterations), "forward_tokens": float(stats.forward_tokens),
                    "recompute_tokens": float(stats.recompute_tokens),
                    "swap_out_blocks": float(stats.swap_out_blocks), "swap_in_blocks": float(stats.swap_in_blocks),
                    "discards": float(stats.discards), "preemptions": float(stats.preemptions),
                    "forward_seconds": stats.forward_s, "recompute_seconds": stats.recompute_s}
        gauges = {"requests_in_flight": float(in_flight), "tool_calls_in_flight": float(calls_out),
                  "gpu_blocks_used": float(blocks.gpu_blocks - blocks.num_free_gpu),
                  "gpu_blocks": float(blocks.gpu_blocks),
                  "host_blocks_used": float(blocks.host_blocks - blocks.num_free_host),
                  "host_blocks": float(blocks.host_blocks)}
        return counters, gauges


def _stated_duration(call: ToolCall) -> float | None:
    """A timed stub states how long it will take (the oracle policy and the heuristic read it); real tools do not."""
    duration = call.arguments.get("duration_s") if call.tool == "timed_stub" else None
    return float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None


def build_engine(lm: LlamaForCausalLM, tokenizer: Tokenizer, tools: ToolBox, *, policy: str, gpu_blocks: int,
                 host_blocks: int, block_size: int, max_model_len: int, time_model: IterationTimeModel,
                 swap_model: SwapTimeModel, **engine_options: Any) -> Engine:
    """An engine whose block accounting (scheduler) and KV tensors (runner) are the same pools."""
    blocks = BlockManager(gpu_blocks, host_blocks, block_size)
    scheduler = Scheduler(policy, blocks, time_model, swap_model, max_model_len)
    runner = ModelRunner(lm, PagedKVCache.for_model(lm, gpu_blocks, host_blocks, block_size))
    return Engine(runner, scheduler, tools, tokenizer, **engine_options)
