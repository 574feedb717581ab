"""Worker metrics: OpenTelemetry instruments exported on a Prometheus /metrics endpoint.

Each worker owns its MeterProvider and Prometheus registry (no process globals), so
several workers can run in one process, as they do in tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from lorafleet.dataplane.server.labels import AdapterLabeler
from lorafleet.dataplane.server.snapshot import EngineSnapshot

# Seconds buckets: tokens on a GPU arrive in milliseconds, CPU and cold loads take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclasses.dataclass(frozen=True)
class FinishedRequest:
    """What one finished request contributes to the metrics."""

    adapter: str | None
    finish_reason: str
    num_prompt_tokens: int
    num_output_tokens: int
    time_to_first_token: float | None
    total_seconds: float


class WorkerMetrics:
    """The worker's instruments, fed by the servicers and read by Prometheus."""

    def __init__(self, worker_id: str, *, max_adapter_labels: int = 20):
        self.registry = CollectorRegistry()
        self.labels = AdapterLabeler(max_adapter_labels)
        self._snapshot: Callable[[], EngineSnapshot | None] = lambda: None
        self._http = None
        reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self.provider = MeterProvider(
            metric_readers=[reader], views=_views(),
            resource=Resource.create({"service.name": "lorafleet-worker", "worker.id": worker_id}),
        )
        self._create_instruments(self.provider.get_meter("lorafleet.worker"))

    def _create_instruments(self, meter) -> None:
        self.requests = meter.create_counter(
            "lorafleet_requests", description="Finished requests by adapter and finish reason")
        self.prompt_tokens = meter.create_counter(
            "lorafleet_prompt_tokens", description="Prompt tokens by adapter")
        self.output_tokens = meter.create_counter(
            "lorafleet_generation_tokens", description="Generated tokens by adapter")
        self.ttft = meter.create_histogram(
            "lorafleet_time_to_first_token", unit="s", description="Arrival to first token")
        self.tpot = meter.create_histogram(
            "lorafleet_time_per_output_token", unit="s",
            description="Mean time between output tokens after the first")
        self.e2e = meter.create_histogram(
            "lorafleet_request_latency", unit="s", description="Arrival to last token")
        self.adapter_loads = meter.create_counter(
            "lorafleet_adapter_loads", description="Adapter loads into a tier, by outcome")
        self.adapter_evictions = meter.create_counter(
            "lorafleet_adapter_evictions", description="Adapter evictions from a tier")
        self.load_duration = meter.create_histogram(
            "lorafleet_adapter_load_duration", unit="s", description="Adapter load time by tier")
        for name, description, field in (
            ("lorafleet_queue_depth", "Requests waiting to be scheduled", "num_waiting"),
            ("lorafleet_running_sequences", "Sequences in the running batch", "num_running"),
            ("lorafleet_kv_blocks_used", "KV cache blocks in use", "num_used_blocks"),
            ("lorafleet_kv_blocks_total", "KV cache blocks in all", "num_total_blocks"),
        ):
            meter.create_observable_gauge(name, [self._observe(field)], description=description)
        meter.create_observable_gauge(
            "lorafleet_resident_adapters", [self._observe_tiers],
            description="Adapter versions resident per tier")

    def observe(self, snapshot: Callable[[], EngineSnapshot | None]) -> None:
        """Reads the gauges from `snapshot()` (the engine thread's latest) at scrape time."""
        self._snapshot = snapshot

    def _observe(self, field: str):
        def callback(options: CallbackOptions):
            snapshot = self._snapshot()
            if snapshot is not None:
                yield Observation(getattr(snapshot.stats, field))
        return callback

    def _observe_tiers(self, options: CallbackOptions):
        snapshot = self._snapshot()
        for tier, count in (snapshot.adapter_counts.items() if snapshot else ()):
            yield Observation(count, {"tier": tier})

    def record_finished(self, request: FinishedRequest) -> None:
        """Counts a finished request and its latencies under its adapter's label."""
        label = {"adapter": self.labels.observe(request.adapter)}
        self.requests.add(1, {**label, "finish_reason": request.finish_reason})
        self.prompt_tokens.add(request.num_prompt_tokens, label)
        self.output_tokens.add(request.num_output_tokens, label)
        self.e2e.record(request.total_seconds, label)
        if request.time_to_first_token is None:
            return
        self.ttft.record(request.time_to_first_token, label)
        if request.num_output_tokens > 1:
            decode = request.total_seconds - request.time_to_first_token
            self.tpot.record(decode / (request.num_output_tokens - 1), label)

    def record_load(self, tier: str, seconds: float, is_ok: bool) -> None:
        """Counts one adapter load into `tier` and how long it took."""
        self.adapter_loads.add(1, {"tier": tier, "outcome": "ok" if is_ok else "failed"})
        if is_ok:
            self.load_duration.record(seconds, {"tier": tier})

    def record_eviction(self, tier: str) -> None:
        """Counts one adapter eviction from `tier`."""
        self.adapter_evictions.add(1, {"tier": tier})

    def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves /metrics on host:port (0 picks a free port); returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        """Stops the HTTP endpoint and the meter provider."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.provider.shutdown()


def _views() -> list[View]:
    latency = ExplicitBucketHistogramAggregation(LATENCY_BUCKETS)
    per_token = ExplicitBucketHistogramAggregation(TOKEN_BUCKETS)
    return [
        View(instrument_name="lorafleet_time_to_first_token", aggregation=latency),
        View(instrument_name="lorafleet_request_latency", aggregation=latency),
        View(instrument_name="lorafleet_adapter_load_duration", aggregation=latency),
        View(instrument_name="lorafleet_time_per_output_token", aggregation=per_token),
    ]
