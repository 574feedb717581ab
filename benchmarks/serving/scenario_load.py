"""The plain run (no --preset): the workload the options describe, at each --rate (open
loop, Poisson) or each --concurrency (closed loop), against a worker this benchmark
starts or the one at --addr (a worker or a gateway)."""

from __future__ import annotations

import asyncio

import grpc

from benchmarks.serving.cells import Target, run_cell
from benchmarks.serving.report import print_table
from benchmarks.serving.transports import bearer_metadata
from benchmarks.serving.workload import Popularity, WorkloadSpec, iter_requests
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc


def run(ctx) -> list[dict]:
    """One row per rate or concurrency level."""
    args = ctx.args
    if args.addr:
        found = asyncio.run(probe(args.addr, args.api_key))
        target = Target(args.addr, args.metrics_url, args.http_url,
                        args.base_model or found.get("base_model", ""), api_key=args.api_key)
        names = args.adapter_names or found.get("adapters", [])
        vocab = args.vocab or found.get("vocab", 256)
        return _sweep(ctx, target, names, vocab, worker_args=None)
    ranks = [args.ranks[i % len(args.ranks)] for i in range(args.num_adapters)]
    adapters = ctx.named_adapters(args.tenant, ranks)
    options = ["--max-loras", str(args.max_loras), "--max-lora-rank", str(max(args.ranks)),
               "--max-cpu-loras", str(args.max_cpu_loras or max(args.num_adapters, 1))]
    with ctx.worker(adapters, options) as worker:
        ctx.warm_up(ctx.target(worker), list(adapters)[:args.max_loras])
        return _sweep(ctx, ctx.target(worker), list(adapters), ctx.vocab,
                      worker_args=worker.args)


def _sweep(ctx, target: Target, names: list[str], vocab: int, worker_args) -> list[dict]:
    args = ctx.args
    levels = [("rate", r) for r in args.rate] or [("concurrency", c) for c in args.concurrency]
    rows = []
    for kind, level in levels:
        spec = WorkloadSpec(Popularity(tuple(names), "zipf", args.zipf_alpha, args.base_share),
                            args.prompt_len, args.output_len, vocab,
                            num_requests=args.num_requests,
                            rate=level if kind == "rate" else None, seed=args.seed)
        mode = ctx.mode(concurrency=level if kind == "concurrency" else None,
                        duration=args.duration)
        row, _ = asyncio.run(run_cell(target, mode, iter_requests(spec),
                                      cell=f"{kind} {level:g}"))
        rows.append({**row, kind: level, "num_adapters": len(names)})
        print(f"  {kind} {level:g}: {row['output_tok_s']:.0f} tok/s, TTFT p50 "
              f"{row['ttft_p50_ms']} ms", flush=True)
    print_table(f"load: {len(names)} adapters, zipf alpha {args.zipf_alpha}, base share "
                f"{args.base_share}, via {args.transport}", rows,
                (("client ms/tok", "client_cpu_ms_per_token", "{:.3f}"),))
    ctx.record("load", rows, worker_args=worker_args, target=target.address,
               zipf_alpha=args.zipf_alpha, base_share=args.base_share)
    return rows


async def probe(address: str, api_key: str | None = None) -> dict:
    """What a worker says about itself: its default adapter names, vocabulary and base
    model name ({} through a gateway, which has no WorkerService: use --adapter-names and
    --vocab there)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = wpb_grpc.WorkerServiceStub(channel)
        metadata = bearer_metadata(api_key)
        try:
            listed = await stub.ListAdapters(wpb.ListAdaptersRequest(), timeout=10,
                                             metadata=metadata)
            status = await stub.GetWorkerStatus(wpb.GetWorkerStatusRequest(), timeout=10,
                                                metadata=metadata)
        except grpc.aio.AioRpcError:
            return {}
    return {"adapters": sorted({a.adapter for a in listed.adapters if a.is_default}),
            "vocab": status.base_model.vocab_size, "base_model": status.base_model.name}
