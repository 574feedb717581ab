"""The adapter side of one worker, as the engine sees it.

Created before the engine and completed while the engine is built: `reserve` runs once
the model's weights are placed, preallocates the device slots and creates the cache, and
returns the bytes the KV cache must do without. It then serves as the scheduler's gate,
the batch builder's slot lookup and the runner's LoRA context, and reports adapters
whose background load failed (the engine ends their requests).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from lorafleet.dataplane.lora.cache import AdapterCache
from lorafleet.dataplane.lora.slots import DeviceSlotBank, LoraStep
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.kernels.batch import LoraBatch


class LoraRuntime:
    """Device slots + adapter cache, wired into one engine."""

    def __init__(self, model_config: ModelConfig, *, max_loras: int, max_lora_rank: int,
                 max_cpu_loras: int, load: Callable, on_load=None, on_evict=None):
        self.model_config = model_config
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max_cpu_loras
        self._load = load
        self._on_load, self._on_evict = on_load, on_evict
        self.bank: DeviceSlotBank | None = None
        self.cache: AdapterCache | None = None
        self.engine = None

    def reserve(self, model) -> int:
        """Preallocates the device slots next to the model; returns their bytes."""
        self.bank = DeviceSlotBank(self.model_config, num_slots=self.max_loras,
                                   max_rank=self.max_lora_rank, dtype=model.dtype,
                                   device=model.device)
        self.cache = AdapterCache(self.bank, max_host=self.max_cpu_loras, load=self._load,
                                  running_keys=self._running_keys, on_load=self._on_load,
                                  on_evict=self._on_evict)
        return self.bank.num_bytes

    def attach(self, engine) -> None:
        """Connects the engine built with this runtime's hooks."""
        self.engine = engine

    def _running_keys(self) -> set[Hashable]:
        return {r.adapter for r in self.engine.scheduler.running if r.adapter is not None}

    # -- the scheduler's AdapterGate --------------------------------------------------

    def is_ready(self, key: Hashable) -> bool:
        """True when `key` is in a device slot (installing it from host if possible)."""
        return self.cache.is_ready(key)

    def request_load(self, key: Hashable) -> None:
        """Starts a background load of `key`."""
        self.cache.request_load(key)

    def can_admit(self, key: Hashable) -> bool:
        """Whether new requests of `key` may start (False while its slot drains)."""
        return self.cache.can_admit(key)

    # -- the runner's hooks -------------------------------------------------------------

    def slot_of(self, key: Hashable) -> int:
        """The device slot of a scheduled adapter (the scheduler made sure it has one)."""
        slot = self.cache.slot_of(key)
        if slot is None:
            raise RuntimeError(f"adapter {key} was scheduled without a device slot")
        return slot

    def lora_context(self, step_batch) -> LoraStep:
        """The LoRA context of one step, from each token's slot (-1: base model)."""
        slots = [None if s < 0 else s for s in step_batch.adapter_slots.tolist()]
        return LoraStep(self.bank, LoraBatch.from_slots(slots, device=step_batch.adapter_slots.device))

    def take_failures(self) -> dict[str, str]:
        """Background load failures since the last call (the engine ends their requests)."""
        return self.cache.take_failures()
