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
    """The engine's load and each adapter digest's tier ("device" or "host")."""

    stats: EngineStats
    tiers: Mapping[str, str]
    adapter_counts: Mapping[str, int]
    taken_at: float

    def tier_of(self, digest: str) -> str | None:
        """"device", "host", or None when only the source has it."""
        return self.tiers.get(digest)



def take_snapshot(engine, cache) -> EngineSnapshot:
    """Reads the engine and the adapter cache; call on the engine thread only."""
    return EngineSnapshot(engine.stats(), types.MappingProxyType(cache.tiers()),
                          types.MappingProxyType(cache.counts()), time.monotonic())
