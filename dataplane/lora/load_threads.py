"""Threads for torch work beside the engine (adapter loads, a build): they end when idle.

Why not a ThreadPoolExecutor: its threads live for ever, and a thread that ran a
parallel torch op (a load converts and copies weights) keeps its own OpenMP team of
workers for as long as it lives. OpenMP (libgomp, which torch's CPU wheels use) counts
every team's threads in the process, and once they outnumber the CPUs it cuts the spin
of idle workers to a few iterations before they sleep: every parallel op of the engine's
step then waits for its workers to wake. Measured on the 2-core machine (small model,
one request at a time, 64-token prompt, 20 requests, median; docs/benchmarks.md): with
the idle load threads of start-up alive in the engine process, the first token took
138-150 ms through `lorafleet serve` (four runs); with load threads that end, 108 ms
(two runs), where the in-process engine took 118-121.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any


class LoadThreads:
    """Runs submitted calls on at most `max_workers` threads, started when work arrives
    and ended when none is left (the part of concurrent.futures.Executor used here)."""

    def __init__(self, max_workers: int, name: str):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable, tuple]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._num_running = 0
        self._is_shut = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Queues `fn(*args)`; its Future holds the result or the exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._is_shut:
                raise RuntimeError("cannot submit after shutdown")
            self._work.put((future, fn, args))
            if self._num_running < self._max_workers:
                self._num_running += 1
                threading.Thread(target=self._run, name=f"{self._name}_{self._num_running}",
                                 daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Takes no more work; with `cancel_futures`, cancels what has not started; with
        `wait`, returns once the running calls are done."""
        with self._lock:
            self._is_shut = True
        if cancel_futures:
            while True:
                try:
                    future, _, _ = self._work.get_nowait()
                except queue.Empty:
                    break
                future.cancel()
        if wait:
            with self._lock:
                self._idle.wait_for(lambda: self._num_running == 0)

    def _run(self) -> None:
        while True:
            with self._lock:
                try:
                    future, fn, args = self._work.get_nowait()
                except queue.Empty:
                    self._num_running -= 1  # idle: end, and free the OpenMP team
                    self._idle.notify_all()
                    return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the Future carries it
                future.set_exception(exc)
