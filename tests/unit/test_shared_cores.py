"""Pipeline processes running at once share the cores out instead of each taking all of them."""
from __future__ import annotations

import os

import pytest

from settings import shared_cores, threads_per_process


@pytest.mark.parametrize(("cores", "concurrency", "threads"), [(2, 2, "1"), (16, 2, "8"), (16, 5, "3"), (2, 4, "1")])
def test_each_process_gets_its_share_of_the_cores(monkeypatch, cores, concurrency, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert threads_per_process(concurrency) == threads


def test_a_users_own_thread_setting_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert threads_per_process(2) == "3"


def test_the_setting_holds_inside_only(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    with shared_cores(4) as threads:
        assert threads == os.environ["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in os.environ
