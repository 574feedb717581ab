"""The routing table from the control plane's side (what a snapshot of etcd becomes) and the
gateway's side (what messages make of its copy), without servers."""

from __future__ import annotations

from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.api_fleet import routing_change
from lorafleet.controlplane.routing import live_workers, routing_table
from lorafleet.controlplane.schema import Snapshot
from lorafleet.dataplane.gateway.table import RoutingTable
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb


def _snapshot() -> Snapshot:
    """acme/a@1 routed, placed on w0 and held by nobody yet; w0 (model m), w1 (model other)."""
    snapshot = Snapshot(revision=3)
    snapshot.adapters["acme/a"] = apb.Adapter(name="acme/a", base_model="m")
    snapshot.versions[("acme/a", 1)] = apb.AdapterVersion(
        adapter="acme/a", version=1, digest="d1", source_uri="s3://b/a1",
        state=apb.VERSION_STATE_READY)
    snapshot.rollouts["acme/a"] = apb.Rollout(adapter="acme/a", weights=[
        apb.VersionWeight(version=1, weight=1)])
    snapshot.placements[("acme/a", 1)] = fleet_pb.VersionPlacement(
        adapter="acme/a", version=1, desired_worker_ids=["w0"])
    for worker_id, model in (("w0", "m"), ("w1", "other")):
        snapshot.workers[worker_id] = fleet_pb.Worker(
            worker_id=worker_id, address=f"{worker_id}:9", base_model=worker_pb.BaseModel(name=model))
    return snapshot


def test_routes_carry_source_and_placement_for_on_demand_loads():
    (version,) = routing_table(_snapshot())["acme/a"].versions
    assert (version.source_uri, list(version.placed_worker_ids), list(version.workers)) == (
        "s3://b/a1", ["w0"], [])


def test_live_workers_by_base_model_and_draining():
    snapshot = _snapshot()
    snapshot.workers["w0"].is_draining = True
    assert list(live_workers(snapshot)) == ["w0", "w1"]
    (only,) = live_workers(snapshot, "m").values()
    assert (only.worker_id, only.address, only.base_model, only.is_draining) == (
        "w0", "w0:9", "m", True)


def test_heartbeat_noise_sends_nothing_and_a_worker_leaving_is_a_change():
    snapshot = _snapshot()
    sent = (routing_table(snapshot), live_workers(snapshot))
    snapshot.workers["w0"].load.num_running = 7  # a heartbeat: load changed only
    assert routing_change(sent, (routing_table(snapshot), live_workers(snapshot)), 4) is None
    del snapshot.workers["w1"]
    message = routing_change(sent, (routing_table(snapshot), live_workers(snapshot)), 5)
    assert (message.revision, list(message.removed_worker_ids), list(message.routes)) == (
        5, ["w1"], [])


def _worker(worker_id: str, model: str = "m") -> fleet_pb.WorkerRoute:
    return fleet_pb.WorkerRoute(worker_id=worker_id, address=f"{worker_id}:1", base_model=model)


def _adapter_route(name: str, model: str = "m") -> fleet_pb.AdapterRoute:
    return fleet_pb.AdapterRoute(adapter=name, base_model=model,
                                 versions=[fleet_pb.VersionRoute(version=1, weight=1)])


def test_changes_edit_the_table_and_a_snapshot_replaces_it():
    table = RoutingTable().apply(fleet_pb.WatchRoutingTableResponse(
        revision=1, is_snapshot=True, routes=[_adapter_route("acme/a"), _adapter_route("acme/b")],
        workers=[_worker("w0"), _worker("w1")]))
    changed = table.apply(fleet_pb.WatchRoutingTableResponse(
        revision=2, routes=[_adapter_route("acme/c", "n")], removed_adapters=["acme/a"],
        workers=[_worker("w2", "n")], removed_worker_ids=["w0"]))
    assert (changed.revision, sorted(changed.routes), sorted(changed.workers)) == (
        2, ["acme/b", "acme/c"], ["w1", "w2"])
    assert sorted(table.routes) == ["acme/a", "acme/b"]  # the old table is untouched
    assert changed.base_models() == ["m", "n"]
    assert [w.worker_id for w in changed.workers_of("n")] == ["w2"]
    # After a reconnect, the snapshot alone counts: what was deleted meanwhile is gone.
    fresh = changed.apply(fleet_pb.WatchRoutingTableResponse(
        revision=9, is_snapshot=True, routes=[_adapter_route("acme/d")], workers=[_worker("w1")]))
    assert (sorted(fresh.routes), sorted(fresh.workers), fresh.addresses()) == (
        ["acme/d"], ["w1"], {"w1:1"})
