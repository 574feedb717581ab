"""Part 1: the kernel tests' cases through `add_lora` on the device, against fp32.

The cases are those of tests/kernels (tiny shapes that cross every mask, NaN padding that
must never be read) plus hidden-size cases over Punica's adapter-popularity patterns, in
fp32, fp16 and bf16. On CUDA the dispatcher must send them to the compiled Triton kernels:
the part fails when TRITON_INTERPRET=1 is set or when a kernel has no compiled binary
for the device after the run.
"""

from __future__ import annotations

import os

import torch

from benchmarks.gpu_check.report import outcome
from lorafleet.kernels import bgmv, sgmv
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora
from lorafleet.kernels.triton_support import is_triton_available
from tests.kernels.cases import filled_buffers, reference_lora, request_slots, token_slots
from tests.kernels.test_triton_interpreter import (
    BUFFER_FIELDS,
    CASE_NAMES,
    DTYPES,
    TOLERANCE,
    _case,
)

CAP_S = 90.0
# Wider fp32 tolerance at hidden sizes: thousands of terms summed in another order.
HIDDEN_TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 2e-2), "bf16": (8e-2, 3e-2)}
KERNELS = (sgmv._sgmv_shrink_kernel, sgmv._sgmv_expand_kernel,
           bgmv._bgmv_shrink_kernel, bgmv._bgmv_expand_kernel)


def run(device: torch.device, clock, *, is_dry_run: bool) -> dict:
    """Runs every case; the part passes when all match and (on CUDA) Triton ran them."""
    hidden = 256 if is_dry_run else 4096
    cases = [(name, _case(*name.split("-")), TOLERANCE[name.split("-")[1]]) for name in CASE_NAMES]
    rows, failures = [], []
    patterns = ("zipf",) if is_dry_run else ("uniform", "zipf", "skewed", "identical")
    max_ranks = (16,) if is_dry_run else (16, 64)
    for name, case, tolerance in cases + list(_hidden_cases(hidden, patterns, max_ranks)):
        if not clock.can_start(5.0):
            clock.skip(f"case {name}")
            continue
        row = _check(name, case, tolerance, device)
        rows.append(row)
        if not row["is_match"]:
            failures.append(name)
    notes = [f"{len(rows) - len(failures)}/{len(rows)} cases match the fp32 reference"]
    error = triton_error(device)
    notes.append(error or _path_note(device))
    is_failed = bool(failures) or error is not None or not rows
    return {"status": "failed" if is_failed else outcome(clock), "rows": rows, "notes": notes}


