"""Adapter loading bound to one worker's base model, rank limit and dtype."""

from __future__ import annotations

import dataclasses

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

    def load(self, uri: str) -> LoadedAdapter:
        """Resolves, validates and reads an adapter; raises AdapterError subclasses."""
        return load_adapter(uri, self.model_config, max_lora_rank=self.max_lora_rank,
                            dtype=self.dtype, resolver=self.resolver)

    def validate(self, uri: str) -> ValidationReport:
        """A dry-run load: every reason it would be refused, or its digest."""
        return validate_adapter(uri, self.model_config, max_lora_rank=self.max_lora_rank,
                                dtype=self.dtype, resolver=self.resolver)
