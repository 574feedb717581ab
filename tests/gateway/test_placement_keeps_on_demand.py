"""Placement after a gateway's on-demand placement (tests/controlplane/test_planning.py
style: hand-built snapshots, no etcd). The stored placement is the authority: an on-demand
copy is in it (FleetService.PlaceAdapterVersion wrote it), so it is kept, and kept first
while it has traffic; a copy a worker merely claims is not believed."""

from __future__ import annotations

import pytest

from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.placement import PlacementPolicy
from lorafleet.controlplane.planning import (
    desired_placement,
    plan_evictions,
    plan_loads,
    reported_residency,
)
from lorafleet.controlplane.schema import Snapshot
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

KEY = ("acme/a", 1)


def _snapshot(held_by, stored, draining=(), busy=()) -> Snapshot:
    """acme/a@1 routed; workers w-a, w-b, w-c (w-a least filled by id); `held_by` serve it,
    `busy` with a request in flight; `stored` is its stored placement (None: none yet)."""
    snapshot = Snapshot(revision=1)
    snapshot.adapters["acme/a"] = apb.Adapter(name="acme/a", base_model="m")
    snapshot.versions[KEY] = apb.AdapterVersion(adapter="acme/a", version=1, digest="d1",
                                                source_uri="/a1", state=apb.VERSION_STATE_READY)
    snapshot.rollouts["acme/a"] = apb.Rollout(adapter="acme/a", weights=[
        apb.VersionWeight(version=1, weight=1)])
    if stored is not None:
        snapshot.placements[KEY] = fleet_pb.VersionPlacement(
            adapter="acme/a", version=1, desired_worker_ids=stored)
    for worker_id in ("w-a", "w-b", "w-c"):
        held = [worker_pb.AdapterResidency(adapter="acme/a", version=1, digest="d1",
                                           tier=worker_pb.TIER_HOST,
                                           state=worker_pb.LOAD_STATE_READY)
                ] if worker_id in held_by else []
        load = worker_pb.WorkerLoad(requests_per_adapter={"acme/a@1": 1} if worker_id in busy
                                    else {})
        snapshot.workers[worker_id] = fleet_pb.Worker(
            worker_id=worker_id, address=f"{worker_id}:1", base_model=worker_pb.BaseModel(name="m"),
            capacities=worker_pb.Capacities(max_loras=1, max_cpu_loras=4), adapters=held,
            is_draining=worker_id in draining, load=load)
    return snapshot


@pytest.mark.parametrize(("held_by", "stored", "draining", "busy", "expected", "evicted"), [
    # A gateway had it placed on w-b before the leader ever placed it: w-b keeps it.
    (("w-b",), ["w-b"], (), (), ("w-b",), set()),
    # Its placed worker died (gone from the snapshot); the on-demand copy on w-c stays.
    (("w-c",), ["w-dead", "w-c"], (), (), ("w-c",), set()),
    # Its placed worker is draining: the on-demand copy on w-b stays.
    (("w-b",), ["w-a", "w-b"], ("w-a",), (), ("w-b",), set()),
    # The placed holder still claims it (its lease has not run out) while the gateway's
    # requests go to the on-demand copy on w-c: the copy with traffic is kept.
    (("w-b", "w-c"), ["w-b", "w-c"], (), ("w-c",), ("w-c",), {"w-b"}),
    # Both copies have traffic: both stay, whatever one replica would do.
    (("w-b", "w-c"), ["w-b", "w-c"], (), ("w-b", "w-c"), ("w-b", "w-c"), set()),
    # A copy w-b claims without a placement is not believed: placement picks the least
    # filled worker, and w-b's copy goes only once w-a serves it.
    (("w-b",), None, (), (), ("w-a",), set()),
    # Nobody holds it: the least filled worker, as before.
    ((), None, (), (), ("w-a",), set()),
])
def test_placement_after_on_demand_placement(held_by, stored, draining, busy, expected, evicted):
    snapshot = _snapshot(held_by, stored, draining, busy)
    desired = desired_placement(snapshot, PlacementPolicy())
    assert desired[KEY] == expected
    residency = reported_residency(snapshot)
    if set(held_by) >= set(expected):  # already served where placed: nothing to load
        assert plan_loads(snapshot, desired, residency) == []
    assert {e.worker_id for e in plan_evictions(snapshot, desired, residency)} == evicted
