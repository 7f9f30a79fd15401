"""Interception-aware continuous batching: InferCept's scheduler and the baselines it is measured against
(InferCept, arXiv 2402.01869, §4; the official WukLab/InferCept vllm/core/scheduler_v2.py, policy V with
--chunk-fill).

Each iteration the scheduler decides, for every paused request whose KV still occupies GPU memory, whether to keep
it (preserve), move it to host memory (swap) or drop it and recompute it on return (discard), then fills the
iteration FCFS by the requests' original arrival: running decodes first, then swap-ins of returned swapped
requests, then prefill / recompute chunks from the waiting queue. It owns the block accounting (BlockManager) and
hands the runner a plan: the block copies to do and the token chunks to push through the model.

Token bookkeeping of a sequence: `token_ids` is everything it knows (prompt, sampled tokens, call results);
`num_computed` tokens have KV. A chunk feeds `token_ids[num_computed:num_computed + n]`; when it reaches the end of
`token_ids` it samples the next token. A decode is the one-token case, so prefill, recompute, returned-token
prefill and decode are one mechanism.
"""
from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field

from models.apiserve.blocks import BlockManager
from models.apiserve.costs import (IterationTimeModel, SwapTimeModel, chunked_discard_waste_code,
                                   pipelined_swap_waste, preserve_waste, swap_budget_tokens)
from models.apiserve.workload import CallSpec, Segment

WAITING, RUNNING, SWAPPED, PAUSED, FINISHED = "waiting", "running", "swapped", "paused", "finished"


@dataclass(frozen=True)
class Mechanics:
    """What distinguishes the policies besides the per-request choice of action."""

    chunked: bool  # prefill / recompute chunks fill an iteration up to S − decode tokens (paper §4.2); else whole
    budgeted_swap: bool  # at most N_i blocks cross PCIe per iteration, hidden behind compute; else synchronous
    resume_at_back: bool  # the call ended the request: it comes back as a new arrival (vLLM)
    evicts_paused: bool  # memory pressure takes KV from paused requests before touching running ones


POLICIES: dict[str, Mechanics] = {
    "vllm": Mechanics(chunked=False, budgeted_swap=False, resume_at_back=True, evicts_paused=False),
    "improved_discard": Mechanics(chunked=False, budgeted_swap=False, resume_at_back=False, evicts_paused=False),
    "preserve": Mechanics(chunked=False, budgeted_swap=False, resume_at_back=False, evicts_paused=False),
    "swap": Mechanics(chunked=False, budgeted_swap=False, resume_at_back=False, evicts_paused=False),
    # The H-B thresholds with InferCept's mechanisms, so the ablation isolates the decision rule.
    "heuristic": Mechanics(chunked=True, budgeted_swap=True, resume_at_back=False, evicts_paused=True),
    "infercept": Mechanics(chunked=True, budgeted_swap=True, resume_at_back=False, evicts_paused=True),
    "infercept_oracle": Mechanics(chunked=True, budgeted_swap=True, resume_at_back=False, evicts_paused=True),
}


@dataclass(eq=False)
class Sequence:
    """One request as the scheduler tracks it; the caller creates it, the scheduler advances it."""

    id: str
    arrival_s: float
    token_ids: list[int]
    segments: list[Segment]
    status: str = WAITING
    segment: int = 0  # index of the segment being decoded
    decoded_in_segment: int = 0
    num_computed: int = 0  # KV of positions [0, num_computed) is held: GPU blocks first, then host blocks
    high_water: int = 0  # positions below it had KV before: computing them again is recomputation
    call: CallSpec | None = None  # the call it is paused on
    call_started_s: float = 0.0
    pause_action: str = ""  # heuristic: the action chosen from the call's stated duration
    generated: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    intercepted_s: float = 0.0  # total time spent inside calls
    prompt_len: int = field(init=False)
    input_end: int = field(init=False)  # end of the latest inputs (prompt or call result) to prefill
    priority_s: float = field(init=False)  # FCFS key: the original arrival (vLLM policy: the latest re-arrival)
    rank: int = field(init=False, default=0)  # tie-break among equal priorities: order of (re-)admission

    def __post_init__(self) -> None:
        self.prompt_len = self.input_end = len(self.token_ids)
        self.priority_s = self.arrival_s

    @property
    def pending(self) -> int:
        return len(self.token_ids) - self.num_computed


