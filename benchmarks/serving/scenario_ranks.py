"""`--preset ranks`: a batch mixing ranks 8, 16 and 64 against one of all rank 16, and
rank-16 adapters in slots sized for rank 64 against slots sized for rank 16.

Three workers, each with 12 device slots and 12 adapters, alike but for the rank:
--max-lora-rank 64 with 12 adapters of mixed ranks (8/16/64, four each); --max-lora-rank
64 with 12 of rank 16; --max-lora-rank 16 with the same 12 of rank 16. Closed loop at 24
in flight, request i on adapter i mod 12, so every step mixes all twelve. The three cells
take turns (--repeats), best of each. Target: rank 16 in rank-64 slots >= 0.97x the
tokens/s of rank-16 slots — users size --max-lora-rank for their largest adapter and
serve mostly small ones, so the kernels must do each adapter's own rank of work, not the
slot's. (The workers differ in nothing else: more slots than adapters scatters a set
over the bank, which costs on its own — see docs/benchmarks.md.)
"""

from __future__ import annotations

import asyncio
import contextlib

from benchmarks.serving.cells import run_cell
from benchmarks.serving.report import print_table
from benchmarks.serving.workload import Lengths

NUM_PER_SET = 12
CONCURRENCY = 24
TARGET_PADDED_RATIO = 0.97
EXACT, PADDED, MIXED = "all rank 16, slots 16", "all rank 16", "ranks 8/16/64"


def run(ctx) -> list[dict]:
    """Measures the three cells; returns their rows."""
    mixed = {f"mixed/a{i:03d}": path for i, path in
             enumerate(ctx.adapter_dirs([8, 16, 64] * (NUM_PER_SET // 3)))}
    # rank-16 directories after the four the mixed set took
    uniform = {f"uniform/a{i:03d}": path for i, path in
               enumerate(ctx.adapter_dirs([16] * (NUM_PER_SET + 4))[4:])}
    num_requests = CONCURRENCY * (1 if ctx.quick else 3)
    slots = ["--max-loras", str(NUM_PER_SET), "--max-cpu-loras", str(NUM_PER_SET)]
    options = [*slots, "--max-lora-rank", "64"]
    sets = {PADDED: uniform, MIXED: mixed, EXACT: uniform}
    ranks = {PADDED: options, MIXED: options, EXACT: [*slots, "--max-lora-rank", "16"]}
    best: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        workers = {label: stack.enter_context(ctx.worker(sets[label], ranks[label]))
                   for label in sets}
        targets = {label: ctx.target(worker) for label, worker in workers.items()}
        for label, names in sets.items():
            ctx.warm_up(targets[label], list(names))
        for _ in range(ctx.args.repeats):
            for label, names in sets.items():
                requests = ctx.requests(list(names), num_requests, prompt=Lengths("fixed", 64),
                                        output=Lengths("fixed", 32 if ctx.quick else 64))
                row, _ = asyncio.run(run_cell(targets[label], ctx.mode(concurrency=CONCURRENCY),
                                              requests, cell=label))
                if label not in best or row["output_tok_s"] > best[label]["output_tok_s"]:
                    best[label] = row
        worker = workers[PADDED]
    rows = list(best.values())
    for row in rows:
        row["tok_s_vs_rank16"] = row["output_tok_s"] / best[PADDED]["output_tok_s"]
    print_table(f"ranks: {NUM_PER_SET} adapters in one batch, {CONCURRENCY} in flight, "
                f"{NUM_PER_SET} slots sized for rank 64 unless said", rows,
                (("vs all-16", "tok_s_vs_rank16", "{:.2f}x"),))
    ratio = best[PADDED]["output_tok_s"] / best[EXACT]["output_tok_s"]
    verdict = "met" if ratio >= TARGET_PADDED_RATIO else "NOT met"
    print(f"target: rank 16 in rank-64 slots >= {TARGET_PADDED_RATIO}x rank-16 slots -> "
          f"{ratio:.2f}x ({verdict})")
    ctx.record("ranks", rows, worker_args=worker.args, repeats=ctx.args.repeats,
               padded_vs_exact=ratio)
    return rows
