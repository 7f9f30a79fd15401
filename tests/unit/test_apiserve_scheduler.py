"""Scheduler invariants under every policy, checked at every iteration of a seeded workload served on a small
pool (so that memory pressure, preemption and swapping all happen): FCFS by (original) arrival, chunks within the
saturation budget, swaps within the per-iteration budget, returned tokens prefilled, no leaked blocks."""
import heapq

import pytest

from models.apiserve.blocks import BlockManager
from models.apiserve.costs import GPTJ_6B_A100
from models.apiserve.scheduler import (POLICIES, RUNNING, SWAPPED, WAITING, IterationPlan, Scheduler, Sequence)
from models.apiserve.workload import CallSpec, Segment, generate_workload

PRESET = GPTJ_6B_A100
MAX_LEN = 512


def fcfs_order(seqs):
    return sorted(seqs, key=lambda s: (s.priority_s, s.rank))


def check_plan(scheduler: Scheduler, plan: IterationPlan, before: dict[str, str], seqs: dict[str, Sequence]):
    chunked = {c.seq_id for c in plan.chunks}
    # Waiting requests are admitted as a prefix of the waiting queue, swapped ones swapped in as a prefix of theirs.
    waiting = fcfs_order(seqs[i] for i, s in before.items() if s == WAITING)
    admitted = [s.id in chunked for s in waiting]
    assert admitted == sorted(admitted, reverse=True), "a waiting request was admitted ahead of an earlier one"
    swapped = fcfs_order(seqs[i] for i, s in before.items() if s == SWAPPED)
    swapped_into = {gpu for _, gpu in plan.swap_in}
    moved = [bool(swapped_into & set(scheduler.blocks.gpu_table(s.id))) for s in swapped]
    assert moved == sorted(moved, reverse=True), "a swapped request was resumed ahead of an earlier one"
    # Memory is taken from running requests behind every running request that was served.
    running = [seqs[i] for i, s in before.items() if s == RUNNING]
    served = [s for s in running if s.id in chunked]
    preempted = [s for s in running if s.status in (WAITING, SWAPPED)]
    if served and preempted:
        key = lambda s: (s.priority_s, s.rank)  # noqa: E731
        assert max(map(key, served)) < min(map(key, preempted))
    # Chunks stay within S − decode tokens; only an all-decode batch may exceed S.
    if scheduler.mechanics.chunked and any(len(c.token_ids) > 1 for c in plan.chunks):
        assert plan.num_tokens <= PRESET.time_model.saturation_tokens
    if plan.swap_budget_blocks is not None:
        assert len(plan.swap_out) + len(plan.swap_in) <= plan.swap_budget_blocks
    else:
        assert plan.stall_s == pytest.approx(PRESET.swap_model.seconds(
            (len(plan.swap_out) + len(plan.swap_in)) * PRESET.block_size))
    for c in plan.chunks:
        assert c.start == seqs[c.seq_id].num_computed
        assert len(c.block_table) * PRESET.block_size >= c.start + len(c.token_ids)
        assert c.block_table == scheduler.blocks.gpu_table(c.seq_id)


