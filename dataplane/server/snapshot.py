"""What the engine loop publishes for everyone else: load and adapter residency.

Built by the engine loop between steps (see engine_loop.py), on its thread or in its own
process, and read by the servicers, the heartbeat and the metrics from any thread. A
snapshot is immutable, so a reader never sees half a step; it pickles, so it can cross
from the engine's process to the server's.
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


def take_snapshot(engine, host) -> EngineSnapshot:
    """Reads the engine and the host tier; call from the engine loop only."""
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
