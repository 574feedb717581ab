"""Reconciler decisions and the routing table from hand-built snapshots: no etcd, no workers."""

from __future__ import annotations

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.placement import PlacementPolicy
from lorafleet.controlplane.planning import (
    demand_by_version,
    desired_placement,
    plan_evictions,
    plan_loads,
    reported_residency,
)
from lorafleet.controlplane.reconciler import decision_fingerprint
from lorafleet.controlplane.routing import diff, routing_table
from lorafleet.controlplane.schema import Snapshot
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

READY = worker_pb.LOAD_STATE_READY


def _residency(adapter, version, tier=worker_pb.TIER_HOST, state=READY, digest=None):
    return worker_pb.AdapterResidency(adapter=adapter, version=version, tier=tier, state=state,
                                      digest=digest or f"d{version}")


def _snapshot(rollout_weights, workers) -> Snapshot:
    """Adapter acme/a with versions 1 and 2, the given split, and workers {id: residency}."""
    snapshot = Snapshot(revision=7)
    snapshot.adapters["acme/a"] = pb.Adapter(name="acme/a", base_model="m")
    for number in (1, 2):
        snapshot.versions[("acme/a", number)] = pb.AdapterVersion(
            adapter="acme/a", version=number, digest=f"d{number}", source_uri=f"/a{number}",
            state=pb.VERSION_STATE_READY)
    snapshot.rollouts["acme/a"] = pb.Rollout(adapter="acme/a", weights=[
        pb.VersionWeight(version=v, weight=w) for v, w in rollout_weights])
    for worker_id, held in workers.items():
        snapshot.workers[worker_id] = fleet_pb.Worker(
            worker_id=worker_id, address=f"{worker_id}:1", base_model=worker_pb.BaseModel(name="m"),
            capacities=worker_pb.Capacities(max_loras=1, max_cpu_loras=4), adapters=held)
    return snapshot


def _placed(snapshot, placements):
    """`snapshot` with stored placements {(adapter, version): worker ids}."""
    for (adapter, version), worker_ids in placements.items():
        snapshot.placements[(adapter, version)] = fleet_pb.VersionPlacement(
            adapter=adapter, version=version, desired_worker_ids=worker_ids)
    return snapshot


def test_routed_version_is_not_evicted_before_its_new_replica_is_ready():
    snapshot = _snapshot([(1, 1)], {"old": [_residency("acme/a", 1)], "new": []})
    desired = {("acme/a", 1): ("new",)}
    residency = reported_residency(snapshot)
    assert [(x.worker_id, x.version) for x in plan_loads(snapshot, desired, residency)] == [
        ("new", 1)]
    assert plan_evictions(snapshot, desired, residency) == []
    residency["new"] = {("acme/a", 1): _residency("acme/a", 1)}
    assert [(x.worker_id, x.version) for x in plan_evictions(snapshot, desired, residency)] == [
        ("old", 1)]


def test_unrouted_versions_are_evicted_at_once_and_loading_ones_not_reloaded():
    snapshot = _snapshot([(1, 1), (2, 0)], {
        "w0": [_residency("acme/a", 2), _residency("acme/a", 1, state=worker_pb.LOAD_STATE_LOADING)],
    })
    desired = {("acme/a", 1): ("w0",)}
    residency = reported_residency(snapshot)
    assert plan_loads(snapshot, desired, residency) == []
    assert [(x.worker_id, x.version) for x in plan_evictions(snapshot, desired, residency)] == [
        ("w0", 2)]


def test_older_weights_under_the_same_name_are_evicted_before_loading():
    # acme/a was deleted and registered again: w0 still holds the old acme/a@1 weights.
    snapshot = _snapshot([(1, 1)], {"w0": [_residency("acme/a", 1, digest="old")]})
    desired = {("acme/a", 1): ("w0",)}
    residency = reported_residency(snapshot)
    assert plan_loads(snapshot, desired, residency) == []
    assert [(x.worker_id, x.version) for x in plan_evictions(snapshot, desired, residency)] == [
        ("w0", 1)]
    assert list(routing_table(snapshot)["acme/a"].versions[0].workers) == []
    residency["w0"] = {}
    assert [(x.worker_id, x.digest) for x in plan_loads(snapshot, desired, residency)] == [
        ("w0", "d1")]


