"""Checks an adapter directory against a base model without reading any weight values.

Pure Python: config, tensor names, dtypes and shapes come from adapter_config.json and the
safetensors header. The result is an `AdapterPlan` (what to read and how to scale it) or
every problem found; value checks (finite) and the digest follow in `tensors.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections import defaultdict

from lorafleet.dataplane.adapters.errors import Problem, cap_problems, echo
from lorafleet.dataplane.adapters.modules import ModuleRef, describe_modules, targeted_modules
from lorafleet.dataplane.adapters.peft_config import AdapterSpec, read_adapter_config
from lorafleet.dataplane.adapters.safetensors_header import HeaderError, TensorInfo, read_header
from lorafleet.dataplane.adapters.weight_keys import LORA_A, LORA_B, pair_weight_keys
from lorafleet.dataplane.model.config import PROJECTIONS, ModelConfig

WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
# Stored dtypes accepted (safetensors codes); float32 holds each exactly, which the digest
# relies on. fp64, integer and fp8 files are refused.
STORED_DTYPES = ("F16", "BF16", "F32")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModulePlan:
    """How to read one projection's LoRA: tensor names, rank and PEFT's scale (float64)."""

    ref: ModuleRef
    a_name: str
    b_name: str
    rank: int
    scale: float


@dataclasses.dataclass(frozen=True)
class AdapterPlan:
    """A structurally valid adapter: its spec and the modules to read, in canonical order."""

    spec: AdapterSpec
    weights_path: pathlib.Path
    modules: tuple[ModulePlan, ...]
    num_parameters: int

    @property
    def rank(self) -> int:
        """The largest rank over modules."""
        return max(m.rank for m in self.modules)

    @property
    def target_modules(self) -> tuple[str, ...]:
        """Projections changed in at least one layer, in PROJECTIONS order."""
        present = {m.ref.projection for m in self.modules}
        return tuple(p for p in PROJECTIONS if p in present)


def plan_adapter(
    directory: pathlib.Path,
    config: ModelConfig,
    *,
    max_lora_rank: int,
) -> tuple[AdapterPlan | None, AdapterSpec | None, list[Problem]]:
    """Checks `directory` against `config`; returns the plan, the spec and every problem.

    The plan is None unless the weights can be read as planned; it comes back alongside a
    rank above `max_lora_rank`, which is this worker's limit rather than a broken adapter.
    """
    if not isinstance(max_lora_rank, int) or max_lora_rank < 1:
        raise ValueError(f"max_lora_rank must be a positive integer, got {max_lora_rank!r}")
    spec, problems = read_adapter_config(directory)
    header, file_problems = _read_weights_header(directory, config)
    problems += file_problems
    if spec is None or header is None:
        return None, spec, cap_problems(problems)
    if spec.base_model_class and spec.base_model_class != config.architecture:
        problems.append(
            Problem(
                f"adapter was trained on a {echo(spec.base_model_class, is_quoted=False)}, "
                f"the base model is a {config.architecture}",
                is_base_model_mismatch=True,
            )
        )
    pairs, key_problems = pair_weight_keys(list(header), config)
    targeted, target_problems = targeted_modules(spec, config)
    problems += key_problems + target_problems + _coverage_problems(pairs, targeted)
    complete = {ref: p for ref, p in pairs.items() if ref in targeted and len(p) == 2}
    modules = [
        _module_plan(ref, complete[ref], spec) for ref in sorted(complete, key=ModuleRef.sort_key)
    ]
    problems += _shape_problems(modules, header, spec, config)
    if not modules and not problems:
        problems.append(Problem("the adapter has no LoRA weights for any module"))
    if problems:
        return None, spec, cap_problems(problems)
    num_parameters = sum(_numel(header[m.a_name]) + _numel(header[m.b_name]) for m in modules)
    plan = AdapterPlan(spec, directory / WEIGHTS_FILE, tuple(modules), num_parameters)
    # Sound, so returned with the plan: a dry run still reports its rank and size (but no
    # digest: the loader reads no data of a rank past the limit).
    return plan, spec, _rank_problems(modules, max_lora_rank)


def _rank_problems(modules: list[ModulePlan], max_lora_rank: int) -> list[Problem]:
    too_big = [m.ref for m in modules if m.rank > max_lora_rank]
    if not too_big:
        return []
    rank = max(m.rank for m in modules)
    return [
        Problem(
            f"{describe_modules(too_big)} rank up to {rank} is above this worker's "
            f"max_lora_rank {max_lora_rank}"
        )
    ]


def _read_weights_header(
    directory: pathlib.Path, config: ModelConfig
) -> tuple[dict[str, TensorInfo] | None, list[Problem]]:
    """The header's tensors, or why they cannot be planned; never reads tensor data."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        if (directory / PICKLED_WEIGHTS_FILE).is_file():
            return None, [
                Problem(
                    f"{PICKLED_WEIGHTS_FILE} holds pickled weights, which are refused (loading a "
                    f"pickle can run code); save the adapter as {WEIGHTS_FILE}"
                )
            ]
        return None, [Problem(f"{WEIGHTS_FILE} is missing")]
    try:
        header = read_header(path)
    except HeaderError as exc:
        return None, [Problem(str(exc))]
    except OSError as exc:  # the path and OS error are for the operator, not the caller
        log.warning("cannot read %s: %s", path, exc)
        return None, [Problem(f"{WEIGHTS_FILE} is not readable")]
    # Past this count the file cannot be a LoRA of this model: refused before pairing keys,
    # so thousands of junk tensors cost one message.
    max_tensors = 2 * len(PROJECTIONS) * config.num_layers
    if len(header) > max_tensors:
        return None, [
            Problem(
                f"{WEIGHTS_FILE} declares {len(header)} tensors; a LoRA adapter of this base "
                f"model has at most {max_tensors}"
            )
        ]
    return header, []


