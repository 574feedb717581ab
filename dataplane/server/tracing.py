"""Per-request tracing spans, exported over OTLP when an endpoint is configured.

Without an endpoint the tracer is OpenTelemetry's no-op one: spans cost nothing. The
exporter comes with the `otlp` extra (`pip install 'lorafleet[otlp]'`).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def make_tracer_provider(otlp_endpoint: str | None, worker_id: str) -> TracerProvider | None:
    """A provider exporting to `otlp_endpoint` (host:port of an OTLP/gRPC collector)."""
    if not otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise SystemExit(
            "--otlp-endpoint needs the OTLP exporter: pip install 'lorafleet[otlp]'") from exc
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "lorafleet-worker", "worker.id": worker_id}))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def tracer_of(provider: TracerProvider | None) -> trace.Tracer:
    """The worker's tracer: the provider's, or a no-op one."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer("lorafleet.worker")


def request_span(tracer: trace.Tracer, caller_id: str, entry) -> trace.Span:
    """Starts the span of one Generate request pinned to version `entry` (None: base)."""
    return tracer.start_span("lorafleet.Generate", attributes={
        "lorafleet.request_id": caller_id,
        "lorafleet.adapter": entry.label if entry else "",
        "lorafleet.adapter_digest": entry.digest if entry else "",
    })


def end_request_span(span: trace.Span, last) -> None:
    """Closes a request's span with what its last output (None: nothing) says."""
    if last is not None:
        reason = last.finish_reason.value if last.finish_reason else "cancelled"
        span.set_attribute("lorafleet.finish_reason", reason)
        span.set_attribute("lorafleet.prompt_tokens", last.usage.num_prompt_tokens)
        span.set_attribute("lorafleet.completion_tokens", last.usage.num_output_tokens)
        if last.timings.first_token is not None:
            ttft = last.timings.first_token - last.timings.arrival
            span.set_attribute("lorafleet.time_to_first_token_s", ttft)
    span.end()