def test_desired_placement_excludes_failed_workers_and_reads_demand():
    snapshot = _snapshot([(1, 1)], {"w0": [], "w1": [], "w2": []})
    snapshot.workers["w0"].load.requests_per_adapter["acme/a@1"] = 6
    snapshot.workers["w1"].load.requests_per_adapter["acme/a@1"] = 3
    snapshot.workers["w1"].load.requests_per_adapter["malformed"] = 5
    assert demand_by_version(snapshot) == {("acme/a", 1): 9.0}
    snapshot.placements[("acme/a", 1)] = fleet_pb.VersionPlacement(
        adapter="acme/a", version=1, failures={"w2": "FAILED_PRECONDITION: bad digest"})
    desired = desired_placement(snapshot, PlacementPolicy(demand_per_replica=4))
    assert desired == {("acme/a", 1): ("w0", "w1")}  # 3 wanted, w2 excluded


def test_routing_table_lists_serving_holders_device_first():
    snapshot = _placed(_snapshot([(1, 90), (2, 10)], {
        "a": [_residency("acme/a", 1, tier=worker_pb.TIER_HOST)],
        "b": [_residency("acme/a", 1, tier=worker_pb.TIER_DEVICE),
              _residency("acme/a", 2, state=worker_pb.LOAD_STATE_FAILED)],
    }), {("acme/a", 1): ["a", "b"], ("acme/a", 2): ["b"]})
    route = routing_table(snapshot)["acme/a"]
    assert [(v.version, v.digest, v.weight) for v in route.versions] == [(1, "d1", 90),
                                                                        (2, "d2", 10)]
    assert [w.worker_id for w in route.versions[0].workers] == ["b", "a"]
    assert list(route.versions[1].workers) == []
    assert routing_table(snapshot, base_model="other") == {}


def test_a_worker_claiming_a_version_it_was_not_placed_on_is_not_listed():
    """Issue 21 #2: a worker (or anyone with a worker key) heartbeating a claim to hold
    another tenant's version was believed and routed to."""
    snapshot = _placed(_snapshot([(1, 1)], {
        "honest": [_residency("acme/a", 1)], "rogue": [_residency("acme/a", 1)]}),
        {("acme/a", 1): ["honest"]})
    route = routing_table(snapshot)["acme/a"]
    assert [w.worker_id for w in route.versions[0].workers] == ["honest"]
    unplaced = routing_table(_snapshot([(1, 1)], {"rogue": [_residency("acme/a", 1)]}))
    assert list(unplaced["acme/a"].versions[0].workers) == []


def test_an_old_copy_is_evicted_only_once_gateways_are_shown_the_new_one():
    """Plans and routes read one record of residency (heartbeats): an eviction never takes
    away the last holder the routing table lists."""
    for new_state, evicted_then in ((worker_pb.LOAD_STATE_LOADING, set()), (READY, {"old"})):
        snapshot = _placed(_snapshot([(1, 1)], {
            "old": [_residency("acme/a", 1)],
            "new": [_residency("acme/a", 1, state=new_state)]}), {("acme/a", 1): ["new"]})
        desired = {("acme/a", 1): ("new",)}
        evictions = plan_evictions(snapshot, desired, reported_residency(snapshot))
        listed = {w.worker_id for w in routing_table(snapshot)["acme/a"].versions[0].workers}
        assert {e.worker_id for e in evictions} == evicted_then
        assert listed == ({"new"} if evicted_then else set())


def test_routing_diff_reports_changes_and_removals():
    on = {("acme/a", 1): ["a", "b"]}
    before = routing_table(_placed(_snapshot([(1, 1)], {"a": [_residency("acme/a", 1)]}), on))
    moved = routing_table(_placed(_snapshot([(1, 1)], {"b": [_residency("acme/a", 1)]}), on))
    changed, removed = diff(before, moved)
    assert [r.versions[0].workers[0].worker_id for r in changed] == ["b"] and removed == []
    assert diff(moved, moved) == ([], [])
    stopped = routing_table(_placed(_snapshot([], {"b": [_residency("acme/a", 1)]}), on))
    assert diff(moved, stopped) == ([], ["acme/a"])


def test_fingerprint_ignores_heartbeat_noise_but_not_residency():
    snapshot = _snapshot([(1, 1)], {"a": [_residency("acme/a", 1)]})
    first = decision_fingerprint(snapshot)
    snapshot.workers["a"].last_heartbeat_time.seconds = 99
    snapshot.workers["a"].load.num_running = 3
    snapshot.workers["a"].adapters[0].num_pinned_requests = 2
    assert decision_fingerprint(snapshot) == first
    snapshot.workers["a"].adapters.add(adapter="acme/a", version=2, state=READY)
    assert decision_fingerprint(snapshot) != first
