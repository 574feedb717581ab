"""Public entry points: load a PEFT LoRA adapter for a base model, or validate it (dry run).

    adapter = load_adapter("s3://bucket/acme/support", model_config, max_lora_rank=64,
                           dtype=torch.float16)
    weights = adapter.weights(0, "q_proj")   # a [r, in], b [out, r], scale

The math each (layer, projection) adds is `y += scale * (x @ a.T) @ b.T`, which is PEFT's
`scale * B @ A` delta. Loading reads, checks and digests the weights in float32, then casts.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import numpy as np
import torch

from lorafleet.dataplane.adapters.errors import AdapterInvalid, Problem, raise_for_problems
from lorafleet.dataplane.adapters.report import ValidationReport
from lorafleet.dataplane.adapters.sources import SourceResolver
from lorafleet.dataplane.adapters.structure import AdapterPlan, plan_adapter
from lorafleet.dataplane.adapters.tensors import Digester, ValueCheck, iter_module_tensors
from lorafleet.dataplane.adapters.weight_keys import LORA_A, LORA_B
from lorafleet.dataplane.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ModuleWeights:
    """One projection's LoRA: `a` [rank, in_features], `b` [out_features, rank], fp32 scale."""

    a: torch.Tensor
    b: torch.Tensor
    # PEFT's alpha/r (or alpha/sqrt(r) with rsLoRA), rounded to float32 as kernels use it.
    scale: float

    @property
    def rank(self) -> int:
        """This module's LoRA rank."""
        return self.a.shape[0]


@dataclasses.dataclass(frozen=True)
class LoadedAdapter:
    """A validated adapter's weights, ready to copy into a device slot; keyed on `digest`."""

    digest: str
    source: str
    # Largest rank over modules; a slot must hold at least this rank.
    rank: int
    # Projections changed in at least one layer, e.g. ("q_proj", "v_proj").
    target_modules: tuple[str, ...]
    # (layer_index, projection) -> weights; modules the adapter leaves alone are absent.
    modules: Mapping[tuple[int, str], ModuleWeights]
    dtype: torch.dtype
    # Bytes of every a and b in `dtype`.
    size_bytes: int
    num_parameters: int
    base_model_name_or_path: str | None

    def weights(self, layer_index: int, projection: str) -> ModuleWeights | None:
        """The LoRA of one projection, or None when the adapter does not change it."""
        return self.modules.get((layer_index, projection))


def load_adapter(
    uri: str,
    model_config: ModelConfig,
    *,
    max_lora_rank: int,
    dtype: torch.dtype = torch.float32,
    resolver: SourceResolver | None = None,
) -> LoadedAdapter:
    """Resolves, validates and reads the adapter at `uri` for the base model `model_config`.

    Raises AdapterNotFound, AdapterSourceUnavailable, AdapterInvalid (every reason) or
    BaseModelMismatch (a sound adapter for another base model).
    """
    directory = (resolver or SourceResolver()).resolve(uri)
    plan, _, problems = plan_adapter(directory, model_config, max_lora_rank=max_lora_rank)
    raise_for_problems(problems, source=uri)
    digest, problems, modules = _read_weights(plan, dtype, is_kept=True)
    raise_for_problems(problems, source=uri)
    return LoadedAdapter(
        digest=digest,
        source=uri,
        rank=plan.rank,
        target_modules=plan.target_modules,
        modules=types.MappingProxyType(modules),
        dtype=dtype,
        size_bytes=plan.num_parameters * _element_size(dtype),
        num_parameters=plan.num_parameters,
        base_model_name_or_path=plan.spec.base_model_name_or_path,
    )


def validate_adapter(
    uri: str,
    model_config: ModelConfig,
    *,
    max_lora_rank: int,
    dtype: torch.dtype = torch.float32,
    resolver: SourceResolver | None = None,
) -> ValidationReport:
    """Checks the adapter at `uri` exactly as `load_adapter` would, keeping no weights.

    Every problem goes into the report; only an unreachable source (AdapterNotFound,
    AdapterSourceUnavailable) raises, since then there is no adapter to judge.
    """
    try:
        directory = (resolver or SourceResolver()).resolve(uri)
    except AdapterInvalid as exc:  # a malformed URI is a verdict, not an outage
        return ValidationReport(uri, tuple(Problem(r) for r in exc.reasons))
    plan, spec, problems = plan_adapter(directory, model_config, max_lora_rank=max_lora_rank)
    base_model = spec.base_model_name_or_path if spec else None
    if plan is None:
        return ValidationReport(uri, tuple(problems), base_model_name_or_path=base_model)
    described = dict(
        rank=plan.rank,
        target_modules=plan.target_modules,
        base_model_name_or_path=base_model,
        num_parameters=plan.num_parameters,
        size_bytes=plan.num_parameters * _element_size(dtype),
    )
    if problems:  # a rank above this worker's limit: its data could be any size, so unread
        return ValidationReport(uri, tuple(problems), **described)
    try:
        digest, value_problems, _ = _read_weights(plan, dtype, is_kept=False)
    except AdapterInvalid as exc:  # corrupt tensor data
        problems += [Problem(reason) for reason in exc.reasons]
        return ValidationReport(uri, tuple(problems), base_model_name_or_path=base_model)
    return ValidationReport(uri, tuple(value_problems), digest=digest, **described)


def _read_weights(
    plan: AdapterPlan,
    dtype: torch.dtype,
    *,
    is_kept: bool,
) -> tuple[str, list[Problem], dict[tuple[int, str], ModuleWeights]]:
    """Digest, value problems and (if `is_kept`) the weights cast to `dtype`, module by module."""
    digester, values = Digester(), ValueCheck(dtype)
    modules = {}
    for tensors in iter_module_tensors(plan):
        digester.add(tensors)
        ref = tensors.plan.ref
        values.add(ref, LORA_A, tensors.a)
        values.add(ref, LORA_B, tensors.b)
        if is_kept:
            a, b = tensors.a.to(dtype), tensors.b.to(dtype)
            modules[(ref.layer_index, ref.projection)] = ModuleWeights(
                a, b, _fp32(tensors.plan.scale)
            )
    return digester.hexdigest(), values.problems(), modules


def _fp32(value: float) -> float:
    return float(np.float32(value))


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


__all__ = ["LoadedAdapter", "ModuleWeights", "load_adapter", "validate_adapter"]
