"""Sends a workload: open loop (each request at its Poisson send time, whatever the
server's state) or closed loop (a fixed number of requests in flight), and collects a
`Result` per request."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Iterable, Iterator

from benchmarks.serving.transports import Result
from benchmarks.serving.workload import RequestSpec


@dataclasses.dataclass
class LoadRun:
    """The results of one run and its span: first send to last answer."""

    results: list[Result]
    started: float
    ended: float
    max_send_lag: float = 0.0  # open loop: how late the client sent, at worst (seconds)

    @property
    def duration(self) -> float:
        """Seconds from the first send to the end of the last stream."""
        return self.ended - self.started


async def _send_one(transport, spec: RequestSpec, tiers, results: list[Result]) -> None:
    result = Result(spec, sent=time.perf_counter(),
                    tier=tiers.tier_of(spec.adapter) if tiers else "unknown")
    results.append(result)
    try:
        await transport.send(result)
    except Exception as exc:  # noqa: BLE001 - a transport failure is one failed request
        result.error = type(exc).__name__
    result.done = time.perf_counter()


async def run_open_loop(transport, requests: Iterable[RequestSpec], *, tiers=None,
                        duration: float | None = None) -> LoadRun:
    """Sends each request at `send_at` seconds after the start (Poisson arrivals), stops
    sending after `duration` seconds when given, and waits for every answer."""
    results: list[Result] = []
    tasks, lag = [], 0.0
    started = time.perf_counter()
    for spec in requests:
        if duration is not None and spec.send_at > duration:
            break
        delay = started + spec.send_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, -delay)
        tasks.append(asyncio.create_task(_send_one(transport, spec, tiers, results)))
    await asyncio.gather(*tasks)
    return LoadRun(results, started, time.perf_counter(), lag)


async def run_closed_loop(transport, requests: Iterable[RequestSpec], concurrency: int, *,
                          tiers=None, duration: float | None = None) -> LoadRun:
    """Keeps `concurrency` requests in flight until the requests run out or, when given,
    `duration` seconds have passed (requests in flight then are waited for)."""
    results: list[Result] = []
    source: Iterator[RequestSpec] = iter(requests)
    started = time.perf_counter()
    stop_at = None if duration is None else started + duration

    async def lane() -> None:
        for spec in source:  # shared iterator: each spec is sent by exactly one lane
            await _send_one(transport, spec, tiers, results)
            if stop_at is not None and time.perf_counter() >= stop_at:
                return

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return LoadRun(results, started, time.perf_counter())


async def run_burst(transport, requests: Iterable[RequestSpec], *, tiers=None) -> LoadRun:
    """Sends every request at once."""
    results: list[Result] = []
    started = time.perf_counter()
    await asyncio.gather(*(_send_one(transport, spec, tiers, results) for spec in requests))
    return LoadRun(results, started, time.perf_counter())


def first(requests: Iterable[RequestSpec], count: int) -> list[RequestSpec]:
    """The first `count` requests."""
    return list(itertools.islice(requests, count))
