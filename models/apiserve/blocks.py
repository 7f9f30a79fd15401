"""Paged KV accounting: which GPU and host blocks each sequence's KV occupies (vLLM's block manager).

A sequence's block table is always a GPU prefix followed by a host suffix, in sequence order: swap-out moves
blocks from the tail of the GPU part, swap-in brings back the head of the host part, so a partly swapped
sequence stays contiguous on each device and chunked swaps can span iterations. The scheduler owns this
accounting; the runner only moves tensors along the (source, destination) mappings it returns.
"""
from __future__ import annotations

from collections.abc import KeysView

GPU, HOST = "gpu", "host"


class BlockManager:
    def __init__(self, gpu_blocks: int, host_blocks: int, block_size: int) -> None:
        if gpu_blocks < 1 or host_blocks < 0 or block_size < 1:
            raise ValueError(f"bad pool sizes: gpu {gpu_blocks}, host {host_blocks}, block size {block_size}")
        self.gpu_blocks, self.host_blocks, self.block_size = gpu_blocks, host_blocks, block_size
        # Stacks: the most recently freed block is reused first.
        self._free_gpu = list(range(gpu_blocks - 1, -1, -1))
        self._free_host = list(range(host_blocks - 1, -1, -1))
        # A freed host block may still be the source or destination of a copy in the plan being built (swapped in
        # from, or swapped out to and then discarded), so it rejoins the free list only at `release_pending()`,
        # once that plan has run. A freed GPU block is reusable at once: copies run before the forward writes.
        self._host_pending_free: list[int] = []
        self._gpu: dict[str, list[int]] = {}
        self._host: dict[str, list[int]] = {}

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    @property
    def num_free_gpu(self) -> int:
        return len(self._free_gpu)

    @property
    def num_free_host(self) -> int:
        return len(self._free_host)

    def num_gpu(self, seq_id: str) -> int:
        return len(self._gpu.get(seq_id, ()))

    def num_host(self, seq_id: str) -> int:
        return len(self._host.get(seq_id, ()))

    @property
    def gpu_holders(self) -> KeysView[str]:
        """Live view of the sequences that hold at least one GPU block."""
        return self._gpu.keys()

    def gpu_table(self, seq_id: str) -> list[int]:
        return list(self._gpu.get(seq_id, ()))

    def table(self, seq_id: str) -> list[tuple[str, int]]:
        """The whole block table in sequence order: (device, block id)."""
        return [(GPU, b) for b in self._gpu.get(seq_id, ())] + [(HOST, b) for b in self._host.get(seq_id, ())]

    def allocate(self, seq_id: str, n_tokens: int) -> list[int]:
        """Grow the sequence's GPU table to cover `n_tokens` positions; returns the newly allocated blocks."""
        if self._host.get(seq_id):
            raise RuntimeError(f"{seq_id}: cannot grow a sequence whose tail is swapped out")
        table = self._gpu.setdefault(seq_id, [])
        missing = self.blocks_for(n_tokens) - len(table)
        if missing > len(self._free_gpu):
            raise RuntimeError(f"{seq_id}: needs {missing} GPU blocks, {len(self._free_gpu)} free")
        new = [self._free_gpu.pop() for _ in range(max(missing, 0))]
        table.extend(new)
        return new

    def free(self, seq_id: str) -> None:
        self._free_gpu.extend(reversed(self._gpu.pop(seq_id, [])))
        self._host_pending_free.extend(self._host.pop(seq_id, []))

    def swap_out(self, seq_id: str, n_blocks: int) -> list[tuple[int, int]]:
        """Move the last `n_blocks` GPU blocks of the sequence to host: [(gpu block, host block)] copies."""
        gpu = self._gpu.get(seq_id, [])
        if n_blocks < 0 or n_blocks > len(gpu) or n_blocks > len(self._free_host):
            raise RuntimeError(f"{seq_id}: cannot swap out {n_blocks} blocks ({len(gpu)} on GPU, "
                               f"{len(self._free_host)} host blocks free)")
        moved = gpu[len(gpu) - n_blocks:]
        del gpu[len(gpu) - n_blocks:]
        if not gpu:
            self._gpu.pop(seq_id, None)
        hosts = [self._free_host.pop() for _ in moved]
        self._host[seq_id] = hosts + self._host.get(seq_id, [])
        self._free_gpu.extend(reversed(moved))
        return list(zip(moved, hosts))

    def swap_in(self, seq_id: str, n_blocks: int) -> list[tuple[int, int]]:
        """Bring the first `n_blocks` host blocks of the sequence back to GPU: [(host block, gpu block)] copies."""
        host = self._host.get(seq_id, [])
        if n_blocks < 0 or n_blocks > len(host) or n_blocks > len(self._free_gpu):
            raise RuntimeError(f"{seq_id}: cannot swap in {n_blocks} blocks ({len(host)} on host, "
                               f"{len(self._free_gpu)} GPU blocks free)")
        moved, self._host[seq_id] = host[:n_blocks], host[n_blocks:]
        if not self._host[seq_id]:
            del self._host[seq_id]
        gpus = [self._free_gpu.pop() for _ in moved]
        self._gpu.setdefault(seq_id, []).extend(gpus)
        self._host_pending_free.extend(moved)
        return list(zip(moved, gpus))

    def release_pending(self) -> None:
        """The previous plan's copies are done: the host blocks freed while building it are free to reuse."""
        self._free_host.extend(self._host_pending_free)
        self._host_pending_free.clear()

    def leaked(self) -> dict[str, tuple[int, int]]:
        """Sequences still holding blocks, with (GPU, host) counts: empty once every request has finished."""
        ids = set(self._gpu) | set(self._host)
        return {s: (self.num_gpu(s), self.num_host(s)) for s in sorted(ids)}

    def assert_empty(self) -> None:
        leaked = self.leaked()
        free_host = len(self._free_host) + len(self._host_pending_free)
        if leaked or len(self._free_gpu) != self.gpu_blocks or free_host != self.host_blocks:
            raise AssertionError(f"KV blocks leaked: {leaked}; free GPU {len(self._free_gpu)}/{self.gpu_blocks}, "
                                 f"free host {free_host}/{self.host_blocks}")
