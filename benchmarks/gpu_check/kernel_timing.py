"""Part 4: SGMV/BGMV time against the HBM roofline and against a per-adapter loop.

Shapes: hidden 4096 in and out, rank 16 and 64, 1/8/32/128 distinct adapters, bf16; a
decode batch (128 rows, one per request, adapters shuffled: BGMV once every adapter has
a single row, SGMV otherwise) and a prefill batch (2048 rows, each adapter's rows
contiguous: SGMV). The roofline time is the bytes the call must move (`lora_bytes`) over
the measured copy bandwidth; the target is add_lora <= 1.5x that time. `launch_floor`
is two empty kernel launches back to back: calls that move a few MB cannot beat it.
`graph_ms` is the same call replayed from a CUDA graph, the kernels' own time without
the host's launch work; `graph_vs_roofline` says how near the kernels alone come.
"""

from __future__ import annotations

import random

import torch

from benchmarks.gpu_check.report import target
from benchmarks.gpu_check.timing import (
    copy_bandwidth,
    graph_ms,
    lora_bytes,
    median_ms,
    roofline_ms,
)
from benchmarks.lora_kernels import naive_per_adapter
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora

CAP_S = 120.0
TARGET_VS_ROOFLINE = 1.5
CUDA_SHAPE = {"hidden": 4096, "ranks": (16, 64), "distinct": (1, 8, 32, 128),
              "decode_rows": 128, "prefill_rows": 2048, "copy_bytes": 1 << 30, "num_samples": 7}
DRY_SHAPE = {"hidden": 256, "ranks": (16,), "distinct": (1, 8),
             "decode_rows": 16, "prefill_rows": 64, "copy_bytes": 8 << 20, "num_samples": 3}


def run(device: torch.device, clock, *, is_dry_run: bool) -> dict:
    """Measures every shape that fits the cap; one row and one target per shape."""
    shape = DRY_SHAPE if is_dry_run else CUDA_SHAPE
    dtype = torch.float32 if is_dry_run else torch.bfloat16
    bandwidth = copy_bandwidth(device, shape["copy_bytes"])
    floor_ms = median_ms(_two_empty_launches(device), device)
    rows, targets = [], []
    for rank in shape["ranks"]:
        buffers = _buffers(max(shape["distinct"]), rank, shape["hidden"], dtype, device)
        for kind in ("decode", "prefill"):
            for num_distinct in shape["distinct"]:
                name = f"{kind} r{rank} {num_distinct} distinct"
                if not clock.can_start(6.0):
                    clock.skip(name)
                    targets.append(_target(name, None, "skipped: the cap"))
                    continue
                row = measure(kind, shape[f"{kind}_rows"], num_distinct, buffers, bandwidth,
                              num_samples=shape["num_samples"])
                rows.append({"shape": name, **row, "launch_floor_ms": round(floor_ms, 4)})
                targets.append(_target(name, row["vs_roofline"],
                                       f"{row['kernel']}, {row['mbytes']:.1f} MB moved"))
    notes = [f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write), "
             f"launch floor {floor_ms * 1e3:.1f} us"]
    return {"status": "done", "rows": rows, "targets": targets, "notes": notes,
            "bandwidth_gb_s": bandwidth / 1e9}


def unmeasured_targets(reason: str) -> list[dict]:
    """Every shape's target, skipped for `reason` (the part did not run or broke)."""
    return [_target(f"{kind} r{rank} {n} distinct", None, reason) for rank in CUDA_SHAPE["ranks"]
            for kind in ("decode", "prefill") for n in CUDA_SHAPE["distinct"]]


def _target(name: str, value: float | None, note: str) -> dict:
    return target(f"{name} vs roofline", value, TARGET_VS_ROOFLINE, is_upper_bound=True, note=note)


def measure(kind: str, num_rows: int, num_distinct: int, buffers: LoraBuffers,
            bandwidth: float, *, num_samples: int = 7) -> dict:
    """add_lora and the per-adapter loop on one batch; their times and the roofline's."""
    device, dtype = buffers.lora_a.device, buffers.lora_a.dtype
    hidden, rank = buffers.in_features, buffers.max_rank
    slots = _slots(kind, num_rows, num_distinct)
    x = torch.randn(num_rows, hidden, dtype=dtype, device=device)
    y = torch.zeros(num_rows, hidden, dtype=dtype, device=device)
    batch = LoraBatch.from_slots(slots, device=device)
    fused_ms = median_ms(lambda: add_lora(y, x, buffers, batch=batch, is_checked=True), device,
                         num_samples=num_samples)
    kernels_ms = _graph_ms(lambda: add_lora(y, x, buffers, batch=batch, is_checked=True), device)
    loop_ms = median_ms(lambda: naive_per_adapter(y, x, buffers, slots), device,
                        num_samples=num_samples)
    num_bytes = lora_bytes(num_rows=num_rows, in_features=hidden, out_features=hidden,
                           num_distinct=num_distinct, rank=rank, element_size=x.element_size())
    ideal_ms = roofline_ms(num_bytes, bandwidth)
    return {"kernel": "bgmv" if batch.is_bgmv else "sgmv", "rows": num_rows,
            "mbytes": round(num_bytes / 1e6, 2), "roofline_ms": _figures(ideal_ms),
            "add_lora_ms": _figures(fused_ms), "loop_ms": _figures(loop_ms),
            "vs_roofline": round(fused_ms / ideal_ms, 2),
            "speedup_vs_loop": round(loop_ms / fused_ms, 2),
            "graph_ms": _figures(kernels_ms) if kernels_ms is not None else None,
            "graph_vs_roofline": round(kernels_ms / ideal_ms, 2) if kernels_ms is not None else None}


def _graph_ms(fn, device: torch.device) -> float | None:
    """`graph_ms`, or None where capture fails (the row still has the step's time)."""
    try:
        return graph_ms(fn, device)
    except Exception:  # noqa: BLE001 (a diagnostic column; the row's own timings stand)
        return None


def _figures(ms: float) -> float:
    """`ms` to 4 significant figures: a roofline of a few microseconds (a small kernel at
    HBM speed) would lose its digits to a fixed number of decimals."""
    return float(f"{ms:.4g}")


def _slots(kind: str, num_rows: int, num_distinct: int) -> list[int]:
    if kind == "prefill":  # each adapter's rows in one contiguous run
        return [row * num_distinct // num_rows for row in range(num_rows)]
    slots = [row % num_distinct for row in range(num_rows)]
    random.Random(num_rows * 1000 + num_distinct).shuffle(slots)
    return slots


def _buffers(num_slots: int, rank: int, hidden: int, dtype, device) -> LoraBuffers:
    buffers = LoraBuffers.allocate(num_slots=num_slots, max_rank=rank, in_features=hidden,
                                   out_features=hidden, dtype=dtype, device=device)
    for slot in range(num_slots):
        a = torch.randn(rank, hidden, device=device) / hidden**0.5
        b = torch.randn(hidden, rank, device=device) / rank**0.5
        buffers.write_slot(slot, [(a.to(dtype), b.to(dtype), 2.0)])
    return buffers


def _two_empty_launches(device: torch.device):
    tiny = torch.zeros(1, device=device)
    return lambda: (tiny.add_(0.0), tiny.add_(0.0))
