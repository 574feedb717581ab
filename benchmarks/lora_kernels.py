"""LoRA kernel microbenchmark on CPU: the two torch paths at the shapes the model calls.

    python -m benchmarks lora_kernels                  # tiny and small model shapes
    python -m benchmarks.lora_kernels --quick          # tiny only, fewer sizes
    python -m benchmarks.lora_kernels --shape llama8b  # hidden 4096

The model calls `add_lora` once per (layer, projection group): q|k|v (three slices), o,
gate|up (two slices) and down, rank 16 on every projection. For each group, batches of
1-128 rows over 1-32 distinct adapters, two shapes:
  bgmv  one row per request, requests in random adapter order (decode);
  sgmv  each adapter's rows contiguous, like prefill chunks (no gather needed).
Columns (ms; the functions take turns, and each figure is the 20th percentile of its
calls: on a shared machine medians catch other processes' time slices, 10-100 ms spikes
that are no cost of the op itself):
`naive` is the per-adapter, per-projection loop PEFT uses for mixed batches; `grouped`
(sgmv_torch: one shrink and one expand per slice per adapter) and `blocked`
(blocked_torch: rows padded into one block per slot, one batched matmul for the shrink
and one per slice for the expand) are the two CPU paths; `base` is the group's own fused
matmul, for scale. `pick` is the path the cost model in kernels/cpu/lora.py chooses,
`faster` the one that measured faster, `lost` the time the pick lost (0 when it was
right). The paths run on one thread (`--threads`), as `add_lora` runs them for up to 256
rows.
JSON lines go to benchmarks/results/lora_kernels.jsonl.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import threading
import time

import torch

from benchmarks.serving.checkpoint import SHAPES, ModelShape
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.cpu.blocked import blocked_torch
from lorafleet.kernels.cpu.lora import prefers_slot_blocks
from lorafleet.kernels.sgmv import sgmv_torch

RESULTS = pathlib.Path(__file__).parent / "results" / "lora_kernels.jsonl"
RANK = 16
COLUMNS = ("naive", "grouped", "blocked", "base")
ALL_SHAPES = {**SHAPES, "llama8b": ModelShape(4096, 32, 32, 8, 14336, 128256)}


def group_sizes(shape: ModelShape) -> dict[str, tuple[int, tuple[int, ...]]]:
    """group -> (in_features, out_features per slice), as the decoder's groups."""
    kv = shape.num_kv_heads * (shape.hidden // shape.num_heads)
    h, inter = shape.hidden, shape.intermediate
    return {"qkv": (h, (h, kv, kv)), "o": (h, (h,)), "gate_up": (h, (inter, inter)),
            "down": (inter, (h,))}


def naive_per_adapter(y, x, buffers: LoraBuffers, slots: list[int | None]) -> None:
    """PEFT's mixed-batch loop: for each adapter in the batch, index its rows and apply it."""
    for slot in sorted({s for s in slots if s is not None}):
        rows = [i for i, s in enumerate(slots) if s == slot]
        for index, columns in enumerate(buffers.slice_columns):  # one module per projection
            rank = int(buffers.ranks[slot, index])
            a = buffers.slice_a(slot, index)[:rank]
            b = buffers.lora_b[slot, :rank, columns].t()
            y[rows, columns] += float(buffers.scale[slot, index]) * ((x[rows] @ a.T) @ b.T)


def _slots(kind: str, num_rows: int, num_distinct: int, rng: random.Random) -> list[int]:
    if kind == "sgmv":  # contiguous run of rows per adapter
        return [row * num_distinct // num_rows for row in range(num_rows)]
    slots = [row % num_distinct for row in range(num_rows)]
    rng.shuffle(slots)
    return slots


def _low_ms(fns: dict, min_seconds: float) -> dict[str, float]:
    """The 20th percentile ms of each function, calls taking turns (one warm-up call each
    first)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    while min(map(len, times.values())) < 10 or (
            time.perf_counter() - start < min_seconds and len(times["grouped"]) < 100):
        for name, fn in fns.items():
            begin = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - begin)
    return {name: round(statistics.quantiles(t, n=5)[0] * 1e3, 4) for name, t in times.items()}


def measure(kind, num_rows, num_distinct, buffers, weight, min_seconds) -> dict:
    """One row of the table: every column's median time for this batch."""
    slots = _slots(kind, num_rows, num_distinct, random.Random(num_rows * 1000 + num_distinct))
    dtype = buffers.lora_a.dtype
    x = torch.randn(num_rows, buffers.in_features, dtype=dtype)
    y = torch.zeros(num_rows, buffers.out_features, dtype=dtype)
    batch = LoraBatch.from_slots(slots)
    row = {"kind": kind, "batch": num_rows, "distinct": num_distinct}
    row.update(_low_ms({
        "naive": lambda: naive_per_adapter(y, x, buffers, slots),
        "grouped": lambda: sgmv_torch(y, x, buffers, batch=batch, is_checked=True),
        "blocked": lambda: blocked_torch(y, x, buffers, batch=batch, is_checked=True),
        "base": lambda: torch.mm(x, weight),
    }, min_seconds))
    row["pick"] = "blocked" if prefers_slot_blocks(batch, buffers) else "grouped"
    row["faster"] = "blocked" if row["blocked"] < row["grouped"] else "grouped"
    row["lost"] = round(row[row["pick"]] - row[row["faster"]], 4)
    return row


def _buffers(in_features: int, sizes: tuple[int, ...], num_slots: int, dtype) -> LoraBuffers:
    buffers = LoraBuffers.allocate(num_slots=num_slots, max_rank=RANK, in_features=in_features,
                                   out_features=sizes, dtype=dtype)
    for slot in range(num_slots):
        buffers.write_slot(slot, [(torch.randn(RANK, in_features).to(dtype),
                                   torch.randn(size, RANK).to(dtype), 2.0) for size in sizes])
    return buffers


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape only, fewer sizes")
    parser.add_argument("--shape", choices=sorted(ALL_SHAPES), nargs="+",
                        help="model shapes (default tiny and small; tiny with --quick)")
    parser.add_argument("--batches", type=int, nargs="+", help="rows per batch "
                        "(default 1 8 32 64 128; 1 32 128 with --quick)")
    parser.add_argument("--distinct", type=int, nargs="+", help="distinct adapters per batch "
                        "(default 1 4 8 16 32; 1 8 32 with --quick)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: add_lora runs these paths on one "
                             "thread for batches up to 256 rows)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep, prints the table and appends JSON lines; returns 0."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = {"benchmark": "lora_kernels", "rank": RANK, "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"rank {RANK}, {args.dtype}, {meta['threads']} threads; ms, 20th percentile")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # On a thread of its own, as the worker steps its engine: torch ops issued from a
    # process's main thread run slower when other processes keep the cores busy.
    sweep = threading.Thread(target=_sweep, args=(args, meta))
    sweep.start()
    sweep.join()
    return 0


def _sweep(args, meta: dict) -> None:
    shapes = args.shape or (["tiny"] if args.quick else ["tiny", "small"])
    dtype = getattr(torch, args.dtype)
    batches = args.batches or ((1, 32, 128) if args.quick else (1, 8, 32, 64, 128))
    distincts = args.distinct or ((1, 8, 32) if args.quick else (1, 4, 8, 16, 32))
    min_seconds = 0.05 if args.quick else 0.2
    header = " ".join(f"{c:>9}" for c in COLUMNS)
    with torch.inference_mode(), RESULTS.open("a") as out:
        for shape_name in shapes:
            for group, (in_features, sizes) in group_sizes(ALL_SHAPES[shape_name]).items():
                buffers = _buffers(in_features, sizes, max(distincts), dtype)
                weight = torch.randn(in_features, sum(sizes), dtype=dtype)
                print(f"\n{shape_name} {group}: in {in_features}, out {'+'.join(map(str, sizes))}")
                print(f"{'kind':5} {'batch':>5} {'distinct':>8} {header}  pick      faster    lost")
                for kind in ("bgmv", "sgmv"):
                    for num_rows in batches:
                        for num_distinct in (d for d in distincts if d <= num_rows):
                            row = measure(kind, num_rows, num_distinct, buffers, weight,
                                          min_seconds)
                            print(f"{kind:5} {num_rows:5} {num_distinct:8} "
                                  + " ".join(f"{row[c]:9.3f}" for c in COLUMNS)
                                  + f"  {row['pick']:9} {row['faster']:9} {row['lost']:.3f}",
                                  flush=True)
                            out.write(json.dumps({**meta, "shape": shape_name, "group": group,
                                                  "in": in_features, "out": list(sizes), **row})
                                      + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
