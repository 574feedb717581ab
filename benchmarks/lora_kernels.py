"""LoRA kernel microbenchmark: the torch SGMV/BGMV path vs a naive per-adapter loop (CPU).

    python -m benchmarks lora_kernels          # hidden 4096
    python -m benchmarks.lora_kernels --quick  # hidden 1024, fewer sizes

Batches of 1-256 rows over 1-64 distinct adapters (rank 16), two shapes:
  bgmv  one row per request, requests in random adapter order (decode);
  sgmv  each adapter's rows contiguous, like prefill chunks (no gather needed).
Columns: `naive` is the per-adapter loop PEFT uses for mixed batches (Python index list per
adapter, gather, matmul pair, scatter); `add_lora` is the dispatcher, which on CPU runs
`grouped` (sgmv_torch: one matmul pair per adapter) or `gathered` (bgmv_torch: per-row
weights gathered for a batched matvec), whichever its cost model expects to be faster;
`build` is LoraBatch.from_slots, paid once per step, not per projection; `base` is the
projection's own hidden x hidden matmul, for scale. `speedup` is naive / add_lora.
Times are medians in milliseconds. JSON lines go to benchmarks/results/lora_kernels.jsonl.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import time

import torch

from lorafleet.kernels import LoraBatch, LoraBuffers, add_lora
from lorafleet.kernels.bgmv import bgmv_torch
from lorafleet.kernels.dispatch import prefers_gathered_weights
from lorafleet.kernels.sgmv import sgmv_torch

RESULTS = pathlib.Path(__file__).parent / "results" / "lora_kernels.jsonl"
RANK = 16
COLUMNS = ("naive", "add_lora", "grouped", "gathered", "build", "base")


def naive_per_adapter(y, x, buffers: LoraBuffers, slots: list[int | None]) -> None:
    """PEFT's mixed-batch loop: for each adapter in the batch, index its rows and apply it."""
    max_rank = buffers.max_rank
    for slot in sorted({s for s in slots if s is not None}):
        rows = [i for i, s in enumerate(slots) if s == slot]
        for index, columns in enumerate(buffers.slice_columns):  # one module per projection
            rank = int(buffers.ranks[slot, index])
            a = buffers.lora_a[slot, index * max_rank:index * max_rank + rank]
            b = buffers.lora_b[slot, columns, :rank]
            y[rows, columns] += float(buffers.scale[slot, index]) * ((x[rows] @ a.T) @ b.T)


def _slots(kind: str, num_rows: int, num_distinct: int, rng: random.Random) -> list[int]:
    if kind == "sgmv":  # contiguous run of rows per adapter
        return [row * num_distinct // num_rows for row in range(num_rows)]
    slots = [row % num_distinct for row in range(num_rows)]
    rng.shuffle(slots)
    return slots


def _median_ms(fn, min_seconds: float) -> float:
    fn()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < 7 or (time.perf_counter() - start < min_seconds and len(times) < 50):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1e3


def measure(kind, num_rows, num_distinct, buffers, weight, min_seconds) -> dict:
    """One row of the table: every column's median time for this batch."""
    hidden = weight.shape[0]
    slots = _slots(kind, num_rows, num_distinct, random.Random(num_rows * 1000 + num_distinct))
    x = torch.randn(num_rows, hidden, dtype=weight.dtype)
    y = torch.zeros(num_rows, hidden, dtype=weight.dtype)
    batch = LoraBatch.from_slots(slots)
    timed = {
        "naive": lambda: naive_per_adapter(y, x, buffers, slots),
        "add_lora": lambda: add_lora(y, x, buffers, batch=batch),
        "grouped": lambda: sgmv_torch(y, x, buffers, batch=batch),
        "gathered": lambda: bgmv_torch(y, x, buffers, batch=batch),
        "build": lambda: LoraBatch.from_slots(slots),
        "base": lambda: torch.mm(x, weight),
    }
    row = {"kind": kind, "batch": num_rows, "distinct": num_distinct}
    row.update({name: round(_median_ms(fn, min_seconds), 4) for name, fn in timed.items()})
    row["speedup_vs_naive"] = round(row["naive"] / row["add_lora"], 2)
    row["path"] = "gathered" if prefers_gathered_weights(batch, buffers) else "grouped"
    return row


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hidden 1024, fewer sizes")
    parser.add_argument("--hidden", type=int, help="hidden size (default 4096; 1024 with --quick)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep, prints the table and appends JSON lines; returns 0."""
    args = _parse(argv)
    hidden = args.hidden or (1024 if args.quick else 4096)
    dtype = getattr(torch, args.dtype)
    batches = (1, 16, 64, 256) if args.quick else (1, 8, 32, 64, 128, 256)
    distincts = (1, 4, 16, 64) if args.quick else (1, 4, 16, 32, 64)
    min_seconds = 0.05 if args.quick else 0.3
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    buffers = LoraBuffers.allocate(num_slots=max(distincts), max_rank=RANK, in_features=hidden,
                                   out_features=hidden, dtype=dtype)
    for slot in range(buffers.num_slots):
        buffers.write_slot(slot, [(torch.randn(RANK, hidden).to(dtype),
                                   torch.randn(hidden, RANK).to(dtype), 2.0)])
    weight = torch.randn(hidden, hidden, dtype=dtype)
    meta = {"benchmark": "lora_kernels", "hidden": hidden, "rank": RANK, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"hidden {hidden}, rank {RANK}, {args.dtype}, {meta['threads']} threads; median ms")
    print(f"{'kind':5} {'batch':>5} {'distinct':>8} " + " ".join(f"{c:>9}" for c in COLUMNS) + "  speedup  path")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), RESULTS.open("a") as out:
        for kind in ("bgmv", "sgmv"):
            for num_rows in batches:
                for num_distinct in (d for d in distincts if d <= num_rows):
                    row = measure(kind, num_rows, num_distinct, buffers, weight, min_seconds)
                    print(f"{kind:5} {num_rows:5} {num_distinct:8} "
                          + " ".join(f"{row[c]:9.3f}" for c in COLUMNS)
                          + f"  {row['speedup_vs_naive']:6.2f}x  {row['path']}")
                    out.write(json.dumps({**meta, **row}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
