"""Noisy neighbour: a quiet tenant's time to first token while another tenant floods the
worker, with the scheduler's FIFO order and with fair share (virtual token counters).

A real worker (tiny random Llama on CPU, one adapter per tenant) is called over gRPC. The
quiet tenant sends one request every --quiet-interval seconds. The noisy tenant, when
present, either sends a burst of --burst requests at once just before (`burst`), or keeps
--flood streams in flight, each sending its next request when the last one ends
(`flood`). For each queue policy, the quiet tenant's p50/p99 TTFT alone and beside the
noisy neighbour; for the flood also noisy's requests per second with and without the quiet
tenant, and the target: quiet p99 TTFT at most 3x the time one running noisy request
takes to finish (first token to last), with noisy's throughput within 5%.

    python -m benchmarks noisy_neighbour            # both scenarios
    python -m benchmarks noisy_neighbour --quick    # fewer quiet requests, shorter flood
    python -m benchmarks noisy_neighbour --scenarios flood --max-num-seqs 16
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import random
import statistics
import tempfile
import time

import grpc

from benchmarks.results import append_rows, describe_machine
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc

NOISY, QUIET = "noisy/bulk", "quiet/chat"
PROMPT = [5 + i % 300 for i in range(16)]


FLOOD_WARMUP_S = 2.0
FLOOD_ROUNDS = 3
TARGET_TTFT_RATIO = 3.0  # quiet p99 TTFT / how long one running noisy request takes
TARGET_THROUGHPUT_LOSS = 0.05


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


async def _flood(address: str, args) -> dict:
    """Noisy keeps --flood streams busy; noisy's rate alone and beside the quiet tenant's
    requests, in alternating windows of --flood-seconds in all for each."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        finished: list[tuple[float, float]] = []  # (first token, end) of noisy requests
        is_flooding = True

        async def stream(seed: int) -> None:
            lengths = random.Random(seed)
            spread = round(args.flood_tokens * args.flood_spread)
            while is_flooding:
                started = time.perf_counter()
                max_tokens = args.flood_tokens + lengths.randint(-spread, spread)
                first = await _ttft(stub, NOISY, max_tokens)
                finished.append((started + first, time.perf_counter()))

        streams = [asyncio.create_task(stream(seed)) for seed in range(args.flood)]
        await asyncio.sleep(FLOOD_WARMUP_S)
        quiet, alone, beside = [], [0, 0.0], [0, 0.0]  # (noisy requests, seconds)
        window = args.flood_seconds / FLOOD_ROUNDS
        for _ in range(FLOOD_ROUNDS):  # alternating windows: drift hits both alike
            began = time.perf_counter()
            await asyncio.sleep(window)
            _count_since(finished, began, alone)
            began = time.perf_counter()
            while time.perf_counter() - began < window:
                quiet.append(await _ttft(stub, QUIET, args.quiet_tokens))
                await asyncio.sleep(max(0.0, args.quiet_interval - quiet[-1]))
            _count_since(finished, began, beside)
        is_flooding = False
        await asyncio.gather(*streams)
    running = [end - first for first, end in finished]
    return {"ttfts": quiet, "noisy_requests_per_s_alone": alone[0] / alone[1],
            "noisy_requests_per_s_beside_quiet": beside[0] / beside[1],
            "noisy_running_s": statistics.median(running)}


def _count_since(finished: list[tuple[float, float]], began: float, total: list) -> None:
    """Adds the noisy requests finished since `began`, and the seconds, to `total`."""
    now = time.perf_counter()
    total[0] += sum(began <= end <= now for _, end in finished)
    total[1] += now - began


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
    from lorafleet.dataplane.config.worker_config import WorkerConfig
    from tests.support.worker_thread import WorkerThread

    config = WorkerConfig(base, device="cpu", dtype="float32", kv_cache_bytes=64 << 20,
                          block_size=16, max_loras=2, max_num_seqs=args.max_num_seqs,
                          max_waiting=max(args.burst, args.flood) + args.num_quiet + 16,
                          queue_policy=policy)
    worker = WorkerThread(config, adapters=adapters)
    rows = []
    try:
        ttfts = asyncio.run(_scenario(worker.address, args, is_noisy=False))
        rows.append(_row(policy, "none", ttfts, args))
        if "burst" in args.scenarios:
            ttfts = asyncio.run(_scenario(worker.address, args, is_noisy=True))
            rows.append(_row(policy, f"burst of {args.burst}", ttfts, args))
        if "flood" in args.scenarios:
            flood = asyncio.run(_flood(worker.address, args))
            rows.append(_flood_row(policy, flood, args))
    finally:
        worker.stop()
    return rows


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(policy: str, neighbour: str, ttfts: list[float], args) -> dict:
    return {"queue_policy": policy, "neighbour": neighbour,
            "num_quiet": len(ttfts), "quiet_ttft_p50_s": statistics.median(ttfts),
            "quiet_ttft_p99_s": _percentile(ttfts, 0.99), "max_num_seqs": args.max_num_seqs,
            "noisy_tokens": args.noisy_tokens, "quiet_tokens": args.quiet_tokens}


