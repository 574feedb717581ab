"""Part 7: `lorafleet serve` on the device, driven over gRPC by the serving benchmark,
against the same requests stepped by the worker's engine in this process.

A generated Llama checkpoint (benchmarks/serving/checkpoint.py; random weights written
in float32, served in the plan's dtype) and 32 rank-16 adapters on all seven
projections. The server runs as a user starts it (`lorafleet serve --device cuda`, engine
in its own process, CUDA graphs on); the engine is built from the same options
(references.py's EngineReference, on the same device). Each cell keeps 32 requests in
flight (closed loop, greedy, EOS ignored) over 0, 1, 8 or 32 distinct adapters (request
i on adapter i mod K), through the server and then the engine, best of the rounds that
fit. Reported: output tokens/s of both and their ratio, and the server's TTFT and TPOT
p50/p99. Target (issue 24): server >= 0.9x the engine in every cell.

On CUDA the model is far smaller than 8B (GPU_SHAPE): an 8B checkpoint takes minutes to
write and load twice, and the part has 90 s. A small model's steps are short, so the
server's work per token weighs more against them than it would at 8B: a hard case. The
dry run serves the serving benchmark's tiny shape on CPU with 4 output tokens a request:
the plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import pathlib
import tempfile
import time

from benchmarks.gpu_check import preflight
from benchmarks.gpu_check.report import target
from benchmarks.serving.cells import Mode, Target, run_cell
from benchmarks.serving.checkpoint import SHAPES, ModelShape, write_adapters, write_model
from benchmarks.serving.references import EngineReference
from benchmarks.serving.scenario_adapters import CONCURRENCY, TARGET_RATIO
from benchmarks.serving.worker_process import BASE_MODEL_NAME, serve_command, start_worker
from benchmarks.serving.workload import Lengths, Popularity, WorkloadSpec, make_requests
from lorafleet.runtime.startup import freeze_startup_heap

CAP_S = 90.0
RANK = 16
# Llama-8B's head dim (128) and GQA ratio (4), TinyLlama's widths (hidden 2048, MLP 5632),
# 8 layers: 0.49 B parameters, 2 GB to write in float32, 1 GB on the GPU in bf16.
GPU_SHAPE = ModelShape(hidden=2048, num_layers=8, num_heads=16, num_kv_heads=4,
                       intermediate=5632, vocab=32000)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run serves and sends; `setup_s` and `cell_s` are the estimates the
    part's clock checks before the start and before each cell."""

    shape: ModelShape
    dtype: str
    distinct: tuple[int, ...]
    prompt_len: int
    output_len: int
    num_requests: int
    num_rounds: int
    kv_cache_bytes: int
    setup_s: float
    cell_s: float


CUDA_PLAN = Plan(GPU_SHAPE, "bfloat16", (0, 1, 8, 32), prompt_len=64, output_len=128,
                 num_requests=3 * CONCURRENCY, num_rounds=2, kv_cache_bytes=2 << 30,
                 setup_s=45.0, cell_s=8.0)
DRY_PLAN = Plan(SHAPES["tiny"], "float32", (0, 1, 8, 32), prompt_len=16, output_len=4,
                num_requests=CONCURRENCY, num_rounds=1, kv_cache_bytes=64 << 20,
                setup_s=15.0, cell_s=3.0)


def run(device, clock, *, is_dry_run: bool) -> dict:
    """Writes the checkpoint and adapters, starts the server and the engine, warms both
    up, and measures every cell that fits the cap."""
    plan = DRY_PLAN if is_dry_run else CUDA_PLAN
    if not clock.can_start(plan.setup_s):
        clock.skip("checkpoint, server and engine start")
        return {"status": "skipped", "targets": unmeasured_targets(clock.skipped[0])}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        model_dir = write_model(root / "model", plan.shape)
        adapters = {f"gpu-check/a{i:02d}": path for i, path in enumerate(
            write_adapters(root / "adapters", model_dir, [RANK] * max(plan.distinct)))}
        with _server(model_dir, adapters, device.type, plan, clock) as server, \
                _engine(model_dir, adapters, device.type, plan) as engine:
            _warm_up(server, engine, list(adapters), plan)
            rows = _measure(server, engine, list(adapters), plan, clock)
    return _result(rows, plan, clock, device.type)


def unmeasured_targets(reason: str) -> list[dict]:
    """The server-vs-engine target, skipped for `reason`."""
    return [_target(None, reason)]


def _target(value: float | None, note: str) -> dict:
    return target("server vs engine output tok/s, worst cell", value, TARGET_RATIO,
                  is_upper_bound=False, note=note)


def _sizes(plan: Plan) -> dict:
    """The options server and engine share (WorkerConfig's names; `serve` flags alike)."""
    return {"max_loras": CONCURRENCY, "max_lora_rank": RANK, "max_cpu_loras": CONCURRENCY,
            "max_num_seqs": CONCURRENCY, "kv_cache_bytes": plan.kv_cache_bytes}


