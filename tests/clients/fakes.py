"""Scripted InferenceService and WorkerService servers for client tests.

A blocking grpc server on loopback, so sync and asyncio clients can both call it from
the test thread. Each fake counts its calls and keeps the metadata it received.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc

# What every successful fake stream sends: two deltas, then the summary.
DELTAS = [([5], "hello"), ([6], " world")]


class ScriptedInference(ipb_grpc.InferenceServiceServicer):
    """Generate that refuses its first `num_failures` calls with `failure_code`, then
    streams DELTAS and a summary; with `is_broken_after_first_delta`, it sends the first
    delta and then ends the stream with UNAVAILABLE instead."""

    def __init__(self, *, num_failures: int = 0,
                 failure_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                 is_broken_after_first_delta: bool = False):
        self.num_failures = num_failures
        self.failure_code = failure_code
        self.is_broken_after_first_delta = is_broken_after_first_delta
        self.num_calls = 0
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def Generate(self, request, context):
        with self._lock:
            self.num_calls += 1
            attempt = self.num_calls
            self.metadata.append(dict(context.invocation_metadata()))
        if attempt <= self.num_failures:
            context.abort(self.failure_code, f"attempt {attempt} refused")
        for index, (token_ids, text) in enumerate(DELTAS):
            yield ipb.GenerateResponse(delta=ipb.TokenDelta(token_ids=token_ids, text=text))
            if index == 0 and self.is_broken_after_first_delta:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the worker went away")
        summary = ipb.GenerateSummary(finish_reason=ipb.FINISH_REASON_LENGTH,
                                      usage=ipb.Usage(prompt_tokens=3, completion_tokens=2),
                                      adapter_version="acme/support@2", worker_id="fake",
                                      request_id=request.request_id or "assigned")
        yield ipb.GenerateResponse(summary=summary)


class RecordingWorkerService(wpb_grpc.WorkerServiceServicer):
    """GetWorkerStatus that keeps the metadata of each call."""

    def __init__(self):
        self.metadata: list[dict[str, str]] = []

    def GetWorkerStatus(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return wpb.GetWorkerStatusResponse(worker_id="fake")


@contextlib.contextmanager
def serving(inference: ScriptedInference | None = None,
            worker: RecordingWorkerService | None = None,
            tls: tuple[bytes, bytes] | None = None) -> Iterator[int]:
    """Serves the fakes on 127.0.0.1 (TLS with (key, certificate) PEM); yields the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ipb_grpc.add_InferenceServiceServicer_to_server(inference or ScriptedInference(), server)
    wpb_grpc.add_WorkerServiceServicer_to_server(worker or RecordingWorkerService(), server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)
