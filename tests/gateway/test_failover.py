"""Kill -9 a real `lorafleet worker` process under streaming traffic through the gateway.

Every request completes or ends with a clear status, none hangs; requests that had no token
yet when the worker died (waiting in its queue, or sent to it before the control plane
noticed) are retried on the other worker and complete.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import grpc
import pytest

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.controlplane.conftest import eventually
from tests.gateway.conftest import BASE_MODEL, add_adapter, holders, metric, table_shows

pytestmark = pytest.mark.slow

NUM_TOKENS = 200


@pytest.fixture
async def worker_processes(plane, lora_suite):
    """Starts `lorafleet worker` subprocesses registered with `plane`; kills them after."""
    started = []

    async def start(worker_id: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lorafleet.clients.cli", "worker", "--model",
            str(lora_suite[0]), "--model-name", BASE_MODEL, "--controlplane",
            f"127.0.0.1:{plane.port}", "--port", "0", "--metrics-port", "-1", "--device", "cpu",
            "--kv-cache-bytes", str(8 << 20), "--worker-id", worker_id, "--max-num-seqs", "2",
            "--heartbeat-seconds", "0.3", "--insecure-no-auth",
            "--adapter-root", str(lora_suite[0].parent),  # the suite's adapters lie beside the base
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


class Stream:
    """One streamed request: when its first token came, and how it ended."""

    def __init__(self) -> None:
        self.first_token_at: float | None = None
        self.num_tokens = 0
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.summary = None

    async def run(self, stub, request_id: str) -> Stream:
        request = pb.GenerateRequest(
            adapter="acme/qv8", request_id=request_id, token_ids=pb.TokenIds(ids=[5, 6, 7]),
            sampling=pb.SamplingParams(max_tokens=NUM_TOKENS, temperature=0, ignore_eos=True))
        try:
            async for message in stub.Generate(request, timeout=90):
                if message.HasField("delta"):
                    self.first_token_at = self.first_token_at or time.monotonic()
                    self.num_tokens += len(message.delta.token_ids)
                else:
                    self.summary = message.summary
        except grpc.aio.AioRpcError as error:
            self.code, self.details = error.code(), error.details()
        return self


async def test_killed_worker_requests_end_clearly_and_untouched_ones_are_retried(
        plane, stubs, worker_processes, lora_suite, gateways):
    processes = {w: await worker_processes(w) for w in ("fo-0", "fo-1")}

    async def registered():
        reply = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
        return len(reply.workers) == 2

    await eventually(registered, timeout=60)
    await add_adapter(stubs, "acme/qv8", [lora_suite[1]["acme/qv8"]], {1: 1}, min_replicas=2)
    gateway = await gateways(f"127.0.0.1:{plane.port}")
    await table_shows(gateway, lambda t: holders(t, "acme/qv8") == {1: {"fo-0", "fo-1"}},
                      timeout=60)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        streams = [Stream() for _ in range(16)]
        running = [asyncio.create_task(s.run(stub, f"r{i}")) for i, s in enumerate(streams)]
        while not any(s.first_token_at for s in streams):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        processes["fo-0"].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        # More traffic before the control plane notices: some goes to the dead address.
        late = [Stream() for _ in range(6)]
        running += [asyncio.create_task(s.run(stub, f"late{i}")) for i, s in enumerate(late)]
        await asyncio.wait_for(asyncio.gather(*running), 90)  # none hangs
    ended = streams + late
    untouched = [s for s in ended if not s.first_token_at or s.first_token_at > killed_at]
    failed = [s for s in ended if s.code != grpc.StatusCode.OK]
    assert untouched and all(s.code == grpc.StatusCode.OK for s in untouched)
    for stream in ended:
        if stream.code == grpc.StatusCode.OK:
            assert stream.num_tokens == NUM_TOKENS and stream.summary.finish_reason == \
                pb.FINISH_REASON_LENGTH
        else:  # cut off mid-stream: the status says so, nothing is silently truncated
            assert stream.code == grpc.StatusCode.UNAVAILABLE and stream.details
            assert stream.first_token_at < killed_at and stream.summary is None
    assert all(s.summary.worker_id == "fo-1" for s in untouched)
    # Least outstanding split the first 16 evenly: fo-0 ran 2 (max-num-seqs) and queued 6,
    # which had no token and were retried; late requests sent to its address add more.
    assert len(failed) <= 2
    assert metric(gateway, "lorafleet_gateway_retries_total") >= 6
    assert metric(gateway, "lorafleet_gateway_requests_total", code="OK") == len(ended) - len(failed)
