"""The verdict of a dry-run load (`validate_adapter`), as the ValidateAdapter RPC returns it.

Pure Python, so code without torch can hold and inspect reports.
"""

from __future__ import annotations

import dataclasses

from lorafleet.dataplane.adapters.errors import Problem, raise_for_problems


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Whether an adapter would load on a worker, and what it is.

    `rank`, `target_modules`, `num_parameters` and `size_bytes` are set only when the
    adapter's structure is sound (None / empty otherwise); `digest` only when, in addition,
    its rank is within the worker's limit, since no weight is read before that.
    """

    source: str
    problems: tuple[Problem, ...]
    digest: str | None = None
    rank: int | None = None
    target_modules: tuple[str, ...] = ()
    # The base model named in adapter_config.json: informational, never trusted for matching.
    base_model_name_or_path: str | None = None
    num_parameters: int | None = None
    # Bytes of lora_A and lora_B in the dtype the worker would load them in.
    size_bytes: int | None = None

    @property
    def is_valid(self) -> bool:
        """Whether the adapter would load."""
        return not self.problems

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every reason the adapter would not load, one per problem found."""
        return tuple(p.message for p in self.problems)

    @property
    def is_base_model_mismatch(self) -> bool:
        """Whether the only problems are that it was trained for another base model."""
        return bool(self.problems) and all(p.is_base_model_mismatch for p in self.problems)

    def raise_if_invalid(self) -> None:
        """Raises AdapterInvalid (or BaseModelMismatch) with every reason, if not valid."""
        raise_for_problems(list(self.problems), source=self.source)
