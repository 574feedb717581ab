"""Projection weights for CPU matmuls, packed once at load for oneDNN.

MKL's sgemm, behind `torch.mm`, re-packs its weight operand into cache-sized panels on
every call; oneDNN can take a weight already reordered into its blocked layout, so a step
only streams it (benchmarks/cpu_matmul.py measures both, and the other candidates).

Two kinds of CPU linear, chosen per model at load:
  "fast"      weights reordered once by oneDNN (`PackedWeight`), used by every step;
  "reference" plain [in, out] tensors and torch.mm, the path that predates this module.
The environment variable LORAFLEET_CPU_LINEAR picks one when the caller does not; on
CUDA, and for dtypes oneDNN cannot pack on this CPU, weights stay plain tensors.
Which dtypes oneDNN packs depends on the CPU's instructions (bfloat16 needs AVX-512, which
many AVX2-only CPUs lack), so it is asked once per dtype with a tiny weight, not assumed.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

CPU_LINEAR_KINDS = ("fast", "reference")
DEFAULT_CPU_LINEAR = "fast"
ENV_VAR = "LORAFLEET_CPU_LINEAR"

log = logging.getLogger(__name__)


def _reorder(weight_out_in: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked copy of an [out, in] weight; raises RuntimeError where the CPU cannot."""
    return torch.ops.mkldnn._reorder_linear_weight(weight_out_in)


class PackedWeight:
    """A projection's weight, reordered once into oneDNN's blocked layout for CPU matmuls.

    Built from the [in, out] tensor the loader stores; `linear(x, w, bias)` computes
    x @ w + bias with it. The packed copy may pad odd sizes to oneDNN's block width.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        self.in_features, self.out_features = weight.shape
        self.dtype = weight.dtype
        self.device = weight.device
        # oneDNN wants [out, in]; without a batch-size hint it picks a layout that serves
        # every row count well (a hint of 1 or 512 made the other row counts slower).
        self.packed = _reorder(weight.t().contiguous())
        self.is_shared = False

    @classmethod
    def sharing(cls, weight_out_in: torch.Tensor) -> PackedWeight:
        """An [out, in] weight used where it lies, not reordered, so nothing is copied: an
        output head tied to the embeddings. oneDNN reorders it per call, and that still ran
        the SmolLM2 head (49,152 x 576) 1.8-2.3x faster than torch.mm on the transposed
        view, at 1 and 32 rows: 9.5 -> 4.2 ms and 26 -> 14 ms (a reordered copy: 4.2, 10)."""
        weight = cls.__new__(cls)
        weight.out_features, weight.in_features = weight_out_in.shape
        weight.dtype, weight.device = weight_out_in.dtype, weight_out_in.device
        weight.packed = weight_out_in
        weight.is_shared = True
        return weight

    @property
    def shape(self) -> torch.Size:
        """[in_features, out_features], the shape of the plain weight it replaces."""
        return torch.Size((self.in_features, self.out_features))

    def num_bytes(self) -> int:
        """Bytes of the checkpoint's weight in this dtype (padding of the packed copy aside;
        a shared weight's bytes belong to the tensor it shares, `packed`)."""
        return self.in_features * self.out_features * self.dtype.itemsize


Weight = torch.Tensor | PackedWeight


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """x [tokens, in] @ weight [in, out] (+ bias [out]), for plain and packed weights."""
    if isinstance(weight, PackedWeight):
        rows = x.shape[0]
        padded = padded_rows(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])
        out = _onednn_linear(x, weight.packed, bias)
        return out[:rows] if padded != rows else out
    return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def padded_rows(rows: int) -> int:
    """The row count a packed matmul of `rows` rows runs with: exact up to 8, then rounded
    up to a multiple of 8 (to 128), then to eight steps per doubling (a multiple of 16 to
    256, of 32 to 512, ...).

    Why: oneDNN builds and keeps a kernel (with its JIT code and scratchpad) per input
    shape, and a serving engine meets every row count from 1 to its token budget. Keeping
    them all grew the engine process from 500 to 940 MB over 5,000 varied requests (and on,
    towards its 1,024-entry cache); padded to these few dozen shapes per weight (55 up to
    2,048 rows) it stays near 440 MB (issue 21 #6). The padding costs at most 7 rows
    below 128, at most an eighth above."""
    if rows <= 8:
        return rows
    step = max(8, (1 << (rows - 1).bit_length()) // 16)
    return -(-rows // step) * step


def resolve_cpu_linear(kind: str | None) -> str:
    """The kind asked for, else $LORAFLEET_CPU_LINEAR, else the default ("fast")."""
    chosen = kind or os.environ.get(ENV_VAR) or DEFAULT_CPU_LINEAR
    if chosen not in CPU_LINEAR_KINDS:
        source = "cpu_linear" if kind else ENV_VAR
        raise ValueError(f"{source}={chosen!r} is not a CPU linear kind; use one of "
                         f"{', '.join(CPU_LINEAR_KINDS)}")
    return chosen


def can_pack(kind: str, device: torch.device, dtype: torch.dtype) -> bool:
    """True when projections on `device` in `dtype` should be packed for oneDNN."""
    if kind != "fast" or device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    # float16 needs AVX512-FP16 or AVX-NE-CONVERT; it was never measured faster, so it
    # stays plain even where oneDNN could pack it.
    return dtype in (torch.float32, torch.bfloat16) and _onednn_packs(dtype)


@functools.cache
def _onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs and multiplies `dtype` weights on this CPU; says so once if not."""
    try:
        weight = PackedWeight(torch.ones(8, 8, dtype=dtype))
        linear(torch.ones(1, 8, dtype=dtype), weight, None)
    except RuntimeError as error:
        log.info("%s projections stay plain tensors (torch matmuls): oneDNN cannot pack them "
                 "on this CPU (%s)", str(dtype).removeprefix("torch."), error)
        return False
    return True


def pack(weight: torch.Tensor | None) -> Weight | None:
    """The packed form of a plain [in, out] weight (None stays None)."""
    return None if weight is None else PackedWeight(weight)
