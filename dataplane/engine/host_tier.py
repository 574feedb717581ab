"""The scheduler's view of the adapters held in host memory.

The host tier (dataplane/lora/host_tier.py) holds loaded adapters by digest and loads
missing ones in the background. The scheduler only asks whether an adapter is there,
asks for a load, learns which loads failed and says which adapters must stay (those of
waiting and running requests); so it stays pure Python and never waits on a load.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Protocol


class HostTier(Protocol):
    """What the scheduler needs from the host tier (every method returns at once)."""

    def has(self, key: Hashable) -> bool:
        """True when `key`'s weights are in host memory, ready to be copied to a slot."""
        ...

    def request_load(self, key: Hashable) -> None:
        """Starts loading `key` from its source, unless it is loaded or loading."""
        ...

    def take_failures(self) -> Mapping[Hashable, str]:
        """Load failures since the last call, by key, with the reason."""
        ...

    def trim(self, keep: Collection[Hashable]) -> None:
        """Drops least recently used adapters beyond the tier's size, never one in
        `keep` (adapters with waiting or running requests)."""
        ...

    def held(self) -> list[Hashable]:
        """Adapters in host memory (for the engine's snapshot)."""
        ...


class NoAdapters:
    """The host tier of an engine that serves the base model only."""

    def __init__(self) -> None:
        self._failures: dict[Hashable, str] = {}

    def has(self, key: Hashable) -> bool:
        """Never."""
        return False

    def request_load(self, key: Hashable) -> None:
        """Fails the request's adapter at once."""
        self._failures[key] = "this worker serves no adapters"

    def take_failures(self) -> Mapping[Hashable, str]:
        """Adapters asked for since the last call."""
        failures, self._failures = self._failures, {}
        return failures

    def trim(self, keep: Collection[Hashable]) -> None:
        """Nothing to drop."""

    def held(self) -> list[Hashable]:
        """None."""
        return []
