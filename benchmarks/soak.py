"""Soak: the memory of a worker's two processes over thousands of varied requests.

`lorafleet serve` (tiny random Llama on CPU, four adapters of ranks 8-64, its engine in a
process of its own) is called over gRPC by 50 callers at a time with prompts of 1-200
tokens, 1-24 output tokens, greedy or sampled, on the base model or an adapter, and 30%
cancelled after their first message. Every 500 requests it records the resident memory
(RSS) of the server process and of the engine process. Issue 21 #6 saw the engine process
grow from 500 to 940 MB over 5,000 such requests (oneDNN kept a kernel per matmul shape;
kernels/cpu/linear.padded_rows); the table shows whether it stays flat.

    python -m benchmarks soak              # 5,000 requests
    python -m benchmarks soak --quick      # 1,500 requests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import tempfile

import grpc

from benchmarks.results import append_rows, describe_machine
from benchmarks.serving.worker_process import serve_command, start_worker
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc

ADAPTERS = {"acme/r8": 8, "acme/r16": 16, "beta/r32": 32, "gamma/r64": 64}
EVERY = 500
CALLERS = 50


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid`, MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if stat.read().split()[3] == str(pid):
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def one_request(stub, rng: random.Random) -> None:
    """A varied request, 30% of them cancelled after the first message."""
    prompt = [rng.randint(5, 300) for _ in range(rng.randint(1, 200))]
    request = ipb.GenerateRequest(
        adapter=rng.choice([*ADAPTERS, ""]), token_ids=ipb.TokenIds(ids=prompt),
        sampling=ipb.SamplingParams(max_tokens=rng.randint(1, 24),
                                    temperature=rng.choice([0.0, 0.7])))
    call = stub.Generate(request, timeout=60)
    try:
        if rng.random() < 0.3:
            await call.read()
            call.cancel()
            return
        async for _ in call:
            pass
    except grpc.aio.AioRpcError:
        pass


async def drive(address: str, server_pid: int, num_requests: int, seed: int) -> list[dict]:
    """Sends the requests; returns one row per EVERY requests."""
    engines = children_of(server_pid)
    rng = random.Random(seed)
    rows, done = [], 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        while done < num_requests:
            await asyncio.gather(*(one_request(stub, rng) for _ in range(CALLERS)))
            done += CALLERS
            if done % EVERY == 0:
                rows.append({"requests": done, "server_mib": round(rss_mib(server_pid), 1),
                             "engine_mib": round(max((rss_mib(p) for p in engines),
                                                     default=0.0), 1)})
                print(f"{done:>6} requests: server {rows[-1]['server_mib']:7.1f} MiB, engine "
                      f"{rows[-1]['engine_mib']:7.1f} MiB", flush=True)
    return rows


def make_worker_files(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
    """The tiny checkpoint and the adapters (the dev extra's transformers and peft)."""
    from tests.support.tiny_adapters import make_adapter
    from tests.support.tiny_models import make_checkpoint

    base = make_checkpoint(root / "base", "llama-gqa")
    adapters = {name: make_adapter(base, root / name.replace("/", "__"), seed=i, r=rank,
                                   alpha=rank, target_modules="all-linear")
                for i, (name, rank) in enumerate(ADAPTERS.items())}
    return base, adapters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests in all")
    parser.add_argument("--quick", action="store_true", help="1,500 requests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    num_requests = 1500 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as scratch:
        base, adapters = make_worker_files(pathlib.Path(scratch))
        command = serve_command(base, list(adapters.items()),
                                ["--device", "cpu", "--kv-cache-bytes", str(64 << 20),
                                 "--max-loras", "4", "--max-lora-rank", "64"], http=False)
        worker = start_worker(command)
        try:
            rows = asyncio.run(drive(worker.address, worker.process.pid, num_requests,
                                     args.seed))
        finally:
            worker.stop()
    growth = rows[-1]["engine_mib"] - rows[0]["engine_mib"] if len(rows) > 1 else 0.0
    print(f"\nengine process: {rows[0]['engine_mib']:.0f} MiB after {rows[0]['requests']} "
          f"requests, {rows[-1]['engine_mib']:.0f} after {rows[-1]['requests']} "
          f"({growth:+.0f} MiB); {describe_machine()}")
    path = append_rows("soak", rows, seed=args.seed, engine_growth_mib=growth)
    print(f"rows appended to {path}")
