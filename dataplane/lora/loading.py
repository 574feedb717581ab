"""Adapter loading bound to one worker's base model, rank limit and dtype."""

from __future__ import annotations

import dataclasses
import types

import torch

from lorafleet.dataplane.adapters.loader import LoadedAdapter, load_adapter, validate_adapter
from lorafleet.dataplane.adapters.report import ValidationReport
from lorafleet.dataplane.adapters.sources import SourceResolver
from lorafleet.dataplane.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class AdapterFiles:
    """Loads and validates adapters for this worker's model (the worker's loader rules)."""

    model_config: ModelConfig
    max_lora_rank: int
    dtype: torch.dtype
    resolver: SourceResolver = dataclasses.field(default_factory=SourceResolver)
    # On CUDA the host tier keeps page-locked copies, so copies into slots run at full
    # PCIe speed. (Not exercised on CPU-only machines.)
    pin_memory: bool = False

    def load(self, uri: str) -> LoadedAdapter:
        """Resolves, validates and reads an adapter; raises AdapterError subclasses."""
        adapter = load_adapter(uri, self.model_config, max_lora_rank=self.max_lora_rank,
                               dtype=self.dtype, resolver=self.resolver)
        return _pinned(adapter) if self.pin_memory else adapter

    def validate(self, uri: str) -> ValidationReport:
        """A dry-run load: every reason it would be refused, or its digest."""
        return validate_adapter(uri, self.model_config, max_lora_rank=self.max_lora_rank,
                                dtype=self.dtype, resolver=self.resolver)


def _pinned(adapter: LoadedAdapter) -> LoadedAdapter:
    """The same adapter with its tensors in page-locked host memory."""
    modules = {key: dataclasses.replace(w, a=w.a.pin_memory(), b=w.b.pin_memory())
               for key, w in adapter.modules.items()}
    return dataclasses.replace(adapter, modules=types.MappingProxyType(modules))
