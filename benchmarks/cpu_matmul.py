"""CPU matmul candidates at lorafleet's projection shapes, in GFLOP/s (issue 11, item 2).

    python -m benchmarks cpu_matmul                     # every model, rows, dtype
    python -m benchmarks cpu_matmul --quick             # small model, float32, 3 candidates

Each candidate computes y = x @ W for a projection weight W [in, out]:
  mm          torch.mm on the [in, out] transposed weight (the model's "reference" path)
  linear      F.linear on the [out, in] weight (transformers' call)
  onednn      oneDNN on a weight reordered once with no row-count hint (the "fast" path)
  onednn_m    oneDNN on a weight reordered for exactly this row count (a bound: a real
              model would need one copy per row count)
  mkl_packed  MKL's packed sgemm (torch.ops.mkl._mkl_linear), packed for this row count;
              float32 only
  mkldnn      torch._C._nn.mkldnn_linear, what torch.utils.mkldnn's MkldnnLinear runs (the
              input converted to and from oneDNN's tensor on every call)
Shapes per model: q|k|v and gate|up fused (one matmul) and split (one per projection, times
summed), o, down and lm_head; 1, 8, 32, 64 rows (decode) and 512 (prefill).

Weights are cold by default: each call reads the next copy from a ring of copies bigger
than the L3 cache, as a model's step reads every layer's weights from memory (--warm
reuses one copy). The machine is shared, so each cell is timed in several rounds, the
candidates taking turns, and the best round counts. The run ends with memory bandwidth:
a copy of a 512 MiB tensor and a sum over it (read only), best of several.
JSON lines go to benchmarks/results/cpu_matmul.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from benchmarks.results import append_rows

# name -> (hidden, intermediate, heads, KV heads, head dim, vocab)
MODELS = {
    "tiny": (256, 688, 8, 4, 32, 384),
    "small": (1024, 2816, 16, 4, 64, 32000),
    "smollm2-135m": (576, 1536, 9, 3, 64, 49152),
}
CANDIDATES = ("mm", "linear", "onednn", "onednn_m", "mkl_packed", "mkldnn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How each cell is timed."""

    candidates: tuple[str, ...]
    rounds: int  # timed rounds per cell; the best counts
    ring_bytes: int  # weight copies per ring (0: one copy, cache-resident)
    max_wait_s: float  # per round, for the other processes to leave the CPUs idle


def shape_groups(model: str) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    """(group name, ((in, out), ...)) for each projection group, fused and split."""
    hidden, inter, heads, kv_heads, head_dim, vocab = MODELS[model]
    q, kv = heads * head_dim, kv_heads * head_dim
    return [
        ("qkv fused", ((hidden, q + 2 * kv),)),
        ("qkv split", ((hidden, q), (hidden, kv), (hidden, kv))),
        ("o", ((q, hidden),)),
        ("gate|up fused", ((hidden, 2 * inter),)),
        ("gate|up split", ((hidden, inter), (hidden, inter))),
        ("down", ((inter, hidden),)),
        ("lm_head", ((hidden, vocab),)),
    ]


def make_call(candidate: str, weight: torch.Tensor, rows: int):
    """fn(x) computing x @ weight.t() with `candidate`, weight [out, in]; None if unsupported."""
    if candidate == "mm":
        w = weight.t().contiguous()
        return lambda x: torch.mm(x, w)
    if candidate == "linear":
        return lambda x: F.linear(x, weight)
    if candidate in ("onednn", "onednn_m"):
        hint = (rows,) if candidate == "onednn_m" else ()
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, *hint)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    if candidate == "mkl_packed":
        if weight.dtype != torch.float32:
            return None
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
        return lambda x: torch.ops.mkl._mkl_linear(x, packed, weight, None, rows)
    if candidate == "mkldnn":
        w = weight.to_mkldnn()
        return lambda x: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, None).to_dense()
    raise ValueError(f"unknown candidate {candidate!r}")


