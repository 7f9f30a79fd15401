"""Augmented-LLM workloads: the six interception types of the paper's Table 1 (arXiv 2402.01869), Poisson arrivals,
and the official driver's synthetic call-time generators.

A request is a prompt and a list of segments: decode `decode_tokens`, then (unless it is the last segment) pause
for a call whose result, `returned_tokens` long, is appended to the context before decoding resumes.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CallSpec:
    """One interception. `duration_s` and `returned_tokens` are known for simulated calls (the workload states
    them) and None for a real tool, whose result decides both; the oracle policy reads `duration_s`."""

    tool: str
    arguments: str = ""
    duration_s: float | None = None
    returned_tokens: int | None = None


@dataclass(frozen=True)
class Segment:
    decode_tokens: int
    call: CallSpec | None = None

    def __post_init__(self) -> None:
        if self.decode_tokens < 1:
            raise ValueError(f"a segment decodes at least one token, got {self.decode_tokens}")


@dataclass(frozen=True)
class RequestSpec:
    arrival_s: float
    call_type: str
    prompt_tokens: int
    segments: tuple[Segment, ...]

    @property
    def total_tokens(self) -> int:
        returned = sum(s.call.returned_tokens or 0 for s in self.segments if s.call is not None)
        return self.prompt_tokens + sum(s.decode_tokens for s in self.segments) + returned


@dataclass(frozen=True)
class CallType:
    """Table 1 row: (mean, spread) of the interception time, the interceptions per request and the final context
    length; `returned_tokens` is our stated (low, high) range of a call's result length (the sources give none)."""

    name: str
    tool: str
    duration_s: tuple[float, float]
    calls: tuple[float, float]
    context_tokens: tuple[float, float]
    returned_tokens: tuple[int, int]


CALL_TYPES: dict[str, CallType] = {t.name: t for t in (
    CallType("math", "calculator", (9e-5, 6e-5), (3.75, 1.3), (1422, 738), (3, 5)),
    CallType("qa", "retrieval", (0.69, 0.17), (2.52, 1.73), (1846, 428), (30, 60)),
    CallType("ve", "environment", (0.09, 0.014), (28.18, 15.2), (2185, 115), (10, 30)),
    CallType("chatbot", "timed_stub", (28.6, 15.6), (4.45, 1.96), (753, 703), (50, 100)),
    CallType("image", "timed_stub", (20.03, 7.8), (6.91, 3.93), (1247, 792), (10, 30)),
    CallType("tts", "timed_stub", (17.24, 7.6), (6.91, 3.93), (1251, 792), (10, 30)),
)}

# Share of a request's final context that is its initial prompt (the sources state no split; the driver's
# segments carry prompt and completion lengths per step). The rest is decoded tokens and call results.
PROMPT_SHARE = (0.15, 0.35)
MIN_CONTEXT_TOKENS = 64


def lognormal_time(rng: random.Random, mean: float, spread: float) -> float:
    """A positive duration with the given mean and standard deviation."""
    sigma2 = math.log1p((spread / mean) ** 2)
    return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))


def synthetic_call_time(kind: str, rng: random.Random) -> float:
    """The driver's generators (final_tput_bench_real.py): N = |Normal(11, 3)|, U = Uniform(0.1, 20),
    R (short) = |Gamma(0.5, 4)|, L (long) = 20 − R, B = half R, half L."""
    if kind == "B":
        kind = rng.choice("RL")
    if kind == "N":
        return abs(rng.gauss(11, 3))
    if kind == "U":
        return rng.uniform(0.1, 20)
    if kind == "R":
        return min(abs(rng.gammavariate(0.5, 4)), 20.0)
    if kind == "L":
        return 20 - min(abs(rng.gammavariate(0.5, 4)), 20.0)
    raise ValueError(f"unknown call-time generator {kind!r}; choose N, U, R, L or B")


def sample_request(call_type: CallType, rng: random.Random, arrival_s: float, *, max_total_tokens: int = 2048,
                   time_scale: float = 1.0, call_time: str | None = None) -> RequestSpec:
    """One request of the type: Table 1's context length and call count, split into prompt, decode segments and
    call results; call durations log-normal with Table 1's mean and spread (or a synthetic generator), × time_scale."""
    context = int(min(max(rng.gauss(*call_type.context_tokens), MIN_CONTEXT_TOKENS), max_total_tokens))
    prompt = max(1, round(context * rng.uniform(*PROMPT_SHARE)))
    n_calls = min(max(1, round(rng.gauss(*call_type.calls))), context - prompt - 1)
    returned = [rng.randint(*call_type.returned_tokens) for _ in range(n_calls)]
    # Each of the n_calls + 1 segments decodes at least one token; call results shrink to make room.
    room = context - prompt - (n_calls + 1)
    while sum(returned) > room and any(returned):
        returned = [r // 2 for r in returned]
    decode_total = context - prompt - sum(returned)
    cuts = sorted(rng.sample(range(1, decode_total), n_calls)) if decode_total > n_calls + 1 else list(
        range(1, n_calls + 1))
    decode = [b - a for a, b in zip([0, *cuts], [*cuts, decode_total])]
    segments = []
    for i, tokens in enumerate(decode):
        if i == n_calls:
            segments.append(Segment(tokens))
            continue
        duration = synthetic_call_time(call_time, rng) if call_time else lognormal_time(rng, *call_type.duration_s)
        segments.append(Segment(tokens, CallSpec(call_type.tool, "", duration * time_scale, returned[i])))
    return RequestSpec(arrival_s, call_type.name, prompt, tuple(segments))


def generate_workload(rate_per_s: float, duration_s: float, seed: int, *, mix: Mapping[str, float] | None = None,
                      max_total_tokens: int = 2048, time_scale: float = 1.0,
                      call_time: str | None = None) -> list[RequestSpec]:
    """Poisson arrivals at `rate_per_s` over `duration_s`, each request's type drawn from `mix` (weights by type
    name; uniform over the six by default). The k-th request's content depends only on the seed, not the rate, so
    a sweep over rates compares the same requests arriving faster."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError(f"rate ({rate_per_s}/s) and duration ({duration_s} s) must be positive")
    weights = dict(mix) if mix is not None else {name: 1.0 for name in CALL_TYPES}
    unknown = set(weights) - set(CALL_TYPES)
    if unknown:
        raise ValueError(f"unknown call types {sorted(unknown)}; known: {sorted(CALL_TYPES)}")
    names = list(weights)
    arrivals, content = random.Random(seed), random.Random(seed + 1)
    requests: list[RequestSpec] = []
    t = arrivals.expovariate(1.0) / rate_per_s
    while t < duration_s:
        call_type = CALL_TYPES[content.choices(names, [weights[n] for n in names])[0]]
        request_rng = random.Random(content.getrandbits(64))
        requests.append(sample_request(call_type, request_rng, t, max_total_tokens=max_total_tokens,
                                       time_scale=time_scale, call_time=call_time))
        t += arrivals.expovariate(1.0) / rate_per_s
    return requests
