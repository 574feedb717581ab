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
