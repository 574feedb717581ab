"""Offline generation throughput of the engine against transformers `generate`.

A generated "small" Llama (hidden 1024, 8 layers, 16 heads, 4 KV heads, float32, cpu)
serves C concurrent requests, all submitted at once; transformers generates the same
requests as one left-padded batch, as a user of it would, each run in the same process.
Output tokens/s counts the tokens each request asked for (greedy, EOS ignored).

Workloads: uniform (prompt 64, output 64) and mixed (prompts 16-512, outputs 16-256,
seeded). Targets on a 2-core CPU: >= 1.0x transformers on uniform and >= 2x on mixed at
32 concurrent.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import random
import tempfile
import time

import torch

from benchmarks.results import append_rows

SMALL = dict(hidden_size=1024, intermediate_size=2816, num_layers=8, num_heads=16,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024)
TARGETS = {("uniform", 32): 1.0, ("mixed", 32): 2.0}


@dataclasses.dataclass(frozen=True)
class Workload:
    """C requests: (prompt token ids, number of output tokens) each."""

    name: str
    requests: tuple[tuple[tuple[int, ...], int], ...]

    @property
    def num_output_tokens(self) -> int:
        """Tokens the requests ask for, the unit of throughput."""
        return sum(n for _, n in self.requests)


def make_workload(name: str, concurrency: int, seed: int) -> Workload:
    """Uniform or mixed-length requests with seeded token ids."""
    rng = random.Random(f"{name}-{concurrency}-{seed}")
    requests = []
    for _ in range(concurrency):
        if name == "uniform":
            num_prompt, num_output = 64, 64
        else:
            num_prompt, num_output = rng.randint(16, 512), rng.randint(16, 256)
        prompt = tuple(rng.randrange(10, SMALL["vocab_size"]) for _ in range(num_prompt))
        requests.append((prompt, num_output))
    return Workload(name, tuple(requests))


def run_engine(engine, workload: Workload) -> float:
    """Seconds for the engine to finish every request of the workload."""
    from lorafleet.dataplane.engine.params import SamplingParams

    start = time.perf_counter()
    for i, (prompt, num_output) in enumerate(workload.requests):
        params = SamplingParams(max_tokens=num_output, temperature=0.0, ignore_eos=True)
        engine.add_request(f"{workload.name}-{i}", prompt, params=params)
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - start


@torch.inference_mode()
def run_transformers(model, workload: Workload) -> float:
    """Seconds for one left-padded `generate` over all requests (up to the longest output)."""
    longest = max(len(p) for p, _ in workload.requests)
    ids = torch.zeros(len(workload.requests), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, _) in enumerate(workload.requests):
        ids[row, longest - len(prompt):] = torch.tensor(prompt)
        mask[row, longest - len(prompt):] = 1
    max_new = max(n for _, n in workload.requests)
    start = time.perf_counter()
    model.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                   do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def _setup(directory: pathlib.Path, kv_bytes: int):
    """The checkpoint, the engine and the transformers model."""
    import transformers

    from lorafleet.dataplane.engine.scheduler import SchedulerConfig
    from lorafleet.dataplane.runner.factory import create_engine
    from lorafleet.dataplane.runner.kv_cache import KVCacheBudget
    from tests.support.tiny_models import make_checkpoint

    overrides = dict(SMALL)
    make_checkpoint(directory, "llama-gqa", hidden_size=overrides.pop("hidden_size"),
                    intermediate_size=overrides.pop("intermediate_size"),
                    num_layers=overrides.pop("num_layers"),
                    num_heads=overrides.pop("num_heads"), **overrides)
    engine = create_engine(directory, device="cpu", dtype="float32",
                           kv_cache=KVCacheBudget(num_bytes=kv_bytes),
                           scheduler_config=SchedulerConfig(max_num_seqs=64))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return engine, model.eval()


def main(argv=None) -> int:
    """Prints a table and appends JSON lines to benchmarks/results/engine_throughput.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8 only")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--workloads", nargs="*", default=["uniform", "mixed"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-gib", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per measurement, alternating engine and transformers; "
                             "the fastest of each counts (the CPU is shared and noisy)")
    args = parser.parse_args(argv)
    levels = [1, 8] if args.quick else args.concurrency
    with tempfile.TemporaryDirectory() as tmp:
        engine, model = _setup(pathlib.Path(tmp) / "small", int(args.kv_gib * 2**30))
        warm = make_workload("uniform", 2, seed=-1)
        run_engine(engine, warm)
        run_transformers(model, warm)
        rows = [_measure(engine, model, name, c, args.seed, args.repeats)
                for name in args.workloads for c in levels]
    _report(rows)
    return 0


def _measure(engine, model, name: str, concurrency: int, seed: int, repeats: int) -> dict:
    """Times both on the same workload; alternating them spreads the CPU's noise evenly."""
    workload = make_workload(name, concurrency, seed)
    engine_s, hf_s = float("inf"), float("inf")
    for _ in range(repeats):
        engine_s = min(engine_s, run_engine(engine, workload))
        hf_s = min(hf_s, run_transformers(model, workload))
    tokens = workload.num_output_tokens
    row = {
        "workload": name, "concurrency": concurrency, "output_tokens": tokens, "repeats": repeats,
        "engine_tok_s": tokens / engine_s, "transformers_tok_s": tokens / hf_s,
        "ratio": hf_s / engine_s, "target_ratio": TARGETS.get((name, concurrency)),
    }
    print(f"  measured {name} x{concurrency}: ratio {row['ratio']:.2f}", flush=True)
    return row


def _report(rows: list[dict]) -> None:
    print(f"{'workload':<9} {'conc':>4} {'tokens':>7} {'engine tok/s':>13} "
          f"{'hf tok/s':>9} {'ratio':>6} {'target':>7}")
    for r in rows:
        target = f">={r['target_ratio']:.1f}x" if r["target_ratio"] else ""
        print(f"{r['workload']:<9} {r['concurrency']:>4} {r['output_tokens']:>7} "
              f"{r['engine_tok_s']:>13.1f} {r['transformers_tok_s']:>9.1f} "
              f"{r['ratio']:>5.2f}x {target:>7}")
    append_rows("engine_throughput", rows, threads=torch.get_num_threads(), model=SMALL)


if __name__ == "__main__":
    raise SystemExit(main())
