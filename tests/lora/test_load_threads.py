"""Adapter-load threads that end when idle, so no OpenMP team outlives a load."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from lorafleet.dataplane.lora.load_threads import LoadThreads


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _parallel_torch_work() -> float:
    # Large enough that torch runs it as an OpenMP parallel region (a team of threads).
    x = torch.randn(2048, 2048)
    return float((x * 2).sum())


def test_a_load_leaves_no_openmp_team_behind():
    # A ThreadPoolExecutor's idle thread keeps its OpenMP team for ever; with more team
    # threads than CPUs, OpenMP stops spinning and every parallel op of the engine's step
    # waits for its workers to wake (measured: first token 140-150 ms instead of 108).
    before = _os_threads()
    loads = LoadThreads(2, "test-load")
    results = [loads.submit(_parallel_torch_work) for _ in range(4)]
    assert all(isinstance(f.result(timeout=60), float) for f in results)
    _wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("test-load")])
    _wait_for(lambda: _os_threads() <= before)


def test_runs_every_call_at_most_max_workers_at_once():
    loads = LoadThreads(2, "test-bound")
    lock, running, peak = threading.Lock(), [0], [0]

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * i

    futures = [loads.submit(work, i) for i in range(10)]
    assert [f.result(timeout=10) for f in futures] == [i * i for i in range(10)]
    assert peak[0] == 2
    loads.shutdown(wait=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("test-bound")]


def test_an_exception_reaches_the_future_and_the_thread_goes_on():
    loads = LoadThreads(1, "test-error")

    def fail() -> None:
        raise ValueError("bad adapter")

    failed, fine = loads.submit(fail), loads.submit(lambda: 7)
    with pytest.raises(ValueError, match="bad adapter"):
        failed.result(timeout=10)
    assert fine.result(timeout=10) == 7


def test_shutdown_cancels_what_has_not_started_and_refuses_more():
    loads = LoadThreads(1, "test-shutdown")
    gate = threading.Event()
    first = loads.submit(gate.wait, 10)
    queued = loads.submit(lambda: "never")
    _wait_for(first.running)
    loads.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        loads.submit(lambda: None)
    gate.set()
    assert first.result(timeout=10) is True
    loads.shutdown(wait=True)