def _flood_row(policy: str, flood: dict, args) -> dict:
    row = _row(policy, f"flood of {args.flood}", flood.pop("ttfts"), args)
    row.update(flood)
    row["flood_tokens"], row["flood_spread"] = args.flood_tokens, args.flood_spread
    row["quiet_p99_over_noisy_request"] = row["quiet_ttft_p99_s"] / row["noisy_running_s"]
    row["noisy_throughput_change"] = (row["noisy_requests_per_s_beside_quiet"]
                                      / row["noisy_requests_per_s_alone"] - 1.0)
    row["meets_target"] = (row["quiet_p99_over_noisy_request"] <= TARGET_TTFT_RATIO
                           and abs(row["noisy_throughput_change"]) <= TARGET_THROUGHPUT_LOSS)
    return row


def _print_table(rows: list[dict]) -> None:
    print(f"{'queue policy':<13} {'neighbour':<16} {'quiet p50 TTFT':>15} {'quiet p99 TTFT':>15}"
          f" {'p99 / noisy req':>16} {'noisy req/s':>16} {'target':>7}")
    for row in rows:
        line = (f"{row['queue_policy']:<13} {row['neighbour']:<16} "
                f"{row['quiet_ttft_p50_s'] * 1000:>12.0f} ms "
                f"{row['quiet_ttft_p99_s'] * 1000:>12.0f} ms")
        if "meets_target" in row:
            line += (f" {row['quiet_p99_over_noisy_request']:>15.2f}x"
                     f" {row['noisy_requests_per_s_alone']:>6.1f} -> "
                     f"{row['noisy_requests_per_s_beside_quiet']:<6.1f}"
                     f" {'met' if row['meets_target'] else 'MISSED':>7}")
        print(line)
    print(f"(target for the flood: quiet p99 TTFT <= {TARGET_TTFT_RATIO:.0f}x one noisy request, "
          f"noisy req/s within {TARGET_THROUGHPUT_LOSS:.0%}; {describe_machine()})")


def main(argv: list[str] | None = None) -> int:
    """Prints the table and appends JSON lines to benchmarks/results/noisy_neighbour.jsonl."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks noisy_neighbour",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["burst", "flood"],
                        choices=["burst", "flood"], help="noisy neighbours to run beside the "
                        "quiet tenant (%(default)s); the quiet tenant alone always runs")
    parser.add_argument("--burst", type=int, default=200, help="noisy requests at once (%(default)s)")
    parser.add_argument("--flood", type=int, default=150,
                        help="noisy streams kept in flight in the flood (%(default)s)")
    parser.add_argument("--flood-tokens", type=int, default=100,
                        help="max_tokens of each noisy request in the flood (%(default)s)")
    parser.add_argument("--flood-spread", type=float, default=0.0,
                        help="noisy max_tokens vary uniformly by this fraction around "
                        "--flood-tokens (%(default)s: all equal, so they start and end in step)")
    parser.add_argument("--flood-seconds", type=float, default=10.0,
                        help="seconds noisy's rate is measured alone, and as long beside the "
                        "quiet tenant, in alternating windows (%(default)s; --quick: 5)")
    parser.add_argument("--num-quiet", type=int, default=30, help="quiet requests (%(default)s)")
    parser.add_argument("--quiet-interval", type=float, default=0.25,
                        help="seconds between quiet requests (%(default)s)")
    parser.add_argument("--noisy-tokens", type=int, default=32, help="max_tokens of each noisy request")
    parser.add_argument("--quiet-tokens", type=int, default=8, help="max_tokens of each quiet request")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="the worker's sequences per step")
    parser.add_argument("--policies", nargs="+", default=["fifo", "fair"], choices=["fifo", "fair"])
    parser.add_argument("--quick", action="store_true",
                        help="10 quiet requests, 5 s flood windows (make bench)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_quiet, args.flood_seconds = 10, 5.0
    with tempfile.TemporaryDirectory(prefix="noisy-neighbour-") as root:
        base, adapters = _make_models(pathlib.Path(root))
        rows = [row for policy in args.policies for row in _run_policy(base, adapters, policy, args)]
    _print_table(rows)
    path = append_rows("noisy_neighbour", rows)
    print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
