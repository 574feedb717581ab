"""One trace per request across gateway -> worker, at a real OTLP/gRPC collector: the
gateway continues the caller's W3C traceparent (or starts a trace), the worker's
lorafleet.Generate span is its child, and the request's queue, prefill and decode phases
are the worker span's children."""

from __future__ import annotations

import concurrent.futures
import secrets

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.dataplane.server.tracing import context_from_metadata, trace_metadata, tracer_of
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from tests.controlplane.conftest import eventually, plane  # noqa: F401 (plane: a fixture)
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self):
        self.spans = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector():
    """An OTLP collector on a free loopback port: (collector, "host:port")."""
    found = _Collector()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield found, f"127.0.0.1:{port}"
    server.stop(0)


async def _generate(address: str, metadata=()) -> ipb.GenerateSummary:
    request = ipb.GenerateRequest(token_ids=ipb.TokenIds(ids=prompts(1)[0]),
                                  sampling=ipb.SamplingParams(max_tokens=4, temperature=0))
    async with grpc.aio.insecure_channel(address) as channel:
        messages = [m async for m in ipb_grpc.InferenceServiceStub(channel).Generate(
            request, timeout=30, metadata=metadata)]
    return messages[-1].summary


async def test_gateway_and_worker_spans_share_one_trace(plane, base_checkpoint, collector):  # noqa: F811
    spans, endpoint = collector
    worker = await start_worker(
        worker_config(base_checkpoint, worker_id="traced", model_name="tiny-llama"),
        controlplanes=(f"127.0.0.1:{plane.port}",), heartbeat_seconds=0.3,
        otlp_endpoint=endpoint)
    gateway = await start_gateway(GatewayConfig(
        controlplanes=(f"127.0.0.1:{plane.port}",), port=0, otlp_endpoint=endpoint,
        backoff_first_seconds=0.05, backoff_cap_seconds=0.3))
    try:
        await eventually(lambda: gateway.follower.table is not None
                         and "traced" in gateway.follower.table.workers)
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        summary = await _generate(gateway.address,
                                  [("traceparent", f"00-{trace_id}-{caller_span}-01")])
        assert summary.worker_id == "traced"
        await _generate(gateway.address)  # no caller context: the gateway starts a trace
    finally:
        await gateway.stop(0.5)  # both flush their spans to the collector on stop
        await worker.stop(0.5)
    by_trace: dict[str, list] = {}
    for span in spans.spans:
        by_trace.setdefault(span.trace_id.hex(), []).append(span)
    assert len(by_trace) == 2
    _check_one_request(by_trace.pop(trace_id), parent=caller_span)
    (started,) = by_trace.values()
    _check_one_request(started, parent="")


def _check_one_request(spans: list, parent: str) -> None:
    by_name = {span.name: span for span in spans}
    assert sorted(by_name) == ["decode", "lorafleet.Generate", "lorafleet.gateway.Generate",
                               "prefill", "queue"]
    gateway, worker = by_name["lorafleet.gateway.Generate"], by_name["lorafleet.Generate"]
    assert gateway.parent_span_id.hex() == parent
    assert worker.parent_span_id == gateway.span_id
    attempts = [e for e in gateway.events if e.name == "attempt"]
    assert [a.value.string_value for e in attempts for a in e.attributes
            if a.key == "lorafleet.worker_id"] == ["traced"]
    phases = [by_name[name] for name in ("queue", "prefill", "decode")]
    assert all(phase.parent_span_id == worker.span_id for phase in phases)
    for before, after in zip(phases, phases[1:], strict=False):
        assert before.end_time_unix_nano <= after.start_time_unix_nano + 1000  # rounding
    assert gateway.start_time_unix_nano <= worker.start_time_unix_nano
    assert worker.end_time_unix_nano <= gateway.end_time_unix_nano


def test_without_a_collector_the_callers_trace_context_still_reaches_the_worker():
    # What the gateway does with no --otlp-endpoint: a no-op span over the caller's context.
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    parent = context_from_metadata([("traceparent", traceparent), ("authorization", "x")])
    span = tracer_of(None, "lorafleet.gateway").start_span("lorafleet.gateway.Generate",
                                                           context=parent)
    assert dict(trace_metadata(span)) == {"traceparent": traceparent}
    assert context_from_metadata([("authorization", "x")]) is None
