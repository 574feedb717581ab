"""`--preset ranks`: a batch mixing ranks 8, 16 and 64 against one of all rank 16.

One worker (--max-lora-rank 64, every adapter in a device slot) holds 12 adapters of
mixed ranks (8/16/64, four each) and 12 of rank 16; closed loop at 24 in flight, request
i on adapter i mod 12 of one set, so every step mixes all twelve. The two sets take turns
(--repeats), best of each. Slots are sized for rank 64 either way; what differs is the
work the LoRA kernels do per row.
"""

from __future__ import annotations

import asyncio

from benchmarks.serving.cells import run_cell
from benchmarks.serving.report import print_table
from benchmarks.serving.workload import Lengths

NUM_PER_SET = 12
CONCURRENCY = 24


def run(ctx) -> list[dict]:
    """Measures both sets; returns their rows."""
    mixed = {f"mixed/a{i:03d}": path for i, path in
             enumerate(ctx.adapter_dirs([8, 16, 64] * (NUM_PER_SET // 3)))}
    # rank-16 directories after the four the mixed set took
    uniform = {f"uniform/a{i:03d}": path for i, path in
               enumerate(ctx.adapter_dirs([16] * (NUM_PER_SET + 4))[4:])}
    num_requests = CONCURRENCY * (1 if ctx.quick else 3)
    options = ["--max-loras", str(2 * NUM_PER_SET), "--max-lora-rank", "64",
               "--max-cpu-loras", str(2 * NUM_PER_SET)]
    best: dict[str, dict] = {}
    with ctx.worker({**mixed, **uniform}, options) as worker:
        target = ctx.target(worker)
        ctx.warm_up(target, [*mixed, *uniform])
        sets = {"all rank 16": list(uniform), "ranks 8/16/64": list(mixed)}
        for _ in range(ctx.args.repeats):
            for label, names in sets.items():
                requests = ctx.requests(names, num_requests, prompt=Lengths("fixed", 64),
                                        output=Lengths("fixed", 32 if ctx.quick else 64))
                row, _ = asyncio.run(run_cell(target, ctx.mode(concurrency=CONCURRENCY),
                                              requests, cell=label))
                if label not in best or row["output_tok_s"] > best[label]["output_tok_s"]:
                    best[label] = row
    rows = list(best.values())
    for row in rows:
        row["tok_s_vs_rank16"] = row["output_tok_s"] / rows[0]["output_tok_s"]
    print_table(f"ranks: {NUM_PER_SET} adapters in one batch, {CONCURRENCY} in flight", rows,
                (("vs all-16", "tok_s_vs_rank16", "{:.2f}x"),))
    ctx.record("ranks", rows, worker_args=worker.args, repeats=ctx.args.repeats)
    return rows
