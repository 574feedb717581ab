"""PEFT LoRA adapters: sources, format checks, validation against a base model, digest.

This package and its pure-Python parts import no torch, so the engine core can use the
errors and reports. Loading needs torch: `lorafleet.dataplane.adapters.loader` has
`load_adapter` and `validate_adapter`.

Errors map to gRPC codes via `status_code_name`: AdapterNotFound -> NOT_FOUND,
AdapterInvalid -> INVALID_ARGUMENT, BaseModelMismatch -> FAILED_PRECONDITION,
AdapterSourceUnavailable -> UNAVAILABLE.
"""

from lorafleet.dataplane.adapters.errors import (
    AdapterError,
    AdapterInvalid,
    AdapterNotFound,
    AdapterSourceUnavailable,
    BaseModelMismatch,
    Problem,
)
from lorafleet.dataplane.adapters.report import ValidationReport
from lorafleet.dataplane.adapters.sources import SourceResolver

__all__ = [
    "AdapterError",
    "AdapterInvalid",
    "AdapterNotFound",
    "AdapterSourceUnavailable",
    "BaseModelMismatch",
    "Problem",
    "SourceResolver",
    "ValidationReport",
]
