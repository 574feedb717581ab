"""Device adapter slots, allocated like KV blocks: pure bookkeeping, no tensors.

The scheduler decides which adapter (by digest) each device slot holds; the runner
copies weights into a slot only when the scheduler's plan says so. A slot whose adapter
is used by a running request is pinned: it is never given to another adapter. Among the
unpinned slots the least recently used goes first.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable


class SlotAllocator:
    """Which adapter each of `num_slots` device slots holds."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 0:
            raise ValueError(f"num_slots must be >= 0, got {num_slots}")
        self.num_slots = num_slots
        self._keys: list[Hashable | None] = [None] * num_slots
        self._last_used: list[int] = [0] * num_slots
        self._clock = 0

    def slot_of(self, key: Hashable) -> int | None:
        """The slot holding `key`, if any."""
        try:
            return self._keys.index(key)
        except ValueError:
            return None

    def held(self) -> list[Hashable]:
        """Adapters held in slots, in slot order."""
        return [k for k in self._keys if k is not None]

    def touch(self, key: Hashable) -> None:
        """Marks `key`'s slot as just used."""
        slot = self.slot_of(key)
        if slot is not None:
            self._clock += 1
            self._last_used[slot] = self._clock

    def try_assign(self, key: Hashable, pinned: Collection[Hashable]) -> int | None:
        """Gives `key` an empty slot, else the least recently used one whose adapter is
        not in `pinned`; None when every slot is pinned."""
        slot = self.slot_of(key)
        if slot is None:
            free = [i for i, k in enumerate(self._keys) if k is None or k not in pinned]
            if not free:
                return None
            slot = min(free, key=lambda i: (self._keys[i] is not None, self._last_used[i]))
            self._keys[slot] = key
        self.touch(key)
        return slot

    def can_assign(self, key: Hashable, pinned: Collection[Hashable]) -> bool:
        """Whether try_assign(key, pinned) would give `key` a slot (nothing changes)."""
        return self.slot_of(key) is not None or any(k is None or k not in pinned
                                                    for k in self._keys)

    def least_recent(self) -> Hashable | None:
        """The adapter whose slot was used longest ago (None when all slots are empty)."""
        held = [i for i, k in enumerate(self._keys) if k is not None]
        if not held:
            return None
        return self._keys[min(held, key=self._last_used.__getitem__)]

    def release(self, key: Hashable) -> int | None:
        """Empties `key`'s slot and returns it (None if it held no slot)."""
        slot = self.slot_of(key)
        if slot is not None:
            self._keys[slot] = None
        return slot
