"""The control plane's /metrics against a real etcd and fake workers: leadership, reconcile
passes, actions, placement, versions and workers by state, etcd latency and errors."""

from __future__ import annotations

import socket

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.cli import build_parser, config_from_args
from lorafleet.controlplane.server import ControlPlane
from lorafleet.controlplane.store import EtcdStore, RetryPolicy, StoreUnavailable
from lorafleet.runtime.startup import StartupError
from tests.controlplane.conftest import (  # noqa: F401 (make_worker, stubs: fixtures)
    eventually,
    fast_config,
    make_worker,
    stubs,
)
from tests.observability.scrape import Scrape, scrape


@pytest.fixture
async def plane(etcd):
    """One replica serving /metrics on a free port."""
    replica = ControlPlane(fast_config(etcd, metrics_port=0))
    await replica.start()
    yield replica
    await replica.stop()


def _metrics(replica: ControlPlane) -> Scrape:
    return scrape(replica.metrics_port)


async def _add(stubs, name: str, source: str, *, is_routed: bool = True):  # noqa: F811
    await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(
        adapter=pb.Adapter(name=name, base_model="tiny-llama")))
    reply = await stubs.adapters.CreateAdapterVersion(
        pb.CreateAdapterVersionRequest(adapter=name, source_uri=source))
    if is_routed:
        await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(
            adapter=name, weights=[pb.VersionWeight(version=1, weight=1)]))
    return reply.version


def _fleet(found: Scrape) -> dict[str, float]:
    return {
        "live": found.value("lorafleet_controlplane_workers", state="live"),
        "draining": found.value("lorafleet_controlplane_workers", state="draining"),
        "ready": found.value("lorafleet_controlplane_versions", state="ready"),
        "rejected": found.value("lorafleet_controlplane_versions", state="rejected"),
        "pending": found.value("lorafleet_controlplane_versions", state="pending"),
        "placed": found.value("lorafleet_controlplane_placed_versions"),
        "replicas": found.value("lorafleet_controlplane_placed_replicas"),
        "pending_loads": found.value("lorafleet_controlplane_pending_actions", kind="load"),
    }


async def test_every_series_exists_from_the_start(plane):
    found = _metrics(plane)
    for outcome in ("ok", "failed"):
        assert found.values("lorafleet_controlplane_reconcile_passes_total", outcome=outcome)
    for kind in ("load", "evict"):
        for outcome in ("ok", "deferred", "refused"):
            assert found.value("lorafleet_controlplane_actions_total", kind=kind,
                               outcome=outcome) == 0
    for op in ("get", "range", "put", "txn", "lease_grant", "lease_keepalive", "lease_revoke"):
        assert found.values("lorafleet_controlplane_etcd_request_duration_seconds_count", op=op)
        assert found.values("lorafleet_controlplane_etcd_errors_total", op=op)
    assert set(_fleet(found).values()) == {0}
    assert found.values("lorafleet_controlplane_reconcile_duration_seconds_count")


@pytest.mark.slow
async def test_leader_reports_passes_actions_and_the_fleet(etcd, plane, stubs, make_worker):  # noqa: F811
    worker = await make_worker("w0")
    worker.load_failures["/flaky"] = (grpc.StatusCode.UNAVAILABLE, "source unreachable")
    worker.invalid_sources["/broken"] = ["rank 4096 exceeds --max-lora-rank 64"]
    await eventually(lambda: _metrics(plane).value("lorafleet_controlplane_is_leader") == 1)
    await _add(stubs, "acme/ok", "/ok")
    await _add(stubs, "acme/flaky", "/flaky")
    rejected = await _add(stubs, "acme/broken", "/broken", is_routed=False)
    assert rejected.state == pb.VERSION_STATE_REJECTED
    await eventually(lambda: ("acme/ok", 1) in worker.resident())
    expected = {"live": 1, "draining": 0, "ready": 2, "rejected": 1, "pending": 0, "placed": 2,
                "replicas": 2, "pending_loads": 1}  # acme/flaky keeps being deferred
    found = await eventually(lambda: _matches(plane, expected))
    actions = "lorafleet_controlplane_actions_total"
    assert found.value(actions, kind="load", outcome="ok") >= 1
    assert found.value(actions, kind="load", outcome="deferred") >= 1
    assert found.value("lorafleet_controlplane_reconcile_passes_total", outcome="ok") >= 2
    assert found.value("lorafleet_controlplane_reconcile_duration_seconds_count") >= 2
    for op in ("range", "put", "txn", "lease_grant"):
        count = "lorafleet_controlplane_etcd_request_duration_seconds_count"
        assert found.value(count, op=op) >= 1, op

    follower = ControlPlane(fast_config(etcd, metrics_port=0))
    await follower.start()
    try:
        assert _metrics(follower).value("lorafleet_controlplane_is_leader") == 0
        assert set(_fleet(_metrics(follower)).values()) == {0}  # the leader reports the fleet
    finally:
        await follower.stop()

    await stubs.fleet.DrainWorker(fleet_pb.DrainWorkerRequest(worker_id="w0"))
    await eventually(lambda: _matches(plane, {"live": 0, "draining": 1}))


def _matches(plane: ControlPlane, expected: dict[str, float]) -> Scrape | None:
    found = _metrics(plane)
    fleet = _fleet(found)
    return found if all(fleet[k] == v for k, v in expected.items()) else None


async def test_etcd_errors_are_counted_by_operation():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = EtcdStore(f"http://127.0.0.1:{port}", retry=RetryPolicy(give_up_seconds=0.3))
    try:
        with pytest.raises(StoreUnavailable):
            await store.get_prefix("/lorafleet/")
    finally:
        await store.close(1.0)
    errors = store.metrics.registry.get_sample_value(
        "lorafleet_controlplane_etcd_errors_total", {"op": "range"})
    assert errors >= 2  # the first attempt and at least one retry


async def test_metrics_port_flag_and_a_busy_port(etcd):
    common = ["--etcd", etcd.url, "--insecure-no-auth"]
    args = build_parser().parse_args([*common, "--metrics-port", "9402"])
    assert config_from_args(args).metrics_port == 9402
    assert config_from_args(build_parser().parse_args(common)).metrics_port is None
    # -1 is "off", as on every other server (issue 21 #8: it was exit status 2 here).
    off = build_parser().parse_args([*common, "--metrics-port", "-1"])
    assert config_from_args(off).metrics_port is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        replica = ControlPlane(fast_config(etcd, metrics_port=busy.getsockname()[1]))
        with pytest.raises(StartupError, match="--metrics-port"):
            await replica.start()
        await replica.stop()
