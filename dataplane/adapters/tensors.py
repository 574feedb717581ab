"""Reads an adapter's weights in PEFT's orientation, checks their values and digests them.

The digest is the adapter version's identity. It is sha256 over, per module in canonical
order (layer, then q/k/v/o/gate/up/down): the module's name, rank and float64 scale, then
lora_A [r, in] and lora_B [out, r] as little-endian float32. So it ignores what does not
change the math — tensor order in the file, safetensors metadata, JSON formatting,
training-only options, fan_in_fan_out storage and fp16/bf16/fp32 storage of equal values —
and changes with any weight, rank, alpha or rsLoRA flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator

import torch
from safetensors import SafetensorError, safe_open

from lorafleet.dataplane.adapters.errors import AdapterInvalid, Problem, echo
from lorafleet.dataplane.adapters.modules import ModuleRef, describe_modules
from lorafleet.dataplane.adapters.structure import AdapterPlan, ModulePlan

DIGEST_VERSION = b"lorafleet-adapter-digest-v1\n"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModuleTensors:
    """One module's weights in float32, PEFT orientation: a [r, in], b [out, r]."""

    plan: ModulePlan
    a: torch.Tensor
    b: torch.Tensor


def iter_module_tensors(plan: AdapterPlan) -> Iterator[ModuleTensors]:
    """Yields each module's weights, transposed back when stored fan_in_fan_out.

    Raises AdapterInvalid when the file's data does not match its header (truncated,
    overlapping or corrupt tensors).
    """
    try:
        with safe_open(str(plan.weights_path), framework="pt") as weights:
            for module in plan.modules:
                a = weights.get_tensor(module.a_name).to(torch.float32)
                b = weights.get_tensor(module.b_name).to(torch.float32)
                if plan.spec.fan_in_fan_out:
                    a, b = a.T, b.T
                yield ModuleTensors(module, a.contiguous(), b.contiguous())
    except SafetensorError as exc:  # the library's complaint names no path
        raise AdapterInvalid([f"{plan.weights_path.name} is corrupt: {echo(str(exc))}"]) from exc
    except OSError as exc:  # the path and OS error are for the operator, not the caller
        log.warning("cannot read %s: %s", plan.weights_path, exc)
        raise AdapterInvalid([f"{plan.weights_path.name} is corrupt or not readable"]) from exc


class Digester:
    """Accumulates the canonical digest, module by module, in plan order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256(DIGEST_VERSION)

    def add(self, tensors: ModuleTensors) -> None:
        """Hashes one module; call in the plan's (canonical) module order."""
        m = tensors.plan
        self._hash.update(f"{m.ref.name} r={m.rank} scale={m.scale!r}\n".encode())
        for tensor in (tensors.a, tensors.b):
            self._hash.update(tensor.numpy().astype("<f4", copy=False).tobytes())

    def hexdigest(self) -> str:
        """The digest as 64 hex characters."""
        return self._hash.hexdigest()


class ValueCheck:
    """Collects tensors holding NaN or infinity, or values past the load dtype's range."""

    def __init__(self, dtype: torch.dtype) -> None:
        self._dtype = dtype
        self._nonfinite: dict[str, list[ModuleRef]] = defaultdict(list)
        self._overflow: dict[str, list[ModuleRef]] = defaultdict(list)

    def add(self, ref: ModuleRef, kind: str, tensor: torch.Tensor) -> None:
        """Checks one float32 tensor of module `ref`."""
        # min and max propagate NaN and hold any infinity (far faster than isfinite().all());
        # casting is monotonic, so only they can overflow first in a half-precision dtype.
        extremes = torch.stack(torch.aminmax(tensor))
        if not bool(torch.isfinite(extremes).all()):
            self._nonfinite[kind].append(ref)
        elif not bool(torch.isfinite(extremes.to(self._dtype)).all()):
            self._overflow[kind].append(ref)

    def problems(self) -> list[Problem]:
        """One problem per tensor kind and failure."""
        return [
            Problem(f"{describe_modules(refs)} {kind} {what}")
            for found, what in (
                (self._nonfinite, "holds NaN or infinite values"),
                (self._overflow, f"has values beyond the range of {self._dtype}"),
            )
            for kind, refs in found.items()
        ]
