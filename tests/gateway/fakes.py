"""A fake worker that also serves InferenceService, answering at once: fast enough to push
thousands of requests through a live gateway.

It serves only what it holds, like a real worker: "tenant/name@N" must be resident
(NOT_FOUND otherwise). Each delta's text and the summary name the version served, so a
test can check a stream stayed on one version. Request ids starting with "slow" stream
their tokens `slow_delay` seconds apart.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lorafleet.runtime import rpcserver
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from lorafleet.worker.v1 import worker_service_pb2_grpc as worker_grpc
from tests.support.fake_worker import FakeWorker, FakeWorkerService

QUOTA_FAILURE = status_pb2.Status(
    code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="tenant acme: 8 requests at once",
    details=[any_pb2.Any()])
QUOTA_FAILURE.details[0].Pack(error_details_pb2.QuotaFailure(violations=[
    error_details_pb2.QuotaFailure.Violation(subject="tenant:acme",
                                             description="max concurrent requests 8")]))


class FakeInference(pb_grpc.InferenceServiceServicer):
    """Generate over the fake worker's residency: one token per max_tokens, then a summary."""

    def __init__(self, worker: ServingFakeWorker):
        self.worker = worker

    async def Generate(self, request, context):
        """Streams max_tokens (default 2) one-token deltas, then the summary."""
        worker = self.worker
        worker.received.append((request.adapter, dict(context.invocation_metadata())))
        if request.request_id.startswith("quota"):
            await context.abort_with_status(rpc_status.to_status(QUOTA_FAILURE))
        label, digest = await self._resolve(request.adapter, context)
        worker.num_running += 1
        try:
            for index in range(request.sampling.max_tokens or 2):
                if request.request_id.startswith("slow"):
                    await asyncio.sleep(worker.slow_delay)
                yield pb.GenerateResponse(delta=pb.TokenDelta(token_ids=[index], text=label))
            yield pb.GenerateResponse(summary=pb.GenerateSummary(
                finish_reason=pb.FINISH_REASON_LENGTH, adapter_version=label,
                adapter_digest=digest, worker_id=worker.worker_id, request_id=request.request_id))
        finally:
            worker.num_running -= 1

    async def _resolve(self, adapter: str, context) -> tuple[str, str]:
        if not adapter:
            return "", ""
        name, _, number = adapter.partition("@")
        held = self.worker.residency.get((name, int(number or 0)))
        if held is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{adapter} is not on {self.worker.worker_id}")
        held.last_used.GetCurrentTime()  # reported in heartbeats, as a real worker does
        return f"{name}@{held.version}", held.digest


class CountingWorkerService(FakeWorkerService):
    """The fake WorkerService, also counting LoadAdapter attempts (refused ones too)."""

    async def LoadAdapter(self, request, context):
        """Counts the attempt, then answers as the fake does."""
        self.worker.load_attempts.append(request.adapter)
        return await super().LoadAdapter(request, context)


class ServingFakeWorker(FakeWorker):
    """tests/support/fake_worker.FakeWorker plus an instant InferenceService."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, dict]] = []  # (adapter sent, metadata) per Generate
        self.load_attempts: list[str] = []  # adapter of every LoadAdapter call
        self.num_running = 0
        self.slow_delay = 0.05

    async def start(self) -> str:
        """Serves WorkerService and InferenceService on a free port; starts heartbeating."""
        bindings = [
            rpcserver.ServiceBinding(worker_grpc.add_WorkerServiceServicer_to_server,
                                     CountingWorkerService(self),
                                     rpcserver.full_name(worker_pb, "WorkerService")),
            rpcserver.ServiceBinding(pb_grpc.add_InferenceServiceServicer_to_server,
                                     FakeInference(self),
                                     rpcserver.full_name(pb, "InferenceService")),
        ]
        self._server = await rpcserver.start_server(bindings, "127.0.0.1:0")
        self.address = f"127.0.0.1:{self._server.port}"
        self._heartbeats = asyncio.create_task(self._heartbeat_forever())
        return self.address

    def num_loads(self) -> int:
        """LoadAdapter calls answered so far."""
        return sum(1 for call in self.calls if call[1] == "load")
