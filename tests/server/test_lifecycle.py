"""Process lifecycle: graceful SIGTERM of `lorafleet serve`, and tracing spans over OTLP."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import subprocess
import sys
import threading

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts
from tests.support.worker_thread import WorkerThread


def _start_serve(base, adapter_path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "lorafleet.clients.cli", "serve", "--insecure-no-auth",
         "--model", str(base),
         "--adapter", f"acme/qv8={adapter_path}", "--port", "0", "--metrics-port", "-1",
         "--device", "cpu", "--kv-cache-bytes", str(16 << 20), "--grace-seconds", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        match = re.search(r"serving on (\S+)", line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining
            return process, match.group(1)
    raise AssertionError(f"serve exited early with {process.wait()}")


@pytest.mark.slow
def test_sigterm_lets_in_flight_streams_finish_and_refuses_new_ones(lora_suite):
    base, adapters = lora_suite
    process, address = _start_serve(base, adapters["acme/qv8"])
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            request = pb.GenerateRequest(adapter="acme/qv8", token_ids=pb.TokenIds(ids=prompts(1)[0]),
                                         sampling=pb.SamplingParams(max_tokens=300, temperature=0,
                                                                    ignore_eos=True))
            stream = stub.Generate(request, timeout=60)
            assert next(stream).HasField("delta")
            process.send_signal(signal.SIGTERM)
            rest = list(stream)
            assert rest[-1].summary.finish_reason == pb.FINISH_REASON_LENGTH
            assert rest[-1].summary.usage.completion_tokens == 300
        assert process.wait(30) == 0
    finally:
        process.kill()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self):
        self.spans = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_each_request_is_a_span_at_the_otlp_collector(lora_suite):
    base, adapters = lora_suite
    collector = _Collector()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    worker = WorkerThread(worker_config(base), adapters=[("acme/qv8", str(adapters["acme/qv8"]))],
                          otlp_endpoint=f"127.0.0.1:{port}")
    try:
        worker.generate("acme/qv8", prompts(1)[0], max_tokens=3)
    finally:
        worker.stop()  # flushes the exporter
        server.stop(0)
    spans = [s for s in collector.spans if s.name == "lorafleet.Generate"]
    assert len(spans) == 1
    attributes = {a.key: a.value for a in spans[0].attributes}
    assert attributes["lorafleet.adapter"].string_value == "acme/qv8@1"
    assert attributes["lorafleet.completion_tokens"].int_value == 3
    assert attributes["lorafleet.finish_reason"].string_value == "length"


def test_the_thread_that_built_an_engine_on_a_thread_is_gone_once_serving(lora_suite,
                                                                          monkeypatch):
    # A thread that ran the build's torch ops keeps their OpenMP team while it lives; with
    # the engine's own team that is more OpenMP threads than CPUs, and every parallel op
    # of a step then waits for a worker to wake (first token +17 ms on the small model).
    from lorafleet.dataplane.server import app

    builders: list[threading.Thread] = []
    real_build = app.build_serving_worker

    def recording_build(*args, **kwargs):
        builders.append(threading.current_thread())
        return real_build(*args, **kwargs)

    monkeypatch.setattr(app, "build_serving_worker", recording_build)
    worker = WorkerThread(worker_config(lora_suite[0]))
    try:
        assert len(builders) == 1
        builders[0].join(10)
        assert not builders[0].is_alive()
        assert worker.generate("", prompts(1)[0], max_tokens=2, timeout=30)
    finally:
        worker.stop()
