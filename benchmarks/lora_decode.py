"""Decode throughput with many adapters in one batch (issue: multi-LoRA).

32 sequences decode together in three cases: base model only; all on one adapter; each on
its own adapter (32 distinct, rank 16, all seven projections). Target on this 2-core CPU:
32 distinct >= 0.8x base only. The model is generated (random weights; speed does not
depend on them): by default the "small" config, hidden 1024, 8 layers, GQA.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import torch

from benchmarks.results import append_rows
from lorafleet.dataplane.demo import write_adapter, write_model
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.lora.host_cache import AdapterSource
from lorafleet.dataplane.server.build import WorkerConfig, build_worker

TARGET_RATIO = 0.8


def _engine(model_dir, adapter_dirs, num_seqs):
    config = WorkerConfig(model_dir, device="cpu", dtype="float32", kv_cache_bytes=512 << 20,
                          max_loras=num_seqs, max_lora_rank=16, max_cpu_loras=num_seqs,
                          max_num_seqs=num_seqs, worker_id="bench")
    worker, _ = build_worker(config)
    digests, sizes = [], []
    for index, path in enumerate(adapter_dirs):
        loaded = worker.adapters.load(str(path))
        worker.cache.put(AdapterSource(f"bench/a{index}@1", str(path), loaded.digest), loaded)
        assert worker.bridge.engine.try_place_adapter(loaded.digest)
        digests.append(loaded.digest)
        sizes.append(loaded.size_bytes)
    return worker, digests, sum(sizes)


def decode_tokens_per_second(worker, adapters, *, prompt_len: int, num_tokens: int) -> float:
    """Output tokens/s over the decode steps only (after every prefill is done)."""
    engine = worker.bridge.engine
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    for i, adapter in enumerate(adapters):
        prompt = [10 + (i * 7 + j) % 300 for j in range(prompt_len)]
        engine.add_request(f"r{i}", prompt, params=params, adapter=adapter)
    started, counted = None, 0
    while engine.has_unfinished():
        outputs = engine.step()
        if started is None and engine.scheduler.num_waiting == 0 and all(
                r.num_computed_tokens >= len(r.prompt_token_ids) for r in engine.scheduler.running):
            started, counted = time.perf_counter(), 0
            continue
        counted += sum(len(o.new_token_ids) for o in outputs)
    return counted / (time.perf_counter() - started)


def run(hidden: int, num_layers: int, num_seqs: int, num_tokens: int) -> list[dict]:
    """Measures the three cases; returns one row per case."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        model_dir = write_model(root / "model", hidden=hidden, num_layers=num_layers)
        adapter_dirs = [write_adapter(root / f"a{i}", model_dir, rank=16, alpha=32,
                                      target_modules="all-linear", seed=i)
                        for i in range(num_seqs)]
        worker, digests, adapter_bytes = _engine(model_dir, adapter_dirs, num_seqs)
        cases = {"base only": [None] * num_seqs, "one adapter": [digests[0]] * num_seqs,
                 f"{num_seqs} distinct": digests}
        for adapters in cases.values():  # warm-up
            decode_tokens_per_second(worker, adapters, prompt_len=16, num_tokens=4)
        # Cases take turns, best of three each: other load on the machine only ever slows a
        # run, and taking turns spreads it over every case.
        rates = {case: [] for case in cases}
        for _ in range(3):
            for case, adapters in cases.items():
                rates[case].append(decode_tokens_per_second(
                    worker, adapters, prompt_len=16, num_tokens=num_tokens))
        rows = [{"case": case, "tokens_per_s": max(r)} for case, r in rates.items()]
        base_bytes = worker.bridge.engine.runner.model.weights.num_bytes()
        worker.metrics.close()
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_base"] = row["tokens_per_s"] / base
    # Decode on a CPU is bound by reading weights: each step reads the base model once and
    # every distinct adapter in the batch once, whatever the kernels do.
    rows[-1]["bandwidth_bound_vs_base"] = base_bytes / (base_bytes + adapter_bytes)
    rows[-1]["base_weight_bytes"], rows[-1]["adapter_weight_bytes"] = base_bytes, adapter_bytes
    return rows


def main(argv: list[str] | None = None) -> int:
    """Prints the table and appends JSON lines to benchmarks/results/lora_decode.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seqs", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="decode tokens per sequence")
    parser.add_argument("--quick", action="store_true", help="hidden 256, 2 layers, 16 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.tokens = 256, 2, 16
    torch.manual_seed(0)
    rows = run(args.hidden, args.layers, args.seqs, args.tokens)
    print(f"\nLoRA decode, {args.seqs} sequences, hidden {args.hidden}, {args.layers} layers, "
          f"rank 16 on all seven projections, {torch.get_num_threads()} threads")
    print(f"{'case':<14} {'tokens/s':>10} {'vs base':>8}")
    for row in rows:
        print(f"{row['case']:<14} {row['tokens_per_s']:>10.1f} {row['vs_base']:>7.2f}x")
    last = rows[-1]
    print(f"weights read per decode step: base {last['base_weight_bytes'] / 2**20:.0f} MiB, "
          f"{args.seqs} adapters {last['adapter_weight_bytes'] / 2**20:.0f} MiB -> a step bound by reading weights "
          f"could reach at most {last['bandwidth_bound_vs_base']:.2f}x base")
    distinct = rows[-1]["vs_base"]
    verdict = "met" if distinct >= TARGET_RATIO else "NOT met"
    print(f"target: {args.seqs} distinct >= {TARGET_RATIO}x base only -> {distinct:.2f}x ({verdict})")
    append_rows("lora_decode", rows, hidden=args.hidden, layers=args.layers, seqs=args.seqs,
                tokens=args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
