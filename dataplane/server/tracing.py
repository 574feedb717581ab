"""Tracing: one trace per request, across gateway and worker, exported over OTLP.

The caller's W3C trace context (`traceparent`, `tracestate`) travels in gRPC metadata:
the gateway continues it (or starts a trace), and injects its own span's context into
the worker call, whose `lorafleet.Generate` span continues it in turn. The worker adds
the request's phases (queue, prefill, decode) as child spans from the engine's timings.

Without an OTLP endpoint the tracer is OpenTelemetry's no-op one: spans cost nothing. The
exporter comes with the `otlp` extra (`pip install 'lorafleet[otlp]'`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
TRACE_METADATA = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate


def make_tracer_provider(otlp_endpoint: str | None, instance_id: str, *,
                         service: str = "lorafleet-worker") -> TracerProvider | None:
    """A provider exporting to `otlp_endpoint` (host:port of an OTLP/gRPC collector)."""
    if not otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise SystemExit(
            "--otlp-endpoint needs the OTLP exporter: pip install 'lorafleet[otlp]'") from exc
    provider = TracerProvider(resource=Resource.create(
        {"service.name": service, "service.instance.id": instance_id}))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def tracer_of(provider: TracerProvider | None, name: str = "lorafleet.worker") -> trace.Tracer:
    """The provider's tracer, or a no-op one."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(name)


def context_from_metadata(metadata: Iterable[tuple[str, str]] | None) -> otel_context.Context | None:
    """The caller's trace context from gRPC metadata; None when it sent none."""
    carrier = {key: value for key, value in metadata or () if key in TRACE_METADATA}
    return _PROPAGATOR.extract(carrier) if carrier else None


def trace_metadata(span: trace.Span) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that makes the callee's spans children of `span`."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def request_span(tracer: trace.Tracer, caller_id: str, entry,
                 parent: otel_context.Context | None = None) -> trace.Span:
    """Starts the span of one Generate request pinned to version `entry` (None: base),
    continuing the caller's trace when `parent` carries one."""
    return tracer.start_span("lorafleet.Generate", context=parent, kind=trace.SpanKind.SERVER,
                             attributes={
                                 "lorafleet.request_id": caller_id,
                                 "lorafleet.adapter": entry.label if entry else "",
                                 "lorafleet.adapter_digest": entry.digest if entry else "",
                             })


def end_request_span(tracer: trace.Tracer, span: trace.Span, last) -> None:
    """Closes a request's span with what its last output (None: nothing) says, and its
    queue, prefill and decode phases as child spans."""
    if last is not None and span.is_recording():
        reason = last.finish_reason.value if last.finish_reason else "cancelled"
        span.set_attribute("lorafleet.finish_reason", reason)
        span.set_attribute("lorafleet.prompt_tokens", last.usage.num_prompt_tokens)
        span.set_attribute("lorafleet.completion_tokens", last.usage.num_output_tokens)
        timings = last.timings
        if timings.first_token is not None:
            span.set_attribute("lorafleet.time_to_first_token_s",
                               timings.first_token - timings.arrival)
        _add_phases(tracer, span, timings, time.monotonic())
    span.end()


def _add_phases(tracer: trace.Tracer, span: trace.Span, timings, end: float) -> None:
    """Child spans between the engine's milestones (monotonic seconds): waiting to be
    scheduled, computing the prompt, generating the rest."""
    parent = trace.set_span_in_context(span)
    marks = (("queue", timings.arrival), ("prefill", timings.first_scheduled),
             ("decode", timings.first_token), (None, end))
    for (name, start), (_, stop) in zip(marks[:-1], marks[1:], strict=True):
        if start is None:
            return  # the request never got that far
        phase = tracer.start_span(name, context=parent, start_time=_unix_ns(start))
        phase.end(end_time=_unix_ns(end if stop is None else stop))
        if stop is None:
            return  # ended (finished, cancelled, failed) during this phase


def _unix_ns(monotonic_seconds: float) -> int:
    """A time.monotonic() reading as Unix nanoseconds (what spans carry)."""
    return time.time_ns() - int((time.monotonic() - monotonic_seconds) * 1e9)
