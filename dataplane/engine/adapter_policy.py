"""Which adapters may run in a step: device slots, host residency, and holding back.

The scheduler asks `try_join(key, …)` for every request with an adapter. The answer is
yes when the adapter holds a device slot, or is in host memory and a slot can be given
to it (the plan then carries the copy, an *install*, for the runner to perform); a
request whose adapter is only at its source starts a background load and is skipped,
never blocking the queue behind it.

Holding back: when every slot is pinned by running requests and an adapter waits for
one, new requests of the least recently used slot's adapter stop being admitted (its
running requests go on), so that slot empties and the waiting adapter gets it; otherwise
steady traffic to the resident adapters starves a cold one.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping

from lorafleet.dataplane.engine.adapter_slots import SlotAllocator
from lorafleet.dataplane.engine.host_tier import HostTier, NoAdapters


class AdapterScheduling:
    """The adapter side of scheduling: slots, host tier and the held-back adapter."""

    def __init__(self, num_slots: int = 0, host: HostTier | None = None) -> None:
        self.slots = SlotAllocator(num_slots)
        self.host = host if host is not None else NoAdapters()
        self._held_back: Hashable | None = None
        self._installs: list[tuple[int, Hashable]] = []

    @property
    def max_loras(self) -> int:
        """Distinct adapters one step may use: the number of device slots."""
        return self.slots.num_slots

    def begin_step(self, wanted: Collection[Hashable]) -> None:
        """Starts planning a step; adapters in `wanted` keep their host copies."""
        self._installs = []
        self.host.trim(wanted)

    def take_installs(self) -> tuple[tuple[int, Hashable], ...]:
        """The (slot, adapter) copies the step just planned needs, in order."""
        installs, self._installs = tuple(self._installs), []
        return installs

    def try_join(self, key: Hashable, in_step: Collection[Hashable],
                 running: Collection[Hashable], *, is_new: bool) -> bool:
        """Whether a request of adapter `key` can run in this step, next to the adapters
        `in_step` already planned; `running` are the adapters of running requests."""
        if is_new and key == self._held_back and key in running:
            return False
        is_full = key not in in_step and len(in_step) >= self.max_loras
        if self.slots.slot_of(key) is not None:
            if not is_full:
                self.slots.touch(key)
            return not is_full
        if not self.host.has(key):
            self.host.request_load(key)
            return False
        slot = None if is_full else self.slots.try_assign(key, pinned={*running, *in_step})
        if slot is None:  # it waits for a slot: make one empty out
            self._hold_back_least_recent()
            return False
        self._installs.append((slot, key))
        self._held_back = None
        return True

    def could_join(self, key: Hashable, running: Collection[Hashable]) -> bool:
        """Whether a request of adapter `key` could run next to the `running` adapters
        without waiting for a load or for a slot to empty (nothing changes)."""
        if key == self._held_back and key in running:
            return False
        if len(set(running) | {key}) > self.max_loras:
            return False
        return self.slots.slot_of(key) is not None or (
            self.host.has(key) and self.slots.can_assign(key, pinned=running))

    def try_place(self, key: Hashable, running: Collection[Hashable]) -> int | None:
        """A slot for `key` outside any step (a load asked to reach the device), or None
        when `key` is not in host memory or every slot is pinned."""
        if self.slots.slot_of(key) is not None or not self.host.has(key):
            return None
        return self.slots.try_assign(key, pinned=running)

    def release(self, key: Hashable) -> int | None:
        """Empties `key`'s slot and returns it (None if it held none)."""
        return self.slots.release(key)

    def on_device(self) -> list[Hashable]:
        """Adapters held in device slots, in slot order."""
        return self.slots.held()

    def on_host(self) -> list[Hashable]:
        """Adapters in host memory."""
        return self.host.held()

    def take_failures(self) -> Mapping[Hashable, str]:
        """Adapter loads that failed since the last call, by key, with the reason."""
        return self.host.take_failures()

    def _hold_back_least_recent(self) -> None:
        if self._held_back is None or self._held_back not in self.slots.held():
            self._held_back = self.slots.least_recent()
