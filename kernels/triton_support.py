"""Triton when it is installed; plain stand-ins when it is not.

Kernel files decorate their kernels with `jit` and annotate meta-parameters with
`tl.constexpr` under `from __future__ import annotations` (Triton reads the annotation as a
string), so they import on a CPU-only install. Launchers run only when `is_triton_available()`.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs serve LoRA through the torch path
    triton = None
    tl = None

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