def _hidden_cases(hidden: int, patterns: tuple[str, ...], max_ranks: tuple[int, ...]):
    """(name, case, tolerance) at hidden x hidden, rank 16 and 64, every dtype: SGMV over
    the popularity patterns (prefill-like rows), BGMV with one row per adapter."""
    for dtype_name, dtype in DTYPES.items():
        for max_rank in max_ranks:
            ranks = [max_rank, max_rank // 2, 0, 8] * 8  # 32 slots, every fourth empty (not 3:
            # the "identical" pattern puts every request on slot 3)
            buffers = filled_buffers(ranks, max_rank, hidden, hidden, dtype, seed=max_rank)
            for pattern in patterns:
                per_request = request_slots(pattern, 8, len(ranks), seed=4)
                slots = token_slots(per_request, [1, 40, 7, 16, 3, 25, 9, 12])
                yield (f"sgmv-{pattern}-r{max_rank}-{dtype_name}",
                       _hidden_case(buffers, slots, dtype, hidden), HIDDEN_TOLERANCE[dtype_name])
            slots = request_slots("distinct", len(ranks), len(ranks), seed=5)
            yield (f"bgmv-distinct-r{max_rank}-{dtype_name}",
                   _hidden_case(buffers, slots, dtype, hidden), HIDDEN_TOLERANCE[dtype_name])
            yield from _qkv_cases(hidden, max_rank, dtype_name, dtype)


def _qkv_cases(hidden: int, max_rank: int, dtype_name: str, dtype):
    """A fused q|k|v group (GQA widths) whose adapters leave some projections alone."""
    ranks = [(max_rank, 0, max_rank), (8, 8, 8), (0, max_rank // 2, 0), (0, 0, 0)] * 8
    sizes = (hidden, hidden // 4, hidden // 4)
    buffers = filled_buffers(ranks, max_rank, hidden, sizes, dtype, seed=max_rank + 1)
    per_request = request_slots("uniform", 8, len(ranks), seed=6)
    slots = token_slots(per_request, [1, 40, 7, 16, 3, 25, 9, 12])
    yield (f"sgmv-qkv-r{max_rank}-{dtype_name}", _hidden_case(buffers, slots, dtype, hidden),
           HIDDEN_TOLERANCE[dtype_name])
    slots = request_slots("distinct", len(ranks), len(ranks), seed=7)
    yield (f"bgmv-qkv-r{max_rank}-{dtype_name}", _hidden_case(buffers, slots, dtype, hidden),
           HIDDEN_TOLERANCE[dtype_name])


def _hidden_case(buffers, slots, dtype, hidden) -> dict:
    gen = torch.Generator().manual_seed(len(slots))
    x = torch.randn(len(slots), hidden, generator=gen).to(dtype)
    y = torch.randn(len(slots), buffers.out_features, generator=gen).to(dtype)
    return {"slots": slots, "x": x, "y": y,
            **{name: getattr(buffers, name) for name in BUFFER_FIELDS},
            "expected": reference_lora(y, x, buffers, slots)}


def _check(name: str, case: dict, tolerance: tuple[float, float], device: torch.device) -> dict:
    """Runs one case on `device`; the row says whether it matched and by how much."""
    # copy=True: on CPU `.to` would hand back the case's own y, and the run would change it.
    on_device = {k: case[k].to(device, copy=True) for k in ("x", "y", *BUFFER_FIELDS[:-1])}
    if device.type != "cuda":  # the torch path needs finite padding (sgmv.py); Triton never reads it
        on_device["lora_a"], on_device["lora_b"] = (on_device[k].nan_to_num(0.0) for k in ("lora_a", "lora_b"))
    batch = LoraBatch.from_slots(case["slots"], device=device)
    x, y = on_device.pop("x"), on_device.pop("y")
    add_lora(y, x, LoraBuffers(**on_device, slice_sizes=case["slice_sizes"]), batch=batch)
    got, expected = y.float().cpu(), case["expected"]
    atol, rtol = tolerance
    is_close = torch.allclose(got, expected, atol=atol, rtol=rtol)
    untouched = [row for row, slot in enumerate(case["slots"])
                 if slot is None or not bool(case["ranks"][slot].any())]
    is_kept = torch.equal(y.cpu()[untouched], case["y"][untouched])
    # Every case has rows with a live adapter: a kernel that adds nothing must not pass.
    num_changed = int((y.cpu() != case["y"]).any(dim=1).sum())
    return {"case": name, "kernel": "bgmv" if batch.is_bgmv else "sgmv", "rows": len(case["slots"]),
            "rows_changed": num_changed, "max_abs_error": float((got - expected).abs().max()),
            "atol": atol, "is_match": bool(is_close and is_kept and num_changed > 0)}


def triton_error(device: torch.device, kernels=KERNELS, entry: str = "add_lora") -> str | None:
    """Why the run did not prove that the compiled `kernels` ran (`entry` being what
    would otherwise have fallen back to torch), or None when it did."""
    if device.type != "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set: the kernels ran interpreted, not compiled"
    if not is_triton_available():
        return f"Triton is not installed: {entry} ran the torch path"
    missing = [k.__name__ for k in kernels if num_compiled(k) == 0]
    if missing:
        return f"no compiled binary for {', '.join(missing)}: Triton did not run them"
    return None


def num_compiled(kernel) -> int:
    """Compiled binaries Triton holds for `kernel`, over every device (0 when it never
    launched, or for the plain function of a CPU-only install)."""
    caches = getattr(kernel, "device_caches", None) or {}
    return sum(len(entry[0]) for entry in caches.values())


def _path_note(device: torch.device) -> str:
    if device.type == "cuda":
        counts = ", ".join(f"{k.__name__} {num_compiled(k)}" for k in KERNELS)
        return f"compiled Triton ran every case (binaries: {counts})"
    return "cpu dry run: add_lora ran the torch path (Triton runs only on CUDA)"
