"""Triton when it is installed; plain stand-ins when it is not.

Kernel files decorate their kernels with `jit` and annotate meta-parameters with
`tl.constexpr` under `from __future__ import annotations` (Triton reads the annotation as a
string), so they import on a CPU-only install. Launchers run only when `is_triton_available()`.

Triton is imported only where its kernels can run: with a CUDA device, or with its
interpreter (TRITON_INTERPRET=1, the CPU tests). A CPU-only worker leaves it alone even when
it is installed: importing it starts its compiler runtime for nothing, and at exit prints
dozens of "nanobind: leaked ..." lines under the worker's log. LORAFLEET_TRITON=1 imports it
anyway (compiling for a GPU on a machine without one), LORAFLEET_TRITON=0 never.
"""

from __future__ import annotations

import importlib.util
import os


def _is_wanted() -> bool:
    choice = os.environ.get("LORAFLEET_TRITON", "auto")
    if choice in ("0", "1"):
        return choice == "1"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


triton = tl = None  # CPU-only installs and CPU workers serve LoRA through the torch path
if _is_wanted():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        triton = tl = None

__all__ = ["is_triton_available", "jit", "tl", "triton"]


def is_triton_available() -> bool:
    """Whether Triton imported, so the Triton launchers can run."""
    return triton is not None


def jit(fn):
    """`triton.jit` when Triton is installed; the undecorated function (never launched) when not.

    Triton decides at decoration time whether `TRITON_INTERPRET=1` applies, which is why the
    interpreter tests set it before this package is imported.
    """
    return fn if triton is None else triton.jit(fn)
