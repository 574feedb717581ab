"""Worker metrics on the worker's own Prometheus registry, served on /metrics.

prometheus_client directly rather than OpenTelemetry's exporter, for two reasons: every
series must exist from the start (at zero), histograms included, and OpenTelemetry cannot
create a histogram before its first observation; and the model-server protocol's series
(gauges.py) are named with colons, which OpenTelemetry's exporter rewrites. Each worker
owns its registry (no process globals), so several workers can run in one process, as
they do in tests. docs/metrics.md lists every series.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from lorafleet.dataplane.engine.snapshot import EngineSnapshot
from lorafleet.dataplane.server.gauges import TIERS, ServerLimits, SnapshotGauges
from lorafleet.dataplane.server.labels import BASE, VersionLabeler
from lorafleet.runtime.metrics_http import MetricsEndpoint

# Seconds buckets: tokens on a GPU arrive in milliseconds, CPU and cold loads take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
FINISH_REASONS = ("stop", "length", "cancelled", "error")
ADAPTER_LABELS = ("adapter", "version")
OUTCOMES = ("ok", "failed")


@dataclasses.dataclass(frozen=True)
class FinishedRequest:
    """What one finished request contributes to the metrics (times in seconds)."""

    adapter: str | None
    version: int | None
    finish_reason: str
    num_prompt_tokens: int
    num_output_tokens: int
    queue_seconds: float | None
    time_to_first_token: float | None
    total_seconds: float
    token_gaps: tuple[float, ...] = ()
    num_cached_tokens: int = 0  # prompt tokens the prefix cache supplied


class TokenClock:
    """Times the gaps between a request's outputs as its caller receives them."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._last: float | None = None

    def tick(self, output) -> None:
        """Notes one output of the request (outputs without tokens are not counted)."""
        if not output.new_token_ids:
            return
        now = time.monotonic()
        if self._last is not None:
            self.gaps.append(now - self._last)
        self._last = now