def serve(policy: str, workload, gpu_tokens: int = 2048, host_tokens: int = 4096):
    """Drive the scheduler on a virtual clock, checking every plan; the returned tokens of call k are
    1000·k + (0, 1, ...) and sampled tokens are 1, so where each lands can be checked afterwards."""
    blocks = BlockManager(gpu_tokens // PRESET.block_size, host_tokens // PRESET.block_size, PRESET.block_size)
    scheduler = Scheduler(policy, blocks, PRESET.time_model, PRESET.swap_model, MAX_LEN)
    seqs = {f"r{i}": Sequence(f"r{i}", spec.arrival_s, [0] * spec.prompt_tokens, list(spec.segments))
            for i, spec in enumerate(workload)}
    arrivals = sorted(seqs.values(), key=lambda s: s.arrival_s)
    returns, now, calls = [], 0.0, 0
    while arrivals or scheduler.has_unfinished():
        while arrivals and arrivals[0].arrival_s <= now:
            scheduler.add(arrivals.pop(0))
        while returns and returns[0][0] <= now:
            t, seq_id, tokens = heapq.heappop(returns)
            scheduler.resume(seq_id, tokens, t)
        before = {s.id: s.status for s in seqs.values() if s.status in (WAITING, RUNNING, SWAPPED)}
        plan = scheduler.schedule(now)
        check_plan(scheduler, plan, before, seqs)
        if plan.is_empty:
            now = min([a.arrival_s for a in arrivals[:1]] + [r[0] for r in returns[:1]])
            continue
        now += PRESET.time_model.forward_s(plan.num_tokens) + plan.stall_s
        for event in scheduler.finish_iteration(plan, {c.seq_id: 1 for c in plan.chunks if c.samples_next_token},
                                                now):
            if event.kind == "intercept":
                calls += 1
                tokens = [1000 * calls + j for j in range(event.call.returned_tokens)]
                heapq.heappush(returns, (now + event.call.duration_s, event.seq_id, tokens))
    return scheduler, seqs


@pytest.fixture(scope="module")
def workload():
    return generate_workload(rate_per_s=3.0, duration_s=20.0, seed=7, max_total_tokens=MAX_LEN, time_scale=0.2)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_invariants_and_no_leaks_under_memory_pressure(policy, workload):
    scheduler, seqs = serve(policy, workload)
    scheduler.blocks.assert_empty()
    assert scheduler.stats.finished == len(workload)
    for spec, seq in zip(workload, seqs.values()):
        assert seq.generated == sum(s.decode_tokens for s in spec.segments)
        assert len(seq.token_ids) == spec.total_tokens
        # Every call's result sits right after the tokens decoded before it.
        position = spec.prompt_tokens
        for segment in spec.segments:
            position += segment.decode_tokens
            if segment.call and segment.call.returned_tokens:
                returned = seq.token_ids[position:position + segment.call.returned_tokens]
                assert returned == list(range(returned[0], returned[0] + len(returned))) and returned[0] >= 1000
                position += segment.call.returned_tokens
    if policy in ("swap", "infercept", "infercept_oracle"):
        assert scheduler.stats.swap_out_blocks > 0
    if policy in ("vllm", "improved_discard"):
        assert scheduler.stats.recompute_tokens > 0


def test_the_pressure_is_real(workload):
    """The pool is small enough that requests contend for it, so the invariants above were exercised."""
    scheduler, _ = serve("preserve", workload)
    assert scheduler.stats.preemptions > 0


@pytest.mark.parametrize("policy", list(POLICIES))
def test_returned_tokens_are_prefilled_before_the_next_token(policy):
    blocks = BlockManager(gpu_blocks=32, host_blocks=32, block_size=4)
    scheduler = Scheduler(policy, blocks, PRESET.time_model, PRESET.swap_model, max_model_len=64)
    seq = Sequence("a", 0.0, [5] * 10, [Segment(2, CallSpec("timed_stub", duration_s=10.0, returned_tokens=3)),
                                        Segment(2)])
    scheduler.add(seq)
    now, fed = 0.0, []
    while scheduler.has_unfinished():
        if seq.status == "paused":
            now += 10.0
            scheduler.schedule(now)  # the paused request's KV is decided on (kept, swapped or dropped)
            scheduler.resume("a", [7, 8, 9], now)
        plan = scheduler.schedule(now)
        now += 0.01
        for chunk in plan.chunks:
            fed.append((chunk.start, list(chunk.token_ids), chunk.kind))
        scheduler.finish_iteration(plan, {"a": 1}, now)
    assert seq.token_ids == [5] * 10 + [1, 1, 7, 8, 9, 1, 1]
    # The first chunk after the call ends at the end of the returned tokens and samples from there.
    after_call = [f for f in fed if f[0] + len(f[1]) > 12]
    start, tokens, kind = after_call[0]
    assert start + len(tokens) == 15 and tokens[-3:] == [7, 8, 9] and kind in ("returned", "recompute")
    # Every position was fed in order, recomputed prefixes included.
    covered = [p for s, t, _ in fed for p in range(s, s + len(t))]
    assert sorted(set(covered)) == list(range(16))
    blocks.assert_empty()


def one_slot_scheduler(policy: str) -> Scheduler:
    # Eight blocks of four tokens: one 20-token request at a time.
    return Scheduler(policy, BlockManager(gpu_blocks=8, host_blocks=8, block_size=4), PRESET.time_model,
                     PRESET.swap_model, max_model_len=32)


@pytest.mark.parametrize("policy, first", [("vllm", "c"), ("improved_discard", "a")])
def test_vllm_requeues_a_returned_request_at_the_back_improved_discard_keeps_its_place(policy, first):
    scheduler = one_slot_scheduler(policy)
    a = Sequence("a", 0.0, [1] * 20, [Segment(1, CallSpec("timed_stub", duration_s=1.0, returned_tokens=1)),
                                      Segment(1)])
    scheduler.add(a)
    plan = scheduler.schedule(0.0)
    scheduler.finish_iteration(plan, {"a": 2}, 0.1)  # a pauses; its KV is dropped under both policies
    scheduler.add(Sequence("c", 0.2, [1] * 20, [Segment(1)]))
    scheduler.resume("a", [3], 0.3)
    plan = scheduler.schedule(0.3)
    assert [c.seq_id for c in plan.chunks] == [first]
    assert a.priority_s == (0.3 if policy == "vllm" else 0.0)


def test_unknown_policy_and_oversized_prompt_are_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        one_slot_scheduler("lifo")
    scheduler = one_slot_scheduler("infercept")
    with pytest.raises(ValueError, match="max_model_len"):
        scheduler.add(Sequence("x", 0.0, [1] * 32, [Segment(1)]))
