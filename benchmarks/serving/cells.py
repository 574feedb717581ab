"""One measured cell: a workload sent to a target, observed (tiers, loads, CPU), summarized."""

from __future__ import annotations

import dataclasses

from benchmarks.serving import load
from benchmarks.serving.observe import CpuClock, TierWatch, counter_delta, read_adapter_counters
from benchmarks.serving.report import summarize
from benchmarks.serving.transports import ClientTransport, GrpcTransport, HttpTransport
from benchmarks.serving.workload import RequestSpec


@dataclasses.dataclass(frozen=True)
class Target:
    """Where requests go: a worker (or gateway) address, and what else can be observed."""

    address: str
    metrics_url: str | None = None
    http_url: str | None = None
    base_model: str = ""
    pid: int | None = None  # the worker's process, when this benchmark started it
    admin_address: str | None = None  # WorkerService, for tiers (default: address)
    api_key: str | None = None  # sent as `authorization: Bearer KEY`


@dataclasses.dataclass(frozen=True)
class Mode:
    """How to send: closed loop at `concurrency`, open loop (Poisson send times in the
    requests), or all at once (`burst`); stop sending after `duration` when given."""

    concurrency: int | None = None
    burst: bool = False
    duration: float | None = None
    transport: str = "grpc"
    timeout: float = 600.0
    tier_poll: float = 0.1


def make_transport(target: Target, mode: Mode):
    """The transport `mode.transport` names, connected to `target`."""
    if mode.transport == "http":
        if not target.http_url:
            raise ValueError("--transport http needs the worker's OpenAI HTTP URL (--http-url)")
        return HttpTransport(target.http_url, target.base_model, mode.timeout, target.api_key)
    if mode.transport == "client":
        return ClientTransport(target.address, mode.timeout, target.api_key)
    return GrpcTransport(target.address, mode.timeout, target.api_key)


async def run_cell(target: Target, mode: Mode, requests, **labels) -> tuple[dict, load.LoadRun]:
    """Sends `requests` as `mode` says; returns the report row (with `labels`) and the run."""
    transport = make_transport(target, mode)
    before = read_adapter_counters(target.metrics_url)
    try:
        async with TierWatch(target.admin_address or target.address, mode.tier_poll,
                             target.api_key) as tiers:
            with CpuClock(target.pid) as cpu:
                run = await _send(transport, mode, requests, tiers)
    finally:
        await transport.close()
    counters = counter_delta(before, read_adapter_counters(target.metrics_url))
    row = {**labels, **summarize(run), "transport": mode.transport,
           "concurrency": mode.concurrency, "adapter_loads": counters.get("loads"),
           "adapter_evictions": counters.get("evictions"),
           "client_cpu_s": round(cpu.client, 3),
           "worker_cpu_s": None if cpu.worker is None else round(cpu.worker, 3)}
    tokens = max(row["output_tokens"], 1)
    row["client_cpu_ms_per_token"] = round(1000 * cpu.client / tokens, 4)
    return row, run


async def _send(transport, mode: Mode, requests: list[RequestSpec] | object, tiers):
    if mode.burst:
        return await load.run_burst(transport, requests, tiers=tiers)
    if mode.concurrency is not None:
        return await load.run_closed_loop(transport, requests, mode.concurrency, tiers=tiers,
                                          duration=mode.duration)
    return await load.run_open_loop(transport, requests, tiers=tiers, duration=mode.duration)
