"""The scheduler's view of adapter residency: which adapters can run this step.

The adapter cache (device slots, host LRU, source) implements `AdapterGate`; the
scheduler only asks whether an adapter is ready and asks for it to be loaded, so it stays
pure Python and never waits on a load.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Protocol


class AdapterGate(Protocol):
    """What the scheduler needs from the adapter cache.

    `max_loras` bounds the distinct non-None adapters in one step (None: no bound).
    `is_ready(key)` is true when the adapter's weights are in a device slot.
    `request_load(key)` starts a background load; it must return at once and may be called
    again for a load already under way.
    `take_failures()` returns {key: reason} for adapters whose load failed since the last
    call; the engine ends their waiting requests with that reason.
    `can_admit(key)` is asked before a *waiting* request starts: False holds new requests of
    an adapter back (its running ones continue) so its slot can drain for an adapter that
    has waited for one — otherwise steady traffic to resident adapters starves a cold one.
    """

    max_loras: int | None

    def is_ready(self, key: Hashable) -> bool:
        """True when `key`'s weights can be used in the next step."""
        ...

    def request_load(self, key: Hashable) -> None:
        """Starts loading `key` if it is not loaded or loading; never blocks."""
        ...

    def can_admit(self, key: Hashable) -> bool:
        """True when a new request of `key` may start running now."""
        ...

    def take_failures(self) -> Mapping[Hashable, str]:
        """Load failures since the last call, by key."""
        ...


class AllAdaptersReady:
    """The default gate: every adapter is ready and any number may share a step."""

    max_loras: int | None = None

    def is_ready(self, key: Hashable) -> bool:
        """Always true."""
        return True

    def request_load(self, key: Hashable) -> None:
        """Nothing to load."""

    def can_admit(self, key: Hashable) -> bool:
        """Always true."""
        return True

    def take_failures(self) -> Mapping[Hashable, str]:
        """Nothing ever fails to load."""
        return {}