def _module_plan(ref: ModuleRef, pair: dict[str, str], spec: AdapterSpec) -> ModulePlan:
    return ModulePlan(
        ref,
        pair[LORA_A],
        pair[LORA_B],
        spec.rank_for(ref.name),
        spec.scale_for(ref.name),
    )


def _coverage_problems(
    pairs: dict[ModuleRef, dict[str, str]], targeted: set[ModuleRef]
) -> list[Problem]:
    """Weights without a target, targets without weights, and lora_A without lora_B."""
    groups: dict[str, list[ModuleRef]] = defaultdict(list)
    for ref, pair in pairs.items():
        if ref not in targeted:
            groups["has weights, but target_modules does not select it"].append(ref)
        for kind, other in ((LORA_A, LORA_B), (LORA_B, LORA_A)):
            if kind in pair and other not in pair:
                groups[f"has {kind} but no {other}"].append(ref)
    for ref in targeted - pairs.keys():
        groups["is selected by target_modules, but the file has no weights for it"].append(ref)
    return [Problem(f"{describe_modules(refs)} {what}") for what, refs in groups.items()]


def _shape_problems(
    modules: list[ModulePlan],
    header: dict[str, TensorInfo],
    spec: AdapterSpec,
    config: ModelConfig,
) -> list[Problem]:
    """Dtype and shape problems, one message per kind of problem and projection."""
    shapes = config.projection_shapes()
    groups: dict[tuple[str, bool], list[ModuleRef]] = defaultdict(list)
    for m in modules:
        in_features, out_features = shapes[m.ref.projection]
        # (name, kind, features, axis of the rank in PEFT's [r, in] / [out, r] layout)
        for name, kind, features, rank_axis in (
            (m.a_name, LORA_A, in_features, 0),
            (m.b_name, LORA_B, out_features, 1),
        ):
            axis = 1 - rank_axis if spec.fan_in_fan_out else rank_axis
            for problem in _tensor_problems(kind, header[name], m.rank, features, axis):
                groups[problem].append(m.ref)
    return [
        Problem(f"{describe_modules(refs)} {what}", mismatch)
        for (what, mismatch), refs in groups.items()
    ]


def _tensor_problems(
    kind: str,
    info: TensorInfo,
    rank: int,
    features: int,
    rank_axis: int,
) -> list[tuple[str, bool]]:
    """(message, is_base_model_mismatch) for one tensor's dtype and shape."""
    problems = []
    if info.dtype not in STORED_DTYPES:
        allowed = list(STORED_DTYPES)
        problems.append((f"{kind} has dtype {info.dtype}; expected one of {allowed}", False))
    want = [features, features]
    want[rank_axis] = rank
    if list(info.shape) != want:
        # Right rank, wrong feature size: a sound adapter trained for another model size.
        is_mismatch = len(info.shape) == 2 and info.shape[rank_axis] == rank
        problems.append(
            (
                f"{kind} has shape {echo(list(info.shape))}, expected {want} (rank {rank} from "
                f"r/rank_pattern, {features} features in the base model)",
                is_mismatch,
            )
        )
    return problems


def _numel(info: TensorInfo) -> int:
    count = 1
    for dim in info.shape:
        count *= dim
    return count