@contextlib.contextmanager
def _server(model_dir, adapters: dict, device: str, plan: Plan, clock):
    """`lorafleet serve` on `device` as a subprocess (importing lorafleet as this process
    does), stopped on exit. Prefix caching is off in server and engine alike: every round
    computes its prompts. Its CPU threads sleep when idle: the dry run shares its CPU."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in _sizes(plan).items()]
    options = ["--device", device, "--dtype", plan.dtype, "--no-prefix-cache",
               "--cpu-thread-wait", "sleep", *flags]
    worker = start_worker(serve_command(model_dir, list(adapters.items()), options, http=False),
                          timeout=max(1.0, clock.deadline - time.monotonic()),
                          env=preflight.child_env())
    try:
        yield Target(worker.address, worker.metrics_url, base_model=BASE_MODEL_NAME,
                     pid=worker.pid)
    finally:
        worker.stop()


@contextlib.contextmanager
def _engine(model_dir, adapters: dict, device: str, plan: Plan):
    engine = EngineReference(model_dir, adapters, device=device, dtype=plan.dtype,
                          prefix_cache_scope=None, **_sizes(plan))
    try:
        yield engine
    finally:
        engine.close()


def _requests(names: list[str], plan: Plan, num_requests: int, output_len: int, *,
              seed: int, base_share: float = 0.0) -> list:
    """Seeded requests, request i on adapter i mod len(names) (none: the base model)."""
    spec = WorkloadSpec(Popularity(tuple(names), "cycle", base_share=base_share),
                        Lengths("fixed", plan.prompt_len), Lengths("fixed", output_len),
                        plan.shape.vocab, num_requests=num_requests, seed=seed)
    return make_requests(spec)


def _warm_up(server: Target, engine: EngineReference, names: list[str], plan: Plan) -> None:
    """Unmeasured requests on every adapter and the base model, through both: kernels
    compiled, adapters in their slots before any cell is timed."""
    requests = _requests(names, plan, 2 * CONCURRENCY, 4, seed=-1, base_share=0.25)
    asyncio.run(run_cell(server, Mode(concurrency=CONCURRENCY), requests))
    engine.run(requests, CONCURRENCY)


def _measure(server: Target, engine: EngineReference, names: list[str], plan: Plan,
             clock) -> list[dict]:
    """Each cell through the server, then the engine, taking turns; one row per cell."""
    cells = {count: _requests(names[:count], plan, plan.num_requests, plan.output_len,
                              seed=count) for count in plan.distinct}
    runs: dict[int, list[tuple[dict, float]]] = {}  # count -> (server row, engine tok/s)
    for round_index, (count, requests) in itertools.product(range(plan.num_rounds),
                                                            cells.items()):
        if not clock.can_start(plan.cell_s):
            clock.skip(f"round {round_index + 1}, {count} distinct")
            continue
        freeze_startup_heap()  # no full collection of this process's heap inside a cell
        row, _ = asyncio.run(run_cell(server, Mode(concurrency=CONCURRENCY), requests,
                                      cell=f"K={count}"))
        engine_tok_s = engine.run(requests, CONCURRENCY)
        print(f"  {count} distinct: server {row['output_tok_s']:.0f} tok/s, "
              f"engine {engine_tok_s:.0f}", flush=True)
        runs.setdefault(count, []).append((row, engine_tok_s))
    gc.unfreeze()  # the parts after this one get their memory back from the collector
    return [_row(count, runs[count], plan) for count in plan.distinct if count in runs]


def _row(count: int, runs: list[tuple[dict, float]], plan: Plan) -> dict:
    """The best server round (its latencies too) and the best engine round; errors and
    the fewest tokens any round delivered, so a round that lost some is never hidden."""
    server = max((row for row, _ in runs), key=lambda row: row["output_tok_s"])
    engine_tok_s = max(rate for _, rate in runs)
    return {"distinct": count, "rounds": len(runs), "requests": server["num_requests"],
            "errors": sum(row["num_errors"] for row, _ in runs),
            "output_tokens": min(row["output_tokens"] for row, _ in runs),
            "expected_tokens": plan.num_requests * plan.output_len,
            "server_tok_s": round(server["output_tok_s"], 1),
            "engine_tok_s": round(engine_tok_s, 1),
            "server_vs_engine": round(server["output_tok_s"] / engine_tok_s, 3),
            **{key: server[key] for key in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms",
                                            "tpot_p99_ms")}}


def _result(rows: list[dict], plan: Plan, clock, device: str) -> dict:
    """Failed when a round lost a request or a token; else done (partial when the cap cut
    cells, skipped when it cut them all), the worst cell's ratio as the target's value."""
    is_lossy = any(row["errors"] or row["output_tokens"] != row["expected_tokens"]
                   for row in rows)
    worst = min(rows, key=lambda row: row["server_vs_engine"]) if rows else None
    note = (f"worst at {worst['distinct']} distinct ({len(rows)} of {len(plan.distinct)} cells)"
            if worst else "no cell was measured")
    notes = [f"{plan.shape.describe()}, {plan.dtype} on {device}, rank-{RANK} adapters on "
             f"all seven projections",
             f"{CONCURRENCY} in flight over gRPC, {plan.num_requests} requests a cell, prompt "
             f"{plan.prompt_len}, output {plan.output_len}, best of {plan.num_rounds}"]
    if is_lossy:
        notes.append("a cell lost requests or tokens (errors, output_tokens)")
    status = ("failed" if is_lossy else "skipped" if not rows
              else "partial" if clock.skipped else "done")
    return {"status": status, "rows": rows, "notes": notes,
            "targets": [_target(worst["server_vs_engine"] if worst else None, note)]}
