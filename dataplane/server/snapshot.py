"""What the engine thread publishes for everyone else: load and adapter residency.

Built on the engine thread between steps (see EngineBridge), read by the servicers, the
heartbeat and the metrics from any thread. A snapshot is immutable, so a reader never
sees half a step.
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

    def tier_of(self, digest: str) -> str | None:
        """"device", "host", or None when only the source has it."""
        return self.tiers.get(digest)

    @property
    def taken_at_unix(self) -> float:
        """When the engine published this snapshot, in Unix seconds."""
        return time.time() - (time.monotonic() - self.taken_at)


def take_snapshot(engine, host) -> EngineSnapshot:
    """Reads the engine and the host tier; call on the engine thread only."""
    waiting = engine.scheduler.waiting
    # Built after every step: a set over the waiting queue only when there is one.
    waiting_adapters = frozenset(r.adapter for r in waiting if r.adapter is not None) \
        if waiting else frozenset()
    on_host = host.held()
    on_device = engine.scheduler.adapters.slots.held()
    tiers = dict.fromkeys(on_host, "host") | dict.fromkeys(on_device, "device")
    counts = {"device": len(on_device), "host": len(on_host)}
    return EngineSnapshot(engine.stats(), types.MappingProxyType(tiers),
                          types.MappingProxyType(counts), time.monotonic(), waiting_adapters)