def make_ring(candidate, shapes, rows, dtype, ring_bytes):
    """Calls over enough weight copies that one pass over them exceeds `ring_bytes`.

    Each ring entry runs one call per shape of the group (one for fused, several for split).
    """
    weight_bytes = sum(i * o for i, o in shapes) * dtype.itemsize
    num_copies = max(1, -(-ring_bytes // weight_bytes))
    ring = []
    for _ in range(num_copies):
        calls = [make_call(candidate, _random(o, i, dtype=dtype), rows) for i, o in shapes]
        if None in calls:
            return None
        ring.append(calls)
    return ring


def _random(*shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype).uniform_(-1, 1)


def _time_round(ring, inputs, min_seconds: float = 0.02) -> float:
    """Seconds per group call over one pass of the ring, repeated to last `min_seconds`."""
    num_calls, start = 0, time.perf_counter()
    while num_calls < len(ring) or time.perf_counter() - start < min_seconds:
        for call, x in zip(ring[num_calls % len(ring)], inputs, strict=True):
            call(x)
        num_calls += 1
    return (time.perf_counter() - start) / num_calls


def wait_for_idle_cpu(max_wait_s: float, idle_fraction: float = 0.8) -> None:
    """Waits (up to max_wait_s) for a moment when other processes leave the CPUs idle.

    Other engineers' jobs share this machine: a round timed while they run measures them,
    not the matmul. Linux only (/proc/stat); elsewhere it returns at once."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        try:
            before = _cpu_times()
            time.sleep(0.2)
            after = _cpu_times()
        except OSError:
            return
        total = sum(after) - sum(before)
        idle = (after[3] + after[4]) - (before[3] + before[4])
        if total and idle / total >= idle_fraction:
            return


def _cpu_times() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def measure_cell(shapes, rows, dtype, settings: Settings) -> dict[str, float]:
    """Best seconds per group call for each candidate that supports the cell."""
    inputs = [_random(rows, i, dtype=dtype) for i, _ in shapes]
    rings = {c: make_ring(c, shapes, rows, dtype, settings.ring_bytes)
             for c in settings.candidates}
    rings = {c: r for c, r in rings.items() if r is not None}
    for ring in rings.values():  # warm-up: primitives created, pages touched
        _time_round(ring, inputs, 0)
    best = dict.fromkeys(rings, float("inf"))
    for _ in range(settings.rounds):  # candidates take turns: load elsewhere hits all alike
        wait_for_idle_cpu(settings.max_wait_s)
        for candidate, ring in rings.items():
            best[candidate] = min(best[candidate], _time_round(ring, inputs))
    return best


def run_model(model, rows_list, dtypes, settings: Settings) -> list[dict]:
    """One result row per (group, rows, dtype, candidate) of `model`."""
    results = []
    for dtype_name in dtypes:
        for group, shapes in shape_groups(model):
            flops_per_row = 2 * sum(i * o for i, o in shapes)
            # The head only sees the rows being sampled, never a whole prefill.
            for rows in [r for r in rows_list if group != "lm_head" or r <= 64]:
                best = measure_cell(shapes, rows, DTYPES[dtype_name], settings)
                for candidate, seconds in best.items():
                    results.append({
                        "model": model, "group": group, "rows": rows, "dtype": dtype_name,
                        "candidate": candidate, "seconds": seconds,
                        "gflops": flops_per_row * rows / seconds / 1e9})
                line = " ".join(f"{c} {flops_per_row * rows / s / 1e9:.0f}"
                                for c, s in best.items())
                print(f"  {model} {dtype_name} {group} x{rows}: {line}", flush=True)
    return results


def memory_bandwidth(num_bytes: int = 512 << 20, rounds: int = 5) -> dict[str, float]:
    """GB/s of a tensor copy (bytes read + written) and of a sum (bytes read), best of rounds."""
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    copy_s = sum_s = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        dst.copy_(src)
        copy_s = min(copy_s, time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        sum_s = min(sum_s, time.perf_counter() - start)
    return {"copy_gb_s": 2 * num_bytes / copy_s / 1e9, "read_gb_s": num_bytes / sum_s / 1e9}


def print_table(results: list[dict], candidates) -> None:
    """One line per (model, dtype, group, rows), a GFLOP/s column per candidate."""
    cells: dict[tuple, dict[str, float]] = {}
    for r in results:
        cells.setdefault((r["model"], r["dtype"], r["group"], r["rows"]), {})[
            r["candidate"]] = r["gflops"]
    print(f"\nGFLOP/s, best of rounds ({torch.get_num_threads()} threads)")
    print(f"{'model':<13} {'dtype':<8} {'group':<14} {'rows':>4} "
          + " ".join(f"{c:>10}" for c in candidates) + f" {'onednn/mm':>9}")
    for (model, dtype, group, rows), by in cells.items():
        values = " ".join(f"{by[c]:>10.1f}" if c in by else f"{'-':>10}" for c in candidates)
        ratio = by["onednn"] / by["mm"] if "onednn" in by and "mm" in by else float("nan")
        print(f"{model:<13} {dtype:<8} {group:<14} {rows:>4} {values} {ratio:>8.2f}x")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 8, 32, 64, 512])
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES),
                        choices=list(CANDIDATES))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per cell; best counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm", action="store_true",
                        help="reuse one weight copy (cache-resident) instead of a ring of copies")
    parser.add_argument("--ring-mib", type=int, default=96, help="weight copies per ring, in MiB")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each round, wait up to this long for the CPUs to be idle "
                             "(on a shared machine)")
    parser.add_argument("--quick", action="store_true",
                        help="small model, float32, 1/32/512 rows, mm/linear/onednn, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.dtypes, args.rows = ["small"], ["float32"], [1, 32, 512]
        args.candidates, args.rounds = ["mm", "linear", "onednn"], 3
    return args


def main(argv: list[str] | None = None) -> int:
    """Prints the table and appends JSON lines to benchmarks/results/cpu_matmul.jsonl."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    settings = Settings(tuple(args.candidates), args.rounds,
                        0 if args.warm else args.ring_mib << 20, args.wait_idle)
    results = []
    with torch.inference_mode():
        for model in args.models:
            results += run_model(model, args.rows, args.dtypes, settings)
    print_table(results, settings.candidates)
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (512 MiB, best of 5): copy {bandwidth['copy_gb_s']:.1f} GB/s "
          f"(read + write), sum {bandwidth['read_gb_s']:.1f} GB/s (read)")
    append_rows("cpu_matmul", results, threads=args.threads, is_warm=args.warm,
                ring_bytes=settings.ring_bytes, rounds=args.rounds,
                wait_idle_s=args.wait_idle, **bandwidth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
