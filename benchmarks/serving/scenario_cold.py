"""`--preset cold`: time to first token of an adapter found only at its source (disk),
in host memory, or in a device slot, on an otherwise idle worker.

Per trial, two fresh adapters S and H are loaded to host memory (LoadAdapter, tier HOST)
on a worker that keeps one adapter in host memory, so S falls back to its source. Then,
one request at a time: H (a host hit: one copy into a slot), S (a source load: read,
validate, digest, copy), H again (a device hit). ListAdapters is read right before each
request, so each is counted under the tier it really met.
"""

from __future__ import annotations

import asyncio
import collections

import grpc

from benchmarks.serving.cells import run_cell
from benchmarks.serving.report import latency_fields, print_table
from benchmarks.serving.workload import Lengths, RequestSpec
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc

TIERS = ("device", "host", "source")


def run(ctx) -> list[dict]:
    """Measures `trials` of each tier; returns one row per tier."""
    num_trials = 3 if ctx.quick else 10
    adapters = ctx.named_adapters("cold", [16] * (2 * num_trials))
    names = list(adapters)
    samples: dict[str, list[float]] = collections.defaultdict(list)
    # No --adapter: the worker may read only what --adapter-root allows (LoadAdapter below).
    roots = [arg for parent in sorted({str(p.parent) for p in adapters.values()})
             for arg in ("--adapter-root", parent)]
    with ctx.worker({}, ["--max-loras", "4", "--max-lora-rank", "16",
                         "--max-cpu-loras", "1", *roots]) as worker:
        target = ctx.target(worker)
        ctx.warm_up(target, [])
        for trial in range(num_trials):
            source, host = names[2 * trial], names[2 * trial + 1]
            asyncio.run(_load_to_host(worker.address, [(source, adapters[source]),
                                                       (host, adapters[host])]))
            for adapter in (host, source, host):
                # Tiers are read once as each cell starts, right before its one request.
                row, run_ = asyncio.run(run_cell(target, ctx.mode(concurrency=1, tier_poll=1.0),
                                                 [_request(ctx, adapter, trial)]))
                result = run_.results[0]
                if result.ttft is not None:
                    samples[result.tier].append(result.ttft)
    rows = [_tier_row(tier, samples[tier], samples["device"]) for tier in TIERS]
    print_table("cold: TTFT by the tier the adapter was in (idle worker, one request at a "
                "time)", rows, (("vs device", "ttft_vs_device", "{:.1f}x"),))
    ctx.record("cold", rows, worker_args=worker.args,
               adapter_bytes=sum(p.stat().st_size for p in adapters[names[0]].iterdir()))
    return rows


async def _load_to_host(address: str, adapters: list) -> None:
    """LoadAdapter(tier HOST) for each, in order; the worker keeps only the last in host."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = wpb_grpc.WorkerServiceStub(channel)
        for name, path in adapters:
            await stub.LoadAdapter(wpb.LoadAdapterRequest(
                adapter=name, source_uri=str(path), tier=wpb.TIER_HOST), timeout=60)


def _request(ctx, adapter: str, trial: int) -> RequestSpec:
    spec = ctx.requests([adapter], 1, prompt=Lengths("fixed", 64),
                        output=Lengths("fixed", 8), seed=trial)[0]
    return spec


def _tier_row(tier: str, seconds: list[float], device: list[float]) -> dict:
    row = {"cell": tier, "num_requests": len(seconds), "num_errors": 0,
           **latency_fields("ttft", seconds),
           "ttft_samples_ms": [round(s * 1000, 2) for s in seconds]}
    base = row["ttft_p50_ms"], latency_fields("ttft", device)["ttft_p50_ms"]
    row["ttft_vs_device"] = base[0] / base[1] if None not in base and base[1] else None
    return row
