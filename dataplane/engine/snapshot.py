"""What the engine publishes for everyone else: load and adapter residency.

The engine builds it (`Engine.snapshot`) and its loop sends it between steps (see
dataplane/engine_process/loop.py), from its thread or its own process; the servicers, the
heartbeat and the metrics read it from any thread. A snapshot is immutable, so a reader
never sees half a step; it pickles, so it can cross from the engine's process to the
server's.
"""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import Mapping

from lorafleet.dataplane.engine.outputs import EngineStats


@dataclasses.dataclass(frozen=True)
class EngineSnapshot:
    """The engine's load, each adapter digest's tier ("device" or "host"), and the
    digests that have requests waiting to be scheduled."""

    stats: EngineStats
    tiers: Mapping[str, str]
    adapter_counts: Mapping[str, int]
    taken_at: float  # time.monotonic()
    waiting_adapters: frozenset[str] = frozenset()

    def content_key(self) -> tuple:
        """Everything but the time it was taken: equal keys, nothing to republish."""
        return (self.stats, dict(self.tiers), dict(self.adapter_counts),
                self.waiting_adapters)

    def __reduce__(self):
        # MappingProxyType does not pickle: cross as dicts, wrapped again on arrival.
        return (_rebuild, (self.stats, dict(self.tiers), dict(self.adapter_counts),
                           self.taken_at, self.waiting_adapters))

    def tier_of(self, digest: str) -> str | None:
        """"device", "host", or None when only the source has it."""
        return self.tiers.get(digest)

    @property
    def taken_at_unix(self) -> float:
        """When the engine published this snapshot, in Unix seconds."""
        return time.time() - (time.monotonic() - self.taken_at)


def _rebuild(stats, tiers, counts, taken_at, waiting) -> EngineSnapshot:
    return EngineSnapshot(stats, types.MappingProxyType(tiers),
                          types.MappingProxyType(counts), taken_at, waiting)


def snapshot_of(stats: EngineStats, on_device: list, on_host: list,
                waiting_adapters: frozenset) -> EngineSnapshot:
    """The snapshot of an engine whose adapters sit `on_device` and `on_host`."""
    tiers = dict.fromkeys(on_host, "host") | dict.fromkeys(on_device, "device")
    counts = {"device": len(on_device), "host": len(on_host)}
    return EngineSnapshot(stats, types.MappingProxyType(tiers),
                          types.MappingProxyType(counts), time.monotonic(), waiting_adapters)
