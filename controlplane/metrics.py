"""Control-plane metrics on the replica's own Prometheus registry, served on /metrics.

Every replica reports whether it leads and its etcd requests. The reconciler's series
(passes, actions) and the fleet gauges (workers, versions, placement, pending actions)
come from the leader, which reads the whole fleet on each pass; on the other replicas the
gauges are 0, so `sum` or `max` over replicas gives the fleet's figure. Every series
exists from the start. docs/metrics.md lists them all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.controlplane.schema import Snapshot
from lorafleet.runtime.metrics_http import MetricsEndpoint

ETCD_OPS = ("get", "range", "put", "txn", "lease_grant", "lease_keepalive", "lease_revoke")
ACTIONS = ("load", "evict")
ACTION_OUTCOMES = ("ok", "deferred", "refused")
VERSION_STATES = {adapter_pb.VERSION_STATE_PENDING: "pending",
                  adapter_pb.VERSION_STATE_READY: "ready",
                  adapter_pb.VERSION_STATE_REJECTED: "rejected"}
WORKER_STATES = ("live", "draining")
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class ControlPlaneMetrics:
    """One replica's series; `is_leader` is read at scrape time."""

    def __init__(self, is_leader: Callable[[], bool] = lambda: False):
        self.registry = registry = CollectorRegistry()
        self._http = MetricsEndpoint(self.registry)
        Gauge("lorafleet_controlplane_is_leader", "1 on the replica that holds the election "
              "lease and reconciles, else 0", registry=registry).set_function(
                  lambda: float(is_leader()))
        self.passes = Counter("lorafleet_controlplane_reconcile_passes", "Reconcile passes "
                              "by outcome (failed: raised, retried next pass)", ["outcome"],
                              registry=registry)
        self.pass_duration = Histogram("lorafleet_controlplane_reconcile_duration_seconds",
                                       "Duration of one reconcile pass", registry=registry,
                                       buckets=PASS_BUCKETS)
        self.actions = Counter("lorafleet_controlplane_actions", "LoadAdapter/EvictAdapter "
                               "calls to workers by outcome: ok, deferred (retried with "
                               "backoff), refused (recorded, placed elsewhere)",
                               ["kind", "outcome"], registry=registry)
        self.etcd_duration = Histogram("lorafleet_controlplane_etcd_request_duration_seconds",
                                       "etcd request latency by operation", ["op"],
                                       registry=registry, buckets=ETCD_BUCKETS)
        self.etcd_errors = Counter("lorafleet_controlplane_etcd_errors", "etcd requests that "
                                   "failed, by operation", ["op"], registry=registry)
        self._create_fleet_gauges()
        for op in ETCD_OPS:
            self.etcd_duration.labels(op)
            self.etcd_errors.labels(op)
        for kind in ACTIONS:
            for outcome in ACTION_OUTCOMES:
                self.actions.labels(kind, outcome)
        for outcome in ("ok", "failed"):
            self.passes.labels(outcome)

    def _create_fleet_gauges(self) -> None:
        registry = self.registry
        self.pending = Gauge("lorafleet_controlplane_pending_actions", "Loads and evictions "
                             "the last pass planned and did not complete (waiting for "
                             "backoff or deferred)", ["kind"], registry=registry)
        self.placed_versions = Gauge("lorafleet_controlplane_placed_versions", "Versions with "
                                     "a desired placement", registry=registry)
        self.placed_replicas = Gauge("lorafleet_controlplane_placed_replicas", "(version, "
                                     "worker) pairs in the desired placement",
                                     registry=registry)
        self.versions = Gauge("lorafleet_controlplane_versions", "Adapter versions by "
                              "validation state", ["state"], registry=registry)
        self.workers = Gauge("lorafleet_controlplane_workers", "Registered workers by state",
                             ["state"], registry=registry)
        self.clear_fleet()

    @contextlib.contextmanager
    def reconcile_pass(self) -> Iterator[None]:
        """Times one pass and counts it as ok, or failed if it raises."""
        started = time.monotonic()
        try:
            yield
        except Exception:
            self.passes.labels("failed").inc()
            raise
        finally:
            self.pass_duration.observe(time.monotonic() - started)
        self.passes.labels("ok").inc()

    @contextlib.contextmanager
    def etcd_request(self, op: str) -> Iterator[None]:
        """Times one etcd request (one attempt) and counts it as an error if it raises."""
        started = time.monotonic()
        try:
            yield
        except Exception:
            self.etcd_errors.labels(op).inc()
            raise
        finally:
            self.etcd_duration.labels(op).observe(time.monotonic() - started)

    def record_action(self, kind: str, outcome: str) -> None:
        """Counts one LoadAdapter ("load") or EvictAdapter ("evict") call's outcome."""
        self.actions.labels(kind, outcome).inc()

    def record_fleet(self, snapshot: Snapshot, desired: Mapping[object, Sequence[str]],
                     pending: Mapping[str, int]) -> None:
        """The fleet as the leader's last pass saw it."""
        self.placed_versions.set(len(desired))
        self.placed_replicas.set(sum(len(workers) for workers in desired.values()))
        for kind in ACTIONS:
            self.pending.labels(kind).set(pending.get(kind, 0))
        states = [VERSION_STATES.get(v.state) for v in snapshot.versions.values()]
        for state in VERSION_STATES.values():
            self.versions.labels(state).set(states.count(state))
        num_draining = sum(w.is_draining for w in snapshot.workers.values())
        self.workers.labels("live").set(len(snapshot.workers) - num_draining)
        self.workers.labels("draining").set(num_draining)

    def clear_fleet(self) -> None:
        """Zeroes the fleet gauges (this replica stopped leading)."""
        for gauge in (self.placed_versions, self.placed_replicas):
            gauge.set(0)
        for kind in ACTIONS:
            self.pending.labels(kind).set(0)
        for state in VERSION_STATES.values():
            self.versions.labels(state).set(0)
        for state in WORKER_STATES:
            self.workers.labels(state).set(0)

    def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves /metrics on host:port (0 picks a free port); returns the bound port."""
        return self._http.start(host, port)

    def close(self) -> None:
        """Stops the HTTP endpoint."""
        self._http.close()
