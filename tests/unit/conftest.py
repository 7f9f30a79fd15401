"""Fixtures shared by unit tests that opt in."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny-model tests: on matrices this small threads only add
    synchronisation, and on a busy 2-core machine they stall (the APIServe engine tests run 6x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