class BulkHistogram(Collector):
    """A histogram fed a batch of values at once (a request's inter-token gaps): one lock
    and a bisect per value, where prometheus_client's Histogram takes locks per value.
    Measured: 100 gaps in about 20 us instead of 250, on the server's event loop."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...]):
        self._name, self._documentation, self._labelnames = name, documentation, labelnames
        self._bounds = tuple(buckets)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> None:
        """Creates the series of `values` at zero."""
        with self._lock:
            self._series.setdefault(values, ([0] * (len(self._bounds) + 1), [0.0]))

    def observe_many(self, key: tuple[str, ...], values: Iterable[float]) -> None:
        """Adds every value of `values` to the series of label values `key`."""
        counts, total = [0] * (len(self._bounds) + 1), 0.0
        for value in values:
            counts[bisect.bisect_left(self._bounds, value)] += 1  # value <= bound
            total += value
        with self._lock:
            series, series_sum = self._series.setdefault(key, ([0] * len(counts), [0.0]))
            for index, count in enumerate(counts):
                series[index] += count
            series_sum[0] += total

    def collect(self):
        """Called by the registry on every scrape."""
        family = HistogramMetricFamily(self._name, self._documentation,
                                       labels=self._labelnames)
        with self._lock:
            items = [(key, list(counts), sums[0]) for key, (counts, sums) in self._series.items()]
        bounds = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        for key, counts, total in items:
            cumulative = [sum(counts[:i + 1]) for i in range(len(counts))]
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), total)
        yield family


class WorkerMetrics:
    """The worker's series, fed by the servicers and the adapter cache, read by Prometheus."""

    def __init__(self, worker_id: str, *, max_adapter_labels: int = 20):
        self.worker_id = worker_id
        self.registry = CollectorRegistry()
        self.labels = VersionLabeler(max_adapter_labels, 2 * max_adapter_labels)
        self.gauges = SnapshotGauges()
        self.registry.register(self.gauges)
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._http = MetricsEndpoint(self.registry)
        self._create_request_series()
        self._create_prefix_cache_series()
        self._create_adapter_series()
        self._touch(BASE, "")

    def _create_request_series(self) -> None:
        registry, by_adapter = self.registry, ADAPTER_LABELS
        self.requests = Counter("lorafleet_requests", "Finished requests by adapter, version "
                                "and finish reason", [*by_adapter, "finish_reason"],
                                registry=registry)
        self.rejected = Counter("lorafleet_rejected_requests", "Generate requests ended with "
                                "an error status (refused or failed), by gRPC code", ["code"],
                                registry=registry)
        self.prompt_tokens = Counter("lorafleet_prompt_tokens", "Prompt tokens of finished "
                                     "requests", by_adapter, registry=registry)
        self.output_tokens = Counter("lorafleet_generation_tokens", "Generated tokens of "
                                     "finished requests", by_adapter, registry=registry)
        self.queue_time = Histogram("lorafleet_queue_time_seconds", "Arrival to first "
                                    "scheduled", by_adapter, registry=registry,
                                    buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("lorafleet_time_to_first_token_seconds", "Arrival to first "
                              "token", by_adapter, registry=registry, buckets=LATENCY_BUCKETS)
        self.itl = BulkHistogram("lorafleet_inter_token_latency_seconds", "Time between two "
                                 "outputs of a request", by_adapter, TOKEN_BUCKETS)
        registry.register(self.itl)
        self.tpot = Histogram("lorafleet_time_per_output_token_seconds", "Mean time between "
                              "output tokens after the first, per request", by_adapter,
                              registry=registry, buckets=TOKEN_BUCKETS)
        self.e2e = Histogram("lorafleet_request_latency_seconds", "Arrival to last token",
                             by_adapter, registry=registry, buckets=LATENCY_BUCKETS)
        for code in grpc.StatusCode:
            if code is not grpc.StatusCode.OK:
                self.rejected.labels(code.name)

    def _create_adapter_series(self) -> None:
        registry = self.registry
        self.adapter_loads = Counter("lorafleet_adapter_loads", "Adapter loads into a tier, "
                                     "by outcome", ["tier", "outcome"], registry=registry)
        self.adapter_evictions = Counter("lorafleet_adapter_evictions", "Adapter evictions "
                                         "from a tier", ["tier"], registry=registry)
        self.load_duration = Histogram("lorafleet_adapter_load_duration_seconds", "Adapter "
                                       "load time by tier", ["tier"], registry=registry,
                                       buckets=LATENCY_BUCKETS)
        for tier in TIERS:
            self.adapter_evictions.labels(tier)
            self.load_duration.labels(tier)
            for outcome in OUTCOMES:
                self.adapter_loads.labels(tier, outcome)

    def _create_prefix_cache_series(self) -> None:
        registry, by_adapter = self.registry, ADAPTER_LABELS
        self.prefix_queries = Counter("lorafleet_prefix_cache_queries", "Prompt tokens of "
                                      "finished requests, looked up in the prefix cache",
                                      by_adapter, registry=registry)
        self.prefix_hits = Counter("lorafleet_prefix_cache_hits", "Prompt tokens of finished "
                                   "requests whose KV came from the prefix cache", by_adapter,
                                   registry=registry)
        # vLLM's names (tokens, per base model), for dashboards made for vLLM.
        self.vllm_prefix_queries = Counter("vllm:prefix_cache_queries", "Prefix cache "
                                           "queries, in prompt tokens", ["model_name"],
                                           registry=registry)
        self.vllm_prefix_hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in "
                                        "prompt tokens", ["model_name"], registry=registry)
        self._model_name = ""

    def set_limits(self, limits: ServerLimits) -> None:
        """The worker's shape and base model name (the vLLM-named series' `model_name`)."""
        self.gauges.set_limits(limits)
        self._model_name = limits.model_name
        self.vllm_prefix_queries.labels(limits.model_name)
        self.vllm_prefix_hits.labels(limits.model_name)

    def _touch(self, adapter: str, version: str) -> None:
        """Creates every series of a new (adapter, version) pair at zero."""
        with self._lock:
            if (adapter, version) in self._known:
                return
            self._known.add((adapter, version))
        for reason in FINISH_REASONS:
            self.requests.labels(adapter, version, reason)
        for series in (self.prompt_tokens, self.output_tokens, self.queue_time, self.ttft,
                       self.itl, self.tpot, self.e2e, self.prefix_queries, self.prefix_hits):
            series.labels(adapter, version)

    def observe(self, snapshot: Callable[[], EngineSnapshot | None]) -> None:
        """Reads the gauges from `snapshot()` (the engine loop's latest) at scrape time."""
        self.gauges.observe(snapshot)

    def record_finished(self, request: FinishedRequest) -> None:
        """Counts a finished request and its latencies under its adapter's labels."""
        key = self.labels.observe(request.adapter, request.version)
        self._touch(*key)
        self.requests.labels(*key, request.finish_reason).inc()
        self.prompt_tokens.labels(*key).inc(request.num_prompt_tokens)
        self.output_tokens.labels(*key).inc(request.num_output_tokens)
        self._count_prefix_cache(key, request)
        self.e2e.labels(*key).observe(request.total_seconds)
        if request.queue_seconds is not None:
            self.queue_time.labels(*key).observe(request.queue_seconds)
        if request.time_to_first_token is None:
            return
        self.ttft.labels(*key).observe(request.time_to_first_token)
        if request.num_output_tokens > 1:
            decode = request.total_seconds - request.time_to_first_token
            self.tpot.labels(*key).observe(decode / (request.num_output_tokens - 1))
        self.itl.observe_many(key, request.token_gaps)

    def _count_prefix_cache(self, key: tuple[str, str], request: FinishedRequest) -> None:
        self.prefix_queries.labels(*key).inc(request.num_prompt_tokens)
        self.prefix_hits.labels(*key).inc(request.num_cached_tokens)
        self.vllm_prefix_queries.labels(self._model_name).inc(request.num_prompt_tokens)
        self.vllm_prefix_hits.labels(self._model_name).inc(request.num_cached_tokens)

    def record_rejected(self, code: grpc.StatusCode) -> None:
        """Counts one Generate that ended with error status `code`."""
        self.rejected.labels(code.name).inc()

    def record_load(self, tier: str, seconds: float, is_ok: bool) -> None:
        """Counts one adapter load into `tier` and how long it took."""
        self.adapter_loads.labels(tier, "ok" if is_ok else "failed").inc()
        if is_ok:
            self.load_duration.labels(tier).observe(seconds)

    def record_eviction(self, tier: str) -> None:
        """Counts one adapter eviction from `tier`."""
        self.adapter_evictions.labels(tier).inc()

    def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves /metrics on host:port (0 picks a free port); returns the bound port."""
        return self._http.start(host, port)

    def close(self) -> None:
        """Stops the HTTP endpoint."""
        self._http.close()
