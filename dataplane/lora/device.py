"""The device side of adapters: the slot bank and the copies into it.

Owned by the runner. Created before the engine and completed while the engine is built:
`reserve` runs once the model's weights are placed, preallocates the device slots and
returns the bytes the KV cache must do without. The scheduler decides which adapter each
slot holds (dataplane/engine/adapter_slots.py); this class only performs the copies the
plan asks for and builds each step's LoRA context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from lorafleet.dataplane.lora.host_tier import HostAdapters
from lorafleet.dataplane.lora.slots import DeviceSlotBank, LoraStep
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.kernels.batch import LoraBatch


class DeviceAdapters:
    """`max_loras` device slots of `max_lora_rank`, filled from the host tier."""

    def __init__(self, model_config: ModelConfig, host: HostAdapters, *, max_loras: int,
                 max_lora_rank: int, on_load: Callable[[str, float, bool], None] | None = None,
                 on_evict: Callable[[str], None] | None = None):
        self.model_config = model_config
        self.host = host
        self.num_slots = max_loras
        self.max_lora_rank = max_lora_rank
        self._on_load = on_load or (lambda tier, seconds, is_ok: None)
        self._on_evict = on_evict or (lambda tier: None)
        self._filled = [False] * max_loras
        self.bank: DeviceSlotBank | None = None

    def reserve(self, model) -> int:
        """Preallocates the device slots next to the model; returns their bytes."""
        self.bank = DeviceSlotBank(self.model_config, num_slots=self.num_slots,
                                   max_rank=self.max_lora_rank, dtype=model.dtype,
                                   device=model.device)
        return self.bank.num_bytes

    def install(self, slot: int, key: Hashable) -> None:
        """Copies adapter `key` from host memory into `slot`, replacing what was there."""
        adapter = self.host.get(key)
        if adapter is None:
            raise RuntimeError(f"adapter {key} was planned for slot {slot} but is not in "
                               "host memory")
        started = time.monotonic()
        if self._filled[slot]:
            self._on_evict("device")
        self.bank.write(slot, adapter)
        self._filled[slot] = True
        self._on_load("device", time.monotonic() - started, True)

    def clear(self, slot: int) -> None:
        """Empties `slot` everywhere."""
        self.bank.clear(slot)
        if self._filled[slot]:
            self._filled[slot] = False
            self._on_evict("device")

    def step(self, batch: LoraBatch) -> LoraStep:
        """The LoRA context of one step."""
        return LoraStep(self.bank, batch)