@dataclass
class ScheduledChunk:
    """One contiguous run of tokens of one sequence to push through the model."""

    seq_id: str
    start: int  # position of token_ids[0]; KV of positions [0, start) is resident on GPU
    token_ids: list[int]
    block_table: list[int]  # GPU block ids covering positions [0, start + len(token_ids))
    samples_next_token: bool  # the chunk ends at the sequence's current end
    kind: str  # "decode" | "prefill" | "recompute" | "returned"


@dataclass
class IterationPlan:
    """What one iteration does. The copies run before the forward, swap-outs before swap-ins: a GPU block a
    swap-out empties may be the destination of a swap-in or of a chunk's new KV in the same plan."""

    swap_out: list[tuple[int, int]]  # (gpu_block, host_block)
    swap_in: list[tuple[int, int]]  # (host_block, gpu_block)
    # At most S tokens in all under the chunking policies, except a batch of decodes only (decodes are never
    # split); the baselines prefill / recompute a whole context in one chunk (up to max_model_len tokens).
    chunks: list[ScheduledChunk]
    scheduled_s: float = 0.0
    stall_s: float = 0.0  # synchronous swap time the whole batch waits for (policies without the swap budget)
    swap_budget_blocks: int | None = None  # N_i in blocks; None where swaps are synchronous
    recompute_tokens: int = 0  # tokens of the chunks whose KV had been computed before and was dropped

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not (self.chunks or self.swap_out or self.swap_in)


@dataclass(frozen=True)
class Event:
    kind: str  # "token" | "intercept" | "finish"
    seq_id: str
    token: int | None = None
    call: CallSpec | None = None


@dataclass
class SchedulerStats:
    iterations: int = 0
    forward_tokens: int = 0
    recompute_tokens: int = 0
    swap_out_blocks: int = 0
    swap_in_blocks: int = 0
    discards: int = 0  # KV dropped (paused request discarded, or running request preempted by recompute)
    preemptions: int = 0  # running requests evicted for memory
    forward_s: float = 0.0
    recompute_s: float = 0.0  # forward time spent on recomputed tokens (pro rata within each iteration)
    stall_s: float = 0.0
    # GPU memory waste, token·seconds (paper §3.2): KV of paused requests idle on GPU, KV of everyone else during
    # synchronous swap stalls, and KV held while the GPU recomputes what it had computed before.
    paused_waste_token_s: float = 0.0
    stall_waste_token_s: float = 0.0
    recompute_waste_token_s: float = 0.0
    capacity_token_s: float = 0.0  # GPU KV capacity × elapsed time
    finished: int = 0  # sequences done; the caller keeps the Sequence objects it created

    @property
    def waste_token_s(self) -> float:
        return self.paused_waste_token_s + self.stall_waste_token_s + self.recompute_waste_token_s


_fcfs = operator.attrgetter("priority_s", "rank")


