"""Noisy neighbour: a quiet tenant's time to first token while another tenant floods the
worker, with the scheduler's FIFO order and with fair share (virtual token counters).

A real worker (start_worker, tiny random Llama on CPU, one adapter per tenant) is called
over gRPC. The quiet tenant sends one request every --quiet-interval seconds; the noisy
tenant, when present, sends a burst of --burst requests at once just before. For each
queue policy, the quiet tenant's p50/p99 TTFT alone and beside the noisy neighbour.

    python -m benchmarks noisy_neighbour            # 200-request burst, 30 quiet requests
    python -m benchmarks noisy_neighbour --quick    # 200-request burst, 10 quiet requests
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import tempfile
import time

import grpc

from benchmarks.results import append_rows, describe_machine
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc

NOISY, QUIET = "noisy/bulk", "quiet/chat"
PROMPT = [5 + i % 300 for i in range(16)]


async def _ttft(stub, adapter: str, max_tokens: int) -> float:
    """Seconds from sending a request to its first token (the stream is read to the end)."""
    request = ipb.GenerateRequest(adapter=adapter, token_ids=ipb.TokenIds(ids=PROMPT),
                                  sampling=ipb.SamplingParams(max_tokens=max_tokens,
                                                              temperature=0.0, ignore_eos=True))
    started, first = time.perf_counter(), None
    async for message in stub.Generate(request, timeout=600):
        if first is None and message.HasField("delta"):
            first = time.perf_counter() - started
    return first


async def _scenario(address: str, args, *, is_noisy: bool) -> list[float]:
    """The quiet tenant's TTFTs, with or without the noisy tenant's burst."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        burst = [asyncio.create_task(_ttft(stub, NOISY, args.noisy_tokens))
                 for _ in range(args.burst if is_noisy else 0)]
        await asyncio.sleep(0.2)  # the burst is queued first
        quiet = []
        for _ in range(args.num_quiet):
            quiet.append(asyncio.create_task(_ttft(stub, QUIET, args.quiet_tokens)))
            await asyncio.sleep(args.quiet_interval)
        ttfts = await asyncio.gather(*quiet)
        await asyncio.gather(*burst)
    return list(ttfts)


def _make_models(root: pathlib.Path) -> tuple[pathlib.Path, list[tuple[str, str]]]:
    from tests.support.tiny_adapters import make_adapter
    from tests.support.tiny_models import make_checkpoint

    base = make_checkpoint(root / "base", "llama-gqa")
    adapters = []
    for seed, name in enumerate((NOISY, QUIET)):
        path = make_adapter(base, root / name.replace("/", "__"), r=8, alpha=16,
                            target_modules=["q_proj", "v_proj"], seed=seed)
        adapters.append((name, str(path)))
    return base, adapters


def _run_policy(base, adapters, policy: str, args) -> list[dict]:
    from lorafleet.dataplane.server.build import WorkerConfig
    from tests.support.worker_thread import WorkerThread

    config = WorkerConfig(base, device="cpu", dtype="float32", kv_cache_bytes=64 << 20,
                          block_size=16, max_loras=2, max_num_seqs=args.max_num_seqs,
                          max_waiting=args.burst + args.num_quiet + 16, queue_policy=policy)
    worker = WorkerThread(config, adapters=adapters)
    rows = []
    try:
        for is_noisy in (False, True):
            ttfts = asyncio.run(_scenario(worker.address, args, is_noisy=is_noisy))
            rows.append(_row(policy, is_noisy, ttfts, args))
    finally:
        worker.stop()
    return rows


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(policy: str, is_noisy: bool, ttfts: list[float], args) -> dict:
    return {"queue_policy": policy, "neighbour": f"burst of {args.burst}" if is_noisy else "none",
            "num_quiet": len(ttfts), "quiet_ttft_p50_s": statistics.median(ttfts),
            "quiet_ttft_p99_s": _percentile(ttfts, 0.99), "max_num_seqs": args.max_num_seqs,
            "noisy_tokens": args.noisy_tokens, "quiet_tokens": args.quiet_tokens}


def _print_table(rows: list[dict]) -> None:
    print(f"{'queue policy':<13} {'neighbour':<16} {'quiet p50 TTFT':>15} {'quiet p99 TTFT':>15}")
    for row in rows:
        print(f"{row['queue_policy']:<13} {row['neighbour']:<16} "
              f"{row['quiet_ttft_p50_s'] * 1000:>12.0f} ms {row['quiet_ttft_p99_s'] * 1000:>12.0f} ms")
    print(f"({describe_machine()})")


def main(argv: list[str] | None = None) -> int:
    """Prints the table and appends JSON lines to benchmarks/results/noisy_neighbour.jsonl."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks noisy_neighbour",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=200, help="noisy requests at once (%(default)s)")
    parser.add_argument("--num-quiet", type=int, default=30, help="quiet requests (%(default)s)")
    parser.add_argument("--quiet-interval", type=float, default=0.25,
                        help="seconds between quiet requests (%(default)s)")
    parser.add_argument("--noisy-tokens", type=int, default=32, help="max_tokens of each noisy request")
    parser.add_argument("--quiet-tokens", type=int, default=8, help="max_tokens of each quiet request")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="the worker's sequences per step")
    parser.add_argument("--policies", nargs="+", default=["fifo", "fair"], choices=["fifo", "fair"])
    parser.add_argument("--quick", action="store_true", help="10 quiet requests (make bench)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_quiet = 10
    with tempfile.TemporaryDirectory(prefix="noisy-neighbour-") as root:
        base, adapters = _make_models(pathlib.Path(root))
        rows = [row for policy in args.policies for row in _run_policy(base, adapters, policy, args)]
    _print_table(rows)
    path = append_rows("noisy_neighbour", rows)
    print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
