"""Native kernels for a CPU decode step: built from native.c on first use, called by ctypes.

A decode step of a deep, thin model runs a few small ops per layer thousands of times,
and on a CPU each torch op costs microseconds before it computes anything. These fuse
what torch runs as several ops or through a copy (docs/benchmarks.md measured them):

- `add_rms_norm`: the residual add and RMSNorm in one pass (torch: 7 ops inside rms_norm);
- `rotary_`: rotate-half rotary embeddings in place, equal to torch's to the bit;
- `store_kv` and `decode_attention`: keys and values stored, then each decode query
  attends to its blocks where they lie (torch: two gathers copy every block, then SDPA);
- `argmax`: greedy tokens (torch's argmax does not vectorize on this CPU).

The library is compiled once per source and compiler into a cache folder
($LORAFLEET_NATIVE_CACHE, else ~/.cache/lorafleet/native; about a second with gcc) and
loaded with ctypes: no torch headers, no build step at install. Without a C compiler, or
with LORAFLEET_CPU_NATIVE=off, `library()` is None and every caller keeps its torch ops
(the same numbers within float32 rounding, slower); the engine logs which it runs.
Float32 CPU tensors only: `runs(*tensors)` says whether they may take this path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import torch

ENV_VAR = "LORAFLEET_CPU_NATIVE"
CACHE_ENV_VAR = "LORAFLEET_NATIVE_CACHE"
SOURCE = pathlib.Path(__file__).with_name("native.c")
_BUILD_TIMEOUT_SECONDS = 120

log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_N = ctypes.c_int
_SIGNATURES = {
    "lf_add_rms_norm": (_P, _I, _P, _I, _P, _P, _I, _I, _I, _F, _N),
    "lf_rotary": (_P, _I, _I, _I, _I, _P, _P, _I, _N),
    "lf_store_kv": (_P, _I, _P, _I, _P, _P, _P, _I, _I),
    "lf_decode_attention": (_P, _I, _P, _P, _P, _I, _P, _I, _I, _I, _I, _I, _I, _F, _P, _N),
    "lf_argmax": (_P, _I, _I, _I, _P, _N),
}


def is_enabled() -> bool:
    """False when $LORAFLEET_CPU_NATIVE says off (the torch ops run instead)."""
    value = os.environ.get(ENV_VAR, "on").strip().lower()
    if value not in ("on", "off", "1", "0"):
        raise ValueError(f"{ENV_VAR}={value!r}: use on or off")
    return value in ("on", "1")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built first if this source and compiler have no cached build;
    None when disabled or when no compiler could build them (logged once)."""
    if not is_enabled():
        return None
    try:
        path = _built_library()
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        log.warning("CPU native kernels unavailable (%s); the torch ops run instead", exc)
        return None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    return lib


def describe() -> str:
    """One line for the start-up log: which path the CPU's small ops take."""
    if not is_enabled():
        return f"torch ops ({ENV_VAR}=off)"
    return "native kernels" if library() is not None else "torch ops (no C compiler built them)"


def runs(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors may run natively: each float32 on the CPU with its
    last dimension contiguous, and the library built. (Each kernel's other layout needs
    are checked where it is called.)"""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1
               for t in tensors) and library() is not None


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (cc, gcc or $CC) on PATH")
    return compiler


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off", "-std=gnu11"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def _cache_dir() -> pathlib.Path:
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return pathlib.Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lorafleet" / "native"


def _built_library() -> pathlib.Path:
    """The cached build of this source with this compiler and these flags, made if none
    is there (written under a temporary name, then renamed: concurrent builders agree)."""
    compiler, flags = _compiler(), _flags()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=_BUILD_TIMEOUT_SECONDS, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, *flags])
                         .encode()).hexdigest()[:16]
    folder = _cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        folder = pathlib.Path(tempfile.gettempdir()) / f"lorafleet-native-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
    _check_private(folder)
    target = folder / f"lorafleet_cpu_{key}.so"
    if target.exists():
        return target
    partial = folder / f".{target.name}.{os.getpid()}.tmp"
    done = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(partial), "-lm"],
                          capture_output=True, text=True, timeout=_BUILD_TIMEOUT_SECONDS)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-400:]}")
    os.replace(partial, target)
    log.info("built the CPU native kernels: %s", target)
    return target


def _check_private(folder: pathlib.Path) -> None:
    """The process loads code from `folder`: only its own user may have written there."""
    status = folder.stat()
    if status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise RuntimeError(f"{folder} is not this user's alone (owner uid {status.st_uid}, "
                           f"mode {status.st_mode & 0o777:o}); the native kernels are not "
                           f"loaded from it")


def _threads() -> int:
    return torch.get_num_threads()


def add_rms_norm(hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """hidden += delta (in place, when given), then RMSNorm(hidden) in a new tensor.
    hidden and delta are [tokens, width] with unit stride along width."""
    rows, width = hidden.shape
    out = torch.empty(rows, width, dtype=hidden.dtype)
    delta_ptr, delta_stride = (None, 0) if delta is None else (delta.data_ptr(), delta.stride(0))
    library().lf_add_rms_norm(hidden.data_ptr(), hidden.stride(0), delta_ptr, delta_stride,
                              weight.data_ptr(), out.data_ptr(), width, rows, width, eps,
                              _threads())
    return out


MAX_ROTARY_DIM = 512


def rotary_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
    """x [tokens, heads, dim] (heads and dim contiguous; dim even, at most MAX_ROTARY_DIM)
    rotated in place by the rows of cos and signed_sin [tokens, 1, dim]
    (`RotaryEmbedding.cos_sin`)."""
    tokens, heads, dim = x.shape
    library().lf_rotary(x.data_ptr(), x.stride(0), tokens, heads, dim, cos.data_ptr(),
                        signed_sin.data_ptr(), cos.stride(0), _threads())


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor) -> None:
    """Keys and values [tokens, kv_heads, dim] into the caches at flat token slots
    (int64 [tokens], block * block_size + offset)."""
    tokens = k.shape[0]
    width = k.shape[1] * k.shape[2]
    library().lf_store_kv(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0),
                          k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), tokens,
                          width)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, lengths: torch.Tensor,
                     window: int | None) -> torch.Tensor:
    """q [seqs, heads, dim] (one query each) attends to its sequence's `lengths` keys
    (the last `window` of them, when given) through int64 block tables [seqs, blocks] of
    caches [blocks, block_size, kv_heads, dim]; returns [seqs, heads, dim]."""
    seqs, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    out = torch.empty(seqs, heads, dim, dtype=q.dtype)
    library().lf_decode_attention(
        q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        block_tables.data_ptr(), block_tables.stride(0), lengths.data_ptr(), seqs, heads,
        kv_heads, dim, block_size, window or 0, dim ** -0.5, out.data_ptr(), _threads())
    return out


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [rows, vocab] (unit stride along vocab) -> int64 [rows], torch.argmax(-1)'s
    answer (the first maximum; the first NaN where there is one)."""
    rows, width = logits.shape
    out = torch.empty(rows, dtype=torch.int64)
    library().lf_argmax(logits.data_ptr(), logits.stride(0), rows, width, out.data_ptr(),
                        _threads())
    return out
