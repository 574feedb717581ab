"""Gateway metrics on their own Prometheus registry, served on /metrics, and its tracer.

Every series exists from the start (labelled counters at zero), so a dashboard or an alert
sees 0 rather than "no data" before the first request. With an OTLP endpoint, each
Generate is a span that continues the caller's W3C trace context and is passed on to the
worker (see dataplane/server/tracing.py); without one the tracer is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from lorafleet.dataplane.gateway.picking import PICKS
from lorafleet.dataplane.server.tracing import make_tracer_provider, tracer_of
from lorafleet.runtime.metrics_http import MetricsEndpoint


class GatewayMetrics:
    """The gateway's instruments; `age` and `is_connected` are read at scrape time. Spans
    go to `otlp_endpoint` (host:port of an OTLP/gRPC collector) when one is given."""

    def __init__(self, age: Callable[[], float], is_connected: Callable[[], bool], *,
                 otlp_endpoint: str | None = None, instance_id: str = "gateway"):
        self._tracer_provider = make_tracer_provider(otlp_endpoint, instance_id,
                                                     service="lorafleet-gateway")
        self.tracer = tracer_of(self._tracer_provider, "lorafleet.gateway")
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lorafleet_gateway_requests", "Generate requests by final gRPC status code",
            ["code"], registry=self.registry)
        self.picks = Counter(
            "lorafleet_gateway_picks", "Workers picked for an attempt, by why: the version's "
            "device or host tier, an on-demand load, or the base model", ["tier"],
            registry=self.registry)
        self.retries = Counter(
            "lorafleet_gateway_retries", "Requests retried on another worker after a failure "
            "before their first message", registry=self.registry)
        self.outstanding = Gauge(
            "lorafleet_gateway_outstanding_requests", "Generate requests in progress",
            registry=self.registry)
        Gauge("lorafleet_gateway_routing_table_age_seconds",
              "Seconds since the routing table was last known current (0 while the "
              "control plane stream is up)", registry=self.registry).set_function(age)
        Gauge("lorafleet_gateway_controlplane_connected",
              "1 while a control-plane routing stream is up, else 0",
              registry=self.registry).set_function(lambda: float(is_connected()))
        for code in grpc.StatusCode:
            self.requests.labels(code.name)
        for pick in PICKS:
            self.picks.labels(pick)
        self._http = MetricsEndpoint(self.registry)

    def count_refused(self, method: str, code: grpc.StatusCode) -> None:
        """Counts a Generate call the auth interceptor refused (its servicer never ran)."""
        if method.endswith("/Generate"):
            self.requests.labels(code.name).inc()

    def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves /metrics on host:port (0 picks a free port); returns the bound port."""
        return self._http.start(host, port)

    def close(self) -> None:
        """Stops the HTTP endpoint and flushes the spans not yet exported."""
        self._http.close()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
            self._tracer_provider = None