class Scheduler:
    """One policy's scheduler over one block pool. Not thread-safe: the engine (or the simulator) calls add,
    resume, schedule and finish_iteration from its one loop, schedule → (copies, forward) → finish_iteration."""

    def __init__(self, policy: str, blocks: BlockManager, time_model: IterationTimeModel,
                 swap_model: SwapTimeModel, max_model_len: int, *,
                 heuristic_thresholds_s: tuple[float, float] = (4.0, 7.0), watermark: float = 0.01) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if blocks.blocks_for(max_model_len) > blocks.gpu_blocks:
            raise ValueError(f"max_model_len {max_model_len} needs {blocks.blocks_for(max_model_len)} GPU blocks, "
                             f"the pool has {blocks.gpu_blocks}")
        self.policy, self.mechanics = policy, POLICIES[policy]
        self.blocks, self.time_model, self.swap_model = blocks, time_model, swap_model
        self.max_model_len = max_model_len
        self.heuristic_thresholds_s = heuristic_thresholds_s
        self.stats = SchedulerStats()
        self._watermark_blocks = int(watermark * blocks.gpu_blocks)  # headroom kept when admitting new work
        self._seqs: dict[str, Sequence] = {}  # every unfinished sequence
        self._ranks = itertools.count()
        # State of the plan being built.
        self._plan = IterationPlan([], [], [])
        self._swap_left = 0
        self._prefill_left, self._prefilled = 0, False
        self._victims: list[Sequence] = []
        self._scheduled: set[str] = set()
        self._paused_gpu_blocks = 0

    # ---- requests in and out ----------------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        if not seq.token_ids or len(seq.token_ids) >= self.max_model_len:
            raise ValueError(f"{seq.id}: prompt of {len(seq.token_ids)} tokens; it must be 1 to "
                             f"{self.max_model_len - 1} tokens (max_model_len {self.max_model_len})")
        if seq.id in self._seqs:
            raise ValueError(f"duplicate sequence id {seq.id!r}")
        seq.status, seq.rank = WAITING, next(self._ranks)
        self._seqs[seq.id] = seq

    def resume(self, seq_id: str, returned_token_ids: list[int], now_s: float) -> None:
        """The call returned: its result is appended (up to the length cap) and must be prefilled before the next
        token is sampled, under every policy. Where the request goes depends on where its KV is."""
        seq = self._seqs[seq_id]
        if seq.status != PAUSED:
            raise RuntimeError(f"{seq_id} is {seq.status}, not paused on a call")
        room = max(self.max_model_len - 1 - len(seq.token_ids), 0)
        seq.token_ids.extend(returned_token_ids[:room])
        seq.input_end = len(seq.token_ids)
        seq.intercepted_s += now_s - seq.call_started_s
        seq.call, seq.pause_action = None, ""
        if self.mechanics.resume_at_back:
            seq.priority_s, seq.rank = now_s, next(self._ranks)
        if self.blocks.num_host(seq.id):
            seq.status = SWAPPED
        elif self.blocks.num_gpu(seq.id):
            seq.status = RUNNING
        else:
            seq.status = WAITING

    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    # ---- one iteration ------------------------------------------------------------------------------------------

    def schedule(self, now_s: float) -> IterationPlan:
        blocks = self.blocks
        blocks.release_pending()
        plan = self._plan = IterationPlan([], [], [], scheduled_s=now_s)
        self._scheduled = set()
        queues: dict[str, list[Sequence]] = {WAITING: [], RUNNING: [], SWAPPED: [], PAUSED: []}
        for seq in self._seqs.values():
            queues[seq.status].append(seq)
        running, swapped, waiting = (sorted(queues[s], key=_fcfs) for s in (RUNNING, SWAPPED, WAITING))
        on_gpu = blocks.gpu_holders
        holders = [s for s in queues[PAUSED] if s.id in on_gpu]  # paused requests whose KV occupies the GPU
        decodes = {seq.id for seq in running if seq.pending == 1}

        if self.mechanics.budgeted_swap:
            budget = swap_budget_tokens(self.time_model, self.swap_model, len(decodes)) // blocks.block_size
            plan.swap_budget_blocks = self._swap_left = budget
            # Half of the budget stays open for swap-ins of returned requests when there are any.
            reserved_in = min(budget // 2, sum(blocks.num_host(s.id) for s in swapped))
        else:
            self._swap_left, reserved_in = blocks.gpu_blocks + blocks.host_blocks, 0
        self._decide_paused(holders, running, len(decodes), now_s, self._swap_left - reserved_in)

        limit = self.time_model.saturation_tokens
        if not self.mechanics.chunked:  # whole prefills, as a non-chunking server batches them
            limit = max(limit, self.max_model_len)
        self._prefill_left, self._prefilled = max(limit - len(decodes), 0), False

        for seq in running:
            if seq.status != RUNNING:  # preempted to make room for a request ahead of it
                continue
            n = 1 if seq.id in decodes else self._chunk_len(seq)
            if n and self._make_room(seq, seq.num_computed + n, running):
                self._add_chunk(seq, n, from_prefill_budget=seq.id not in decodes)
        for seq in swapped:
            if not self._swap_in(seq, swapped):
                break
            n = self._chunk_len(seq)
            if n and self._make_room(seq, seq.num_computed + n, None):
                self._add_chunk(seq, n, from_prefill_budget=True)
        for seq in waiting:
            n = self._chunk_len(seq)
            if not n or not self._make_room(seq, seq.num_computed + n, None, admitting=True):
                break
            seq.status = RUNNING
            self._add_chunk(seq, n, from_prefill_budget=True)

        self._paused_gpu_blocks = sum(blocks.num_gpu(s.id) for s in holders if s.status == PAUSED)
        self.stats.iterations += 1
        return plan

    def finish_iteration(self, plan: IterationPlan, next_tokens: dict[str, int], now_s: float) -> list[Event]:
        """Record what the iteration computed: KV now covers each chunk, sampled tokens are appended, and a
        sequence at the end of its segment pauses on the segment's call or finishes."""
        self._account(plan, now_s)
        events: list[Event] = []
        for chunk in plan.chunks:
            seq = self._seqs[chunk.seq_id]
            seq.num_computed = chunk.start + len(chunk.token_ids)
            seq.high_water = max(seq.high_water, seq.num_computed)
            if not chunk.samples_next_token:
                continue
            token = next_tokens[seq.id]
            seq.token_ids.append(token)
            seq.generated += 1
            if seq.first_token_s is None:
                seq.first_token_s = now_s
            events.append(Event("token", seq.id, token=token))
            seq.decoded_in_segment += 1
            segment = seq.segments[seq.segment]
            if seq.decoded_in_segment < segment.decode_tokens and len(seq.token_ids) < self.max_model_len:
                continue
            if segment.call is None or len(seq.token_ids) >= self.max_model_len:
                self._finish(seq, now_s)
                events.append(Event("finish", seq.id))
            else:
                self._pause(seq, segment.call, now_s)
                events.append(Event("intercept", seq.id, call=segment.call))
        return events

    # ---- the choice for paused requests ------------------------------------------------------------------------

    def _pause(self, seq: Sequence, call: CallSpec, now_s: float) -> None:
        seq.status, seq.call, seq.call_started_s = PAUSED, call, now_s
        seq.segment += 1
        seq.decoded_in_segment = 0
        if self.policy in ("vllm", "improved_discard"):
            self._discard(seq)
        elif self.policy == "heuristic":
            # H-B: preserve short calls, swap medium ones, discard long ones, by the call's stated duration.
            short, long = self.heuristic_thresholds_s
            duration = call.duration_s or 0.0
            seq.pause_action = "preserve" if duration < short else "swap" if duration < long else "discard"
            if seq.pause_action == "discard":
                self._discard(seq)

    def interception_estimate_s(self, seq: Sequence, now_s: float) -> float:
        """T̂_int for the preserve waste: elapsed time of the call (paper §4.4: the longer a call has run, the longer it
        is expected to keep running); the oracle uses the true remaining time where the call states it."""
        elapsed = now_s - seq.call_started_s
        if self.policy == "infercept_oracle" and seq.call is not None and seq.call.duration_s is not None:
            return max(seq.call.duration_s - elapsed, 0.0)
        return elapsed

    def _decide_paused(self, holders: list[Sequence], running: list[Sequence], decode_tokens: int, now_s: float,
                       out_budget: int) -> None:
        blocks = self.blocks
        self._victims = []
        if self.policy == "swap":
            for seq in holders:
                self._swap_out_or_discard(seq)
        elif self.policy == "heuristic":
            for seq in holders:
                n = min(blocks.num_gpu(seq.id), out_budget, blocks.num_free_host)
                if seq.pause_action == "swap" and n:
                    self._swap_out(seq, n)
                    out_budget -= n
            self._victims = sorted((s for s in holders if s.id in blocks.gpu_holders),
                                   key=operator.attrgetter("call_started_s"))
        elif self.policy in ("infercept", "infercept_oracle"):
            running_tokens = sum(blocks.num_gpu(s.id) for s in running) * blocks.block_size
            scored = []
            for seq in holders:
                context = blocks.num_gpu(seq.id) * blocks.block_size
                w_preserve = preserve_waste(self.interception_estimate_s(seq, now_s), context)
                w_discard = chunked_discard_waste_code(context, decode_tokens, running_tokens, self.time_model)
                scored.append((min(w_preserve, w_discard), w_preserve, w_discard, context, seq))
            # Largest waste first gets the swap budget (the paper's policy); the rest discard or stay.
            scored.sort(key=lambda item: item[0], reverse=True)
            for waste, w_preserve, w_discard, context, seq in scored:
                n = min(blocks.num_gpu(seq.id), out_budget, blocks.num_free_host)
                if n and pipelined_swap_waste(context, self.swap_model) < waste:
                    self._swap_out(seq, n)
                    out_budget -= n
                elif w_discard < w_preserve:
                    self._discard(seq)
            self._victims = [item[-1] for item in scored if blocks.num_gpu(item[-1].id)]

    # ---- filling the iteration ----------------------------------------------------------------------------------

    def _chunk_len(self, seq: Sequence) -> int:
        if self.mechanics.chunked:
            return min(seq.pending, self._prefill_left)
        # Unchunked: the whole pending context at once; the first prefill of an iteration always goes.
        return seq.pending if seq.pending <= self._prefill_left or not self._prefilled else 0

    def _add_chunk(self, seq: Sequence, n: int, *, from_prefill_budget: bool) -> None:
        start = seq.num_computed
        end = start + n
        if start < seq.high_water:
            kind = "recompute"
        elif start < seq.prompt_len:
            kind = "prefill"
        elif start < seq.input_end:
            kind = "returned"
        else:
            kind = "decode"
        self._plan.chunks.append(ScheduledChunk(seq.id, start, seq.token_ids[start:end],
                                                self.blocks.gpu_table(seq.id), end == len(seq.token_ids), kind))
        self._scheduled.add(seq.id)
        if from_prefill_budget:
            self._prefill_left = max(self._prefill_left - n, 0)
            self._prefilled = True
        recomputed = max(min(end, seq.high_water) - start, 0)
        self._plan.recompute_tokens += recomputed
        self.stats.forward_tokens += n
        self.stats.recompute_tokens += recomputed

    def _make_room(self, seq: Sequence, total_tokens: int, running: list[Sequence] | None, *,
                   admitting: bool = False) -> bool:
        """Allocate GPU blocks for `total_tokens` positions of `seq`, taking memory from paused requests (policies
        that evict them) and then, when `running` is given, from the running requests behind it in FCFS order —
        possibly `seq` itself, which then gets nothing this iteration."""
        blocks = self.blocks
        need = blocks.blocks_for(total_tokens) - blocks.num_gpu(seq.id)
        headroom = self._watermark_blocks if admitting and need + self._watermark_blocks <= blocks.gpu_blocks else 0
        if need <= 0:
            return True
        while blocks.num_free_gpu < need + headroom:
            if self._evict_paused(need + headroom - blocks.num_free_gpu):
                continue
            if running is None:
                return False
            victim = next(s for s in reversed(running) if s.status == RUNNING and s.id not in self._scheduled)
            self._preempt(victim)
            if victim is seq:
                return False
        blocks.allocate(seq.id, total_tokens)
        return True

    def _evict_paused(self, shortfall: int) -> bool:
        while self._victims:
            victim = self._victims[0]
            on_gpu = self.blocks.num_gpu(victim.id)
            if victim.status != PAUSED or not on_gpu:
                self._victims.pop(0)
                continue
            n = min(on_gpu, shortfall, self._swap_left, self.blocks.num_free_host)
            if n:
                self._swap_out(victim, n)
            else:
                self._discard(victim)
            return True
        return False

    def _preempt(self, seq: Sequence) -> None:
        self.stats.preemptions += 1
        if self.policy == "swap" or self.mechanics.budgeted_swap:
            on_gpu = self.blocks.num_gpu(seq.id)
            if on_gpu <= min(self._swap_left, self.blocks.num_free_host):
                self._swap_out(seq, on_gpu)
                seq.status = SWAPPED
                return
        self._discard(seq)
        seq.status = WAITING

    def _swap_in(self, seq: Sequence, swapped: list[Sequence]) -> bool:
        """Bring back as much of a swapped request's KV as the budget and GPU memory allow; True when all of it
        is back (it is running again), False when the FCFS scan of the swapped queue must stop here. Memory comes
        from paused requests, then from requests behind it in the swapped queue that are partly swapped in (they
        would otherwise hold GPU blocks that the head of the queue waits for, forever)."""
        blocks = self.blocks
        on_host = blocks.num_host(seq.id)
        n = min(on_host, self._swap_left)
        while blocks.num_free_gpu < n and self._evict_paused(n - blocks.num_free_gpu):
            pass
        for behind in reversed(swapped):
            if blocks.num_free_gpu >= n or behind is seq:
                break
            if behind.status == SWAPPED and blocks.num_gpu(behind.id):
                self._preempt(behind)
        n = min(n, blocks.num_free_gpu, self._swap_left)  # evicting by swap spends the same budget
        if n <= 0:
            return False
        self._plan.swap_in.extend(blocks.swap_in(seq.id, n))
        self._spend_swap(n)
        self.stats.swap_in_blocks += n
        if n < on_host:
            return False
        seq.status = RUNNING
        return True

    def _swap_out(self, seq: Sequence, n_blocks: int) -> None:
        self._plan.swap_out.extend(self.blocks.swap_out(seq.id, n_blocks))
        self._spend_swap(n_blocks)
        self.stats.swap_out_blocks += n_blocks

    def _swap_out_or_discard(self, seq: Sequence) -> None:
        on_gpu = self.blocks.num_gpu(seq.id)
        if on_gpu <= self.blocks.num_free_host:
            self._swap_out(seq, on_gpu)
        else:
            self._discard(seq)

    def _spend_swap(self, n_blocks: int) -> None:
        self._swap_left -= n_blocks
        if not self.mechanics.budgeted_swap:
            self._plan.stall_s += self.swap_model.seconds(n_blocks * self.blocks.block_size)

    def _discard(self, seq: Sequence) -> None:
        self.blocks.free(seq.id)
        seq.num_computed = 0
        self.stats.discards += 1

    def _finish(self, seq: Sequence, now_s: float) -> None:
        seq.status, seq.finish_s = FINISHED, now_s
        self.blocks.free(seq.id)
        del self._seqs[seq.id]
        self.stats.finished += 1

    def _account(self, plan: IterationPlan, now_s: float) -> None:
        stats, bs = self.stats, self.blocks.block_size
        elapsed = max(now_s - plan.scheduled_s, 0.0)
        forward_s = max(elapsed - plan.stall_s, 0.0)
        tokens = plan.num_tokens
        paused = self._paused_gpu_blocks * bs
        active = (self.blocks.gpu_blocks - self.blocks.num_free_gpu) * bs - paused
        recompute_s = forward_s * plan.recompute_tokens / tokens if tokens else 0.0
        stats.forward_s += forward_s
        stats.recompute_s += recompute_s
        stats.stall_s += plan.stall_s
        stats.paused_waste_token_s += paused * elapsed
        stats.stall_waste_token_s += active * plan.stall_s
        stats.recompute_waste_token_s += active * recompute_s
        stats.capacity_token_s += self.blocks.gpu_blocks * bs * elapsed
