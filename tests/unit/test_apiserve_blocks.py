"""Paged KV accounting: tables stay a GPU prefix then a host suffix in sequence order, swaps move blocks from the
GPU tail and back to it, nothing is lost or double-owned."""
import pytest

from models.apiserve.blocks import GPU, HOST, BlockManager


def owned(manager: BlockManager) -> list[tuple[str, int]]:
    return [entry for seq in manager.leaked() for entry in manager.table(seq)]


def test_allocate_covers_the_tokens_and_grows_in_place():
    m = BlockManager(gpu_blocks=8, host_blocks=4, block_size=16)
    assert m.allocate("a", 17) == m.gpu_table("a") and m.num_gpu("a") == 2
    first = m.gpu_table("a")
    m.allocate("a", 32)  # still two blocks
    assert m.gpu_table("a") == first
    m.allocate("a", 33)
    assert m.gpu_table("a")[:2] == first and m.num_gpu("a") == 3 and m.num_free_gpu == 5
    with pytest.raises(RuntimeError):
        m.allocate("b", 6 * 16)  # five free


def test_swap_out_takes_the_tail_and_swap_in_restores_the_order():
    m = BlockManager(gpu_blocks=8, host_blocks=4, block_size=4)
    m.allocate("a", 12)
    g0, g1, g2 = m.gpu_table("a")
    [(src, h2)] = m.swap_out("a", 1)
    assert src == g2 and m.table("a") == [(GPU, g0), (GPU, g1), (HOST, h2)]
    [(src, h1)] = m.swap_out("a", 1)
    assert src == g1 and m.table("a") == [(GPU, g0), (HOST, h1), (HOST, h2)]
    with pytest.raises(RuntimeError):
        m.allocate("a", 16)  # cannot grow past a swapped tail
    [(src, g)] = m.swap_in("a", 1)
    assert src == h1 and m.table("a") == [(GPU, g0), (GPU, g), (HOST, h2)]
    m.swap_in("a", 1)
    assert [d for d, _ in m.table("a")] == [GPU] * 3 and m.num_host("a") == 0
    m.allocate("a", 16)
    assert m.num_gpu("a") == 4


def test_blocks_are_never_double_owned_and_pools_return_to_empty():
    m = BlockManager(gpu_blocks=6, host_blocks=6, block_size=4)
    m.allocate("a", 8)
    m.allocate("b", 12)
    m.swap_out("a", 2)
    m.swap_out("b", 1)
    m.swap_in("a", 1)
    entries = owned(m)
    assert len(entries) == len(set(entries)) == 5
    assert m.leaked() == {"a": (1, 1), "b": (2, 1)}
    with pytest.raises(AssertionError):
        m.assert_empty()
    m.free("a")
    m.free("b")
    m.assert_empty()


def test_freed_host_blocks_are_reused_only_after_the_plan_ran():
    """A host block swapped in from (or dropped) may still be read or written by the plan being built."""
    m = BlockManager(gpu_blocks=4, host_blocks=1, block_size=4)
    m.allocate("a", 4)
    m.allocate("b", 4)
    m.swap_out("a", 1)
    m.swap_in("a", 1)
    assert m.num_free_host == 0
    with pytest.raises(RuntimeError):
        m.swap_out("b", 1)
    m.release_pending()
    assert m.num_free_host == 1
    m.swap_out("b", 1)


def test_bad_swaps_are_refused():
    m = BlockManager(gpu_blocks=2, host_blocks=1, block_size=4)
    m.allocate("a", 8)
    with pytest.raises(RuntimeError):
        m.swap_out("a", 2)  # one host block
    with pytest.raises(RuntimeError):
        m.swap_in("a", 1)  # nothing on host
    with pytest.raises(RuntimeError):
        m.swap_out("a", -1)
