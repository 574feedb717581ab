"""Decode throughput with many adapters in one batch, the engine stepped in process.

B sequences (`--seqs`, default 32) generate together; sequence i uses adapter i mod K for
each K of `--adapters` (K = 0: base model only), so min(K, B) distinct adapters share
every step. Adapters are rank 16 on all seven projections. The model is generated (random
weights; speed does not depend on them): `--shape tiny` (hidden 256, 4 layers) or `small`
(hidden 1024, 8 layers), the shapes of issue 11's table. Two rates per case: decode
tokens/s (steps after every prompt is in) and end-to-end output tokens/s (B x tokens over
the whole run, prefill included, as issue 11 counts). Cases take turns `--repeats` times;
the table gives the median and the best of each. The engine runs on its own thread, as in
the server (torch ops from a process's main thread run slower on a busy machine; see
docs/benchmarks.md). Target on this 2-core CPU: 32 distinct >= 0.8x base only.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import torch

from benchmarks.results import append_rows
from benchmarks.serving.checkpoint import SHAPES, write_adapters, write_model
from benchmarks.serving.references import on_thread
from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine_process.build import build_engine
from lorafleet.dataplane.engine_process.messages import AdapterSource

TARGET_RATIO = 0.8
RANK = 16


def _engine(model_dir, adapter_dirs, num_seqs):
    # The budget holds the adapter slots too: 32 rank-16 slots of the smollm2 shape take
    # 625 MB, more than the 512 MiB that was once enough for the tiny and small shapes.
    config = WorkerConfig(model_dir, device="cpu", dtype="float32", kv_cache_bytes=2 << 30,
                          max_loras=num_seqs, max_lora_rank=RANK, max_cpu_loras=num_seqs,
                          max_num_seqs=num_seqs, worker_id="bench")
    parts = build_engine(config)
    digests, sizes = [], []
    for index, path in enumerate(adapter_dirs):
        loaded = parts.files.load(str(path))
        parts.host.put(AdapterSource(f"bench/a{index}@1", str(path), loaded.digest), loaded)
        if not parts.engine.try_place_adapter(loaded.digest):
            raise RuntimeError(f"adapter {index} found no device slot")
        digests.append(loaded.digest)
        sizes.append(loaded.size_bytes)
    return parts, digests, sum(sizes)


def generate(engine, adapters, *, prompt_len: int, num_tokens: int) -> tuple[float, float]:
    """(decode tokens/s after every prefill is done, output tokens/s over the whole run)."""
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    for i, adapter in enumerate(adapters):
        prompt = [10 + (i * 7 + j) % 300 for j in range(prompt_len)]
        engine.add_request(f"r{i}", prompt, params=params, adapter=adapter)
    begun = time.perf_counter()
    started, counted = None, 0
    while engine.has_unfinished():
        outputs = engine.step()
        if started is None and engine.scheduler.num_waiting == 0 and all(
                r.num_computed_tokens >= len(r.prompt_token_ids) for r in engine.scheduler.running):
            started, counted = time.perf_counter(), 0
            continue
        counted += sum(len(o.new_token_ids) for o in outputs)
    ended = time.perf_counter()
    return counted / (ended - started), len(adapters) * num_tokens / (ended - begun)


def decode_tokens_per_second(engine, adapters, *, prompt_len: int, num_tokens: int) -> float:
    """Decode tokens/s of `engine` (benchmarks/gpu_check/decode.py uses it)."""
    return generate(engine, adapters, prompt_len=prompt_len, num_tokens=num_tokens)[0]


def machine_rates(hidden: int, intermediate: int, rows: int) -> tuple[float, float]:
    """(GB/s, GFLOP/s) of this machine: a 256 MiB float32 copy (bytes read + written) and
    F.linear of `rows` rows by the model's [hidden -> 2 x intermediate] gate|up weight,
    best of 5 each (the rates the bounds below divide by)."""
    source = torch.ones(64 << 20)
    target = torch.empty_like(source)
    x = torch.randn(rows, hidden)
    weight = torch.randn(2 * intermediate, hidden)
    copy_s, gemm_s = [], []
    for _ in range(5):
        began = time.perf_counter()
        target.copy_(source)
        copy_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        torch.nn.functional.linear(x, weight)
        gemm_s.append(time.perf_counter() - began)
    bandwidth = 2 * source.numel() * 4 / min(copy_s) / 1e9
    gemm = 2 * rows * weight.numel() / min(gemm_s) / 1e9
    return bandwidth, gemm


def matmul_params(shape) -> int:
    """Weights a token is multiplied by: the seven projections of every layer and the
    output head (the input embedding is a lookup)."""
    head_dim = shape.hidden // shape.num_heads
    attention = 2 * shape.hidden * shape.hidden + 2 * shape.hidden * shape.num_kv_heads * head_dim
    return shape.num_layers * (attention + 3 * shape.hidden * shape.intermediate) \
        + shape.vocab * shape.hidden


def _add_bounds(rows: list[dict], num_seqs: int, base_bytes: int, adapter_bytes_each: float,
                rates: tuple[float, float], num_params: int) -> None:
    """Per decode step: its measured time, the time to read its weights at the copy rate,
    and the time of its matmul FLOPs at the GEMM rate (B rows by the base's matmul weights
    and each distinct adapter's A and B; float32, 4 bytes a weight)."""
    bandwidth, gemm = rates
    for row in rows:
        num_bytes = base_bytes + adapter_bytes_each * row["distinct"]
        adapter_rows = num_seqs / row["distinct"] if row["distinct"] else 0
        flops = 2 * num_seqs * num_params \
            + 2 * adapter_rows * adapter_bytes_each / 4 * row["distinct"]
        row["step_ms"] = 1e3 * num_seqs / row["decode_tok_s"]
        row["read_ms"] = 1e3 * num_bytes / (bandwidth * 1e9)
        row["flops_ms"] = 1e3 * flops / (gemm * 1e9)
        row["copy_gb_s"], row["gemm_gflop_s"] = bandwidth, gemm


def run(shape_name: str, counts: list[int], num_seqs: int, prompt_len: int, num_tokens: int,
        repeats: int) -> list[dict]:
    """Measures every K of `counts`; returns one row per K."""
    shape = SHAPES[shape_name]
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        model_dir = write_model(root / "model", shape)
        num_adapters = min(max(counts), num_seqs)
        adapter_dirs = write_adapters(root / "adapters", model_dir, [RANK] * num_adapters)
        parts, digests, adapter_bytes = _engine(model_dir, adapter_dirs, num_seqs)
        engine = parts.engine
        cases = {k: [digests[i % k] if k else None for i in range(num_seqs)] for k in counts}
        for adapters in cases.values():  # warm-up
            on_thread(lambda a=adapters: generate(engine, a, prompt_len=8, num_tokens=4))
        # Cases take turns: other load on the machine then spreads over every case.
        rates = {k: [] for k in cases}
        for _ in range(repeats):
            for k, adapters in cases.items():
                rates[k].append(on_thread(lambda a=adapters: generate(
                    engine, a, prompt_len=prompt_len, num_tokens=num_tokens)))
        base_bytes = engine.runner.model.weights.num_bytes()
        parts.close()
        machine = on_thread(lambda: machine_rates(shape.hidden, shape.intermediate, num_seqs))
    rows = []
    for k, pairs in rates.items():
        decode, end_to_end = [p[0] for p in pairs], [p[1] for p in pairs]
        rows.append({"adapters": k, "distinct": min(k, num_seqs),
                     "decode_tok_s": statistics.median(decode), "decode_best": max(decode),
                     "e2e_tok_s": statistics.median(end_to_end), "e2e_best": max(end_to_end),
                     "runs_decode": decode, "runs_e2e": end_to_end})
    base = next((row["decode_tok_s"] for row in rows if row["adapters"] == 0), None)
    for row in rows:
        row["vs_base"] = row["decode_tok_s"] / base if base else None
        # Decode reads the base weights once per step and every distinct adapter once.
        row["bandwidth_bound_vs_base"] = base_bytes / (
            base_bytes + adapter_bytes * row["distinct"] / max(num_adapters, 1))
    _add_bounds(rows, num_seqs, base_bytes, adapter_bytes / max(num_adapters, 1), machine,
                matmul_params(shape))
    return rows


def _print(rows: list[dict], args) -> None:
    print(f"\nLoRA decode, {args.seqs} sequences, {args.shape} ({SHAPES[args.shape].describe()}), "
          f"prompt {args.prompt_len}, {args.tokens} tokens each, rank {RANK} on all seven "
          f"projections, {torch.get_num_threads()} threads; median (best) of {args.repeats}")
    print(f"{'K':>4} {'decode tok/s':>20} {'end-to-end tok/s':>20} {'vs base':>8} {'bound':>6}")
    for row in rows:
        ratio = f"{row['vs_base']:.2f}x" if row["vs_base"] is not None else "-"
        print(f"{row['adapters']:>4} {row['decode_tok_s']:>11.0f} ({row['decode_best']:>6.0f})"
              f" {row['e2e_tok_s']:>11.0f} ({row['e2e_best']:>6.0f}) {ratio:>8}"
              f" {row['bandwidth_bound_vs_base']:>5.2f}x")
    print("bound: the ratio to base a step that only read weights (base once, each distinct "
          "adapter once) would reach")
    first = rows[0]
    print(f"per decode step, against this machine's copy rate {first['copy_gb_s']:.1f} GB/s "
          f"and F.linear rate {first['gemm_gflop_s']:.0f} GFLOP/s at {args.seqs} rows:")
    print(f"{'K':>4} {'step ms':>8} {'read ms':>8} {'FLOP ms':>8}  (read: its weights once; "
          f"FLOP: its matmuls at that rate)")
    for row in rows:
        print(f"{row['adapters']:>4} {row['step_ms']:>8.2f} {row['read_ms']:>8.2f} "
              f"{row['flops_ms']:>8.2f}")
    distinct = [row for row in rows if row["adapters"] >= args.seqs and row["vs_base"]]
    if distinct:
        ratio = distinct[0]["vs_base"]
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"target: {args.seqs} distinct >= {TARGET_RATIO}x base only -> {ratio:.2f}x ({verdict})")


def main(argv: list[str] | None = None) -> int:
    """Prints the table and appends JSON lines to benchmarks/results/lora_decode.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small",
                        help="generated model shape (default small)")
    parser.add_argument("--adapters", type=int, nargs="+", default=[0, 1, 8, 32],
                        help="K values: sequence i uses adapter i mod K; 0 = base only")
    parser.add_argument("--seqs", type=int, default=32, help="sequences in the batch (B)")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per sequence")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case, taking turns")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shape, K = 0 8 32, prompt 16, 16 tokens, one run")
    args = parser.parse_args(argv)
    if any(k < 0 for k in args.adapters) or min(args.seqs, args.tokens, args.repeats) < 1:
        parser.error("--adapters must be >= 0; --seqs, --tokens and --repeats >= 1")
    if args.quick:
        args.shape, args.adapters, args.prompt_len, args.tokens, args.repeats = (
            "tiny", [0, 8, 32], 16, 16, 1)
    torch.manual_seed(0)
    rows = run(args.shape, args.adapters, args.seqs, args.prompt_len, args.tokens, args.repeats)
    _print(rows, args)
    append_rows("lora_decode", rows, shape=args.shape, seqs=args.seqs,
                prompt_len=args.prompt_len, tokens=args.tokens, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
