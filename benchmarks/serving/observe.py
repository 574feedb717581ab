"""What the benchmark reads from the worker besides its answers: adapter tiers (polling
WorkerService.ListAdapters), adapter loads and evictions (/metrics), and CPU time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.request

import grpc

from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc

TIER_NAMES = {wpb.TIER_DEVICE: "device", wpb.TIER_HOST: "host", wpb.TIER_SOURCE: "source"}
# Every tier a request can be counted under: adapter tiers, the base model, and unknown
# (no WorkerService to ask, e.g. behind a gateway, or a name the worker does not list).
REQUEST_TIERS = ("device", "host", "source", "base", "unknown")


class TierWatch:
    """Keeps the latest tier of each adapter name's default version, polling ListAdapters
    every `interval` seconds; `tier_of(name)` is what a request sent now would meet.

    A poll is a snapshot: an adapter that moved between two polls is counted in the tier
    of the last poll, so tiers at arrival are exact only to within `interval`. An interval
    of 0 polls nothing (every tier is then 'unknown', 'base' aside).
    """

    def __init__(self, address: str, interval: float = 0.1, api_key: str | None = None):
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = wpb_grpc.WorkerServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._interval = interval
        self._tiers: dict[str, str] = {}
        self._task: asyncio.Task | None = None
        self.is_available = True

    async def poll(self) -> dict[str, str]:
        """Reads ListAdapters now; returns {name or name@N: tier}."""
        try:
            response = await self._stub.ListAdapters(wpb.ListAdaptersRequest(), timeout=5,
                                                     metadata=self._metadata)
        except grpc.aio.AioRpcError:
            # A gateway has no WorkerService, a tenant key may not read it: tiers unknown.
            self.is_available = False
            return {}
        tiers = {}
        for entry in response.adapters:
            tier = TIER_NAMES.get(entry.tier, "unknown")
            tiers[f"{entry.adapter}@{entry.version}"] = tier
            if entry.is_default:
                tiers[entry.adapter] = tier
        self._tiers = tiers
        return tiers

    def tier_of(self, adapter: str) -> str:
        """The tier a request for `adapter` meets now ('base' for the base model)."""
        if not adapter:
            return "base"
        return self._tiers.get(adapter, "unknown")

    async def __aenter__(self) -> TierWatch:
        if self._interval <= 0:  # asked not to touch WorkerService: tiers stay unknown
            self.is_available = False
            return self
        await self.poll()
        if self.is_available:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()

    async def _run(self) -> None:
        while self.is_available:
            await asyncio.sleep(self._interval)
            await self.poll()


_COUNTERS = {"lorafleet_adapter_loads_total": "loads",
             "lorafleet_adapter_evictions_total": "evictions"}


def read_adapter_counters(metrics_url: str | None) -> dict[str, dict[str, float]] | None:
    """{'loads': {tier: n}, 'evictions': {tier: n}} from the worker's /metrics (successful
    loads only); None when there is no URL or it cannot be read."""
    if not metrics_url:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    counters: dict[str, dict[str, float]] = {"loads": {}, "evictions": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind = _COUNTERS.get(sample.name)
            if kind is None or sample.labels.get("outcome", "ok") != "ok":
                continue
            tier = sample.labels.get("tier", "")
            counters[kind][tier] = counters[kind].get(tier, 0.0) + sample.value
    return counters


def counter_delta(before: dict | None, after: dict | None) -> dict[str, dict[str, int]]:
    """after - before per kind and tier ({} when either could not be read)."""
    if before is None or after is None:
        return {}
    return {kind: {tier: int(value - before[kind].get(tier, 0))
                   for tier, value in sorted(after[kind].items())} for kind in after}


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` so far (None: not on Linux, or gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """CPU seconds used by this process (the client) and by the worker, over a block."""

    def __init__(self, worker_pid: int | None):
        self._pid = worker_pid
        self.client = self.worker = None

    def __enter__(self) -> CpuClock:
        self._client0, self._worker0 = time.process_time(), process_cpu_seconds(self._pid)
        return self

    def __exit__(self, *exc_info) -> None:
        self.client = time.process_time() - self._client0
        worker = process_cpu_seconds(self._pid)
        self.worker = None if worker is None or self._worker0 is None else worker - self._worker0
