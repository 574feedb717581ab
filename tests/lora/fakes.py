"""Tensor-free stand-ins for adapters and device slots, for cache and scheduler tests."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FakeAdapter:
    """An adapter that is only its digest."""

    digest: str


class FakeSlots:
    """Device slots that remember which digest each holds."""

    def __init__(self, num_slots):
        self.num_slots = num_slots
        self.contents = [None] * num_slots

    def write(self, slot, adapter):
        self.contents[slot] = adapter.digest

    def clear(self, slot):
        self.contents[slot] = None
