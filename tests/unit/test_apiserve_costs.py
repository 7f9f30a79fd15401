"""Waste formulas of InferCept (arXiv 2402.01869, §3.2) on hand-computed small cases, and the scheduler's action
flipping exactly where they say it should."""
import pytest

from models.apiserve.blocks import BlockManager
from models.apiserve.costs import (GPTJ_6B_A100, IterationTimeModel, SwapTimeModel, chunked_discard_waste_code,
                                   chunked_discard_waste_paper, discard_waste, pipelined_swap_waste, preserve_waste,
                                   swap_budget_tokens, swap_waste)
from models.apiserve.scheduler import PAUSED, Scheduler, Sequence
from models.apiserve.workload import CallSpec, Segment

TIME = IterationTimeModel(a_ms_per_token=1.0, c_ms=10.0, saturation_tokens=10)  # T(n) = n + 10 ms, S = 10
SWAP = SwapTimeModel(bytes_per_token=1000, bandwidth_bytes_per_s=1e6)  # 1 ms per token


def test_time_models_and_swap_budget():
    assert TIME.forward_ms(5) == 15.0
    assert SWAP.seconds(5) == pytest.approx(0.005)
    assert SWAP.tokens_within(0.0155) == 15
    assert swap_budget_tokens(TIME, SWAP, batch_tokens=5) == 15  # T_swap(N) = T_fwd(5) = 15 ms


def test_naive_wastes():
    assert preserve_waste(2.0, 100) == 200.0
    assert discard_waste(10, 30, TIME) == pytest.approx(0.02 * 10 + 0.02 * 30)  # T(10) = 20 ms
    assert swap_waste(10, 40, SWAP) == pytest.approx(2 * 0.010 * 40)
    assert pipelined_swap_waste(10, SWAP) == pytest.approx(0.010 * 10)


def test_chunked_discard_paper_form():
    # C = 20 in n = 2 chunks, 30 other tokens: T(20)·20/2 + 2·T(10)·30 = 0.03·10 + 2·0.02·30
    assert chunked_discard_waste_paper(20, 30, 2, TIME) == pytest.approx(0.3 + 1.2)
    # One chunk is the naive discard with the held term halved.
    assert chunked_discard_waste_paper(10, 30, 1, TIME) == pytest.approx(0.02 * 10 / 2 + 0.02 * 30)


@pytest.mark.parametrize("context, decodes, running, expected", [
    # c_h = 10 − 4 = 6, n = ceil(25/6) − 1 = 4, last = 1, T(S) = 20 ms:
    # 0.02·6·(4·5/2) + 0.001·6·4·100 + 0.001·1·(100 + 1)
    (25, 4, 100, 1.2 + 2.4 + 0.101),
    # c_h divides C: n = 1 and the last chunk counts as neither (the code's form, kept as is)
    (12, 4, 100, 0.02 * 6 * 1 + 0.001 * 6 * 1 * 100),
    # decodes fill the saturation budget: chunks of one token, n = 2
    (3, 10, 100, 0.02 * 1 * 3 + 0.001 * 1 * 2 * 100),
    # fits in one chunk: only the partial-chunk term
    (5, 0, 50, 0.001 * 5 * 55),
])
def test_chunked_discard_code_form(context, decodes, running, expected):
    assert chunked_discard_waste_code(context, decodes, running, TIME) == pytest.approx(expected)


def test_chunking_halves_the_held_part_of_discard_waste():
    """Paper §4.2: chunked recompute roughly halves discard waste when nobody else is running."""
    naive = discard_waste(1000, 0, GPTJ_6B_A100.time_model)
    chunked = chunked_discard_waste_paper(1000, 0, 3, GPTJ_6B_A100.time_model)
    assert chunked == pytest.approx(naive / 2)


# ---- the scheduler's choice for one paused request ------------------------------------------------------------

PROMPT = 64  # 4 blocks of 16


def paused_request(swap_model: SwapTimeModel, policy: str = "infercept") -> tuple[Scheduler, Sequence, float]:
    preset = GPTJ_6B_A100
    blocks = BlockManager(gpu_blocks=64, host_blocks=64, block_size=16)
    scheduler = Scheduler(policy, blocks, preset.time_model, swap_model, max_model_len=256)
    seq = Sequence("a", 0.0, list(range(PROMPT)),
                   [Segment(1, CallSpec("timed_stub", duration_s=30.0, returned_tokens=2)), Segment(1)])
    scheduler.add(seq)
    plan = scheduler.schedule(0.0)
    events = scheduler.finish_iteration(plan, {"a": 1}, now_s=0.01)
    assert [e.kind for e in events] == ["token", "intercept"] and seq.status == PAUSED
    return scheduler, seq, 0.01


def where_kv_is(scheduler: Scheduler, seq: Sequence) -> str:
    gpu, host = scheduler.blocks.num_gpu(seq.id), scheduler.blocks.num_host(seq.id)
    return "swap" if host else "preserve" if gpu else "discard"


def test_call_just_started_is_preserved_even_with_swap_budget():
    scheduler, seq, paused_at = paused_request(GPTJ_6B_A100.swap_model)
    plan = scheduler.schedule(paused_at)  # T̂ = 0: preserving wastes nothing
    assert where_kv_is(scheduler, seq) == "preserve" and not plan.swap_out


def test_long_call_with_swap_budget_is_swapped_within_the_budget():
    scheduler, seq, paused_at = paused_request(GPTJ_6B_A100.swap_model)
    plan = scheduler.schedule(paused_at + 5.0)
    assert where_kv_is(scheduler, seq) == "swap"
    assert 0 < len(plan.swap_out) <= plan.swap_budget_blocks


def test_without_swap_budget_the_choice_flips_from_preserve_to_discard_where_the_wastes_cross():
    no_pcie = SwapTimeModel(GPTJ_6B_A100.swap_model.bytes_per_token, bandwidth_bytes_per_s=1.0)
    context = PROMPT  # four full blocks on GPU, nobody else running
    w_discard = chunked_discard_waste_code(context, 0, 0, GPTJ_6B_A100.time_model)
    crossing = w_discard / context  # T̂ at which T̂·C = W_CD
    for t_hat, expected in ((0.5 * crossing, "preserve"), (2.0 * crossing, "discard")):
        scheduler, seq, paused_at = paused_request(no_pcie)
        plan = scheduler.schedule(paused_at + t_hat)
        assert plan.swap_budget_blocks == 0
        assert where_kv_is(scheduler, seq) == expected, t_hat


def test_oracle_uses_the_remaining_time_not_the_elapsed_time():
    no_pcie = SwapTimeModel(GPTJ_6B_A100.swap_model.bytes_per_token, bandwidth_bytes_per_s=1.0)
    # The call lasts 30 s: right after it starts the estimator sees T̂ = 0 (preserve), the oracle ~30 s (discard).
    estimator, seq_e, t = paused_request(no_pcie, "infercept")
    oracle, seq_o, _ = paused_request(no_pcie, "infercept_oracle")
    estimator.schedule(t)
    oracle.schedule(t)
    assert where_kv_is(estimator, seq_e) == "preserve"
    assert where_kv_is(oracle, seq_o) == "discard"
    assert oracle.interception_estimate_s(seq_o, t + 10.0) == pytest.approx(20.0)
