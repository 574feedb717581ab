"""The gateway's pure choices, table-tested without servers: version by weights and key,
worker order, reconnect backoff."""

from __future__ import annotations

import collections
import random

import pytest

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.dataplane.gateway.follower import Backoff
from lorafleet.dataplane.gateway.picking import (
    Candidate,
    base_candidates,
    holder_candidates,
    key_point,
    load_candidates,
    order,
    pick_version,
)
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

DEVICE, HOST = worker_pb.TIER_DEVICE, worker_pb.TIER_HOST


def _route(weights: dict[int, int], adapter: str = "acme/a") -> fleet_pb.AdapterRoute:
    return fleet_pb.AdapterRoute(adapter=adapter, base_model="m", versions=[
        fleet_pb.VersionRoute(version=v, weight=w) for v, w in weights.items()])


@pytest.mark.parametrize(("weights", "point", "expected"), [
    ({1: 90, 2: 10}, 0.0, 1),
    ({1: 90, 2: 10}, 0.8999, 1),
    ({1: 90, 2: 10}, 0.9, 2),
    ({1: 90, 2: 10}, 0.9999, 2),
    ({2: 10, 1: 90}, 0.5, 1),      # message order does not matter: versions in number order
    ({1: 1, 2: 1, 3: 2}, 0.49, 2),
    ({1: 1, 2: 1, 3: 2}, 0.5, 3),
    ({1: 0, 2: 5}, 0.0, 2),        # a zero weight gets nothing
])
def test_version_by_cumulative_weight(weights, point, expected):
    class Fixed(random.Random):
        def random(self):
            return point

    assert pick_version(_route(weights), "", Fixed()).version == expected


def test_routing_key_is_stable_across_replicas_and_spreads_by_weight():
    route = _route({1: 90, 2: 10})
    picks = {key: pick_version(route, key, random.Random(seed)).version
             for seed, key in enumerate(f"user-{i}" for i in range(5000))}
    again = {key: pick_version(route, key, random.Random()).version for key in picks}
    assert picks == again
    share = collections.Counter(picks.values())[1] / len(picks)
    assert 0.88 <= share <= 0.92
    # Same key, another adapter: an independent draw (keys are hashed with the adapter).
    assert key_point("acme/a", "user-1") != key_point("acme/b", "user-1")


def test_a_weight_shift_moves_only_the_keys_it_must():
    keys = [f"k{i}" for i in range(4000)]
    before = {k: pick_version(_route({1: 90, 2: 10}), k, random.Random()).version for k in keys}
    after = {k: pick_version(_route({1: 80, 2: 20}), k, random.Random()).version for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == 1 and after[k] == 2 for k in moved)  # nobody goes back to v1
    assert 0.08 <= len(moved) / len(keys) <= 0.12


def test_random_draws_follow_the_weights():
    rng = random.Random(3)
    counts = collections.Counter(pick_version(_route({1: 90, 2: 10}), "", rng).version
                                 for _ in range(20000))
    assert 0.89 <= counts[1] / 20000 <= 0.91


def _live(*specs) -> dict[str, fleet_pb.WorkerRoute]:
    return {worker_id: fleet_pb.WorkerRoute(worker_id=worker_id, address=f"{worker_id}:1",
                                            base_model="m", is_draining=draining)
            for worker_id, draining in specs}


@pytest.mark.parametrize(("holders", "draining", "outstanding", "expected"), [
    # device before host, whatever the load
    ([("a", HOST), ("b", DEVICE)], (), {"a:1": 0, "b:1": 5}, ["b", "a"]),
    # same tier: fewest outstanding first
    ([("a", DEVICE), ("b", DEVICE), ("c", DEVICE)], (), {"a:1": 3, "b:1": 1, "c:1": 2},
     ["b", "c", "a"]),
    # draining last, even on the device tier
    ([("a", DEVICE), ("b", HOST)], ("a",), {}, ["b", "a"]),
])
def test_holders_order(holders, draining, outstanding, expected):
    version = fleet_pb.VersionRoute(version=1, weight=1, workers=[
        fleet_pb.WorkerEndpoint(worker_id=w, address=f"{w}:1", tier=t) for w, t in holders])
    live = _live(*((w, w in draining) for w, _ in holders))
    ranked = order(holder_candidates(version, live), outstanding, (), random.Random(0))
    assert [c.worker_id for c in ranked] == expected
    assert {c.pick for c in ranked} <= {"device", "host"}


def test_ties_spread_and_excluded_workers_are_skipped():
    candidates = [Candidate(w, f"{w}:1", "device") for w in ("a", "b", "c")]
    rng = random.Random(5)
    firsts = collections.Counter(order(candidates, {}, (), rng)[0].worker_id for _ in range(3000))
    assert all(800 <= firsts[w] <= 1200 for w in "abc"), firsts
    assert [c.worker_id for c in order(candidates, {"c:1": 1}, {"a"}, rng)] == ["b", "c"]


def test_on_demand_prefers_own_loads_then_placement_then_least_loaded():
    live = _live(("a", False), ("b", False), ("c", False), ("d", True))
    version = fleet_pb.VersionRoute(version=1, weight=1, placed_worker_ids=["c"])
    rng = random.Random(0)
    ranked = order(load_candidates(version, live.values(), loaded_here={"b"}), {"b:1": 9}, (), rng)
    assert [c.worker_id for c in ranked] == ["b", "c", "a", "d"]
    assert all(c.needs_load for c in ranked)
    assert [c.worker_id for c in order(load_candidates(version, live.values(), ()),
                                       {}, (), rng)][:1] == ["c"]


def test_base_model_requests_avoid_draining_workers():
    live = _live(("a", True), ("b", False))
    ranked = order(base_candidates(live.values()), {"b:1": 50}, (), random.Random(0))
    assert [(c.worker_id, c.pick) for c in ranked] == [("b", "base"), ("a", "base")]


def test_backoff_grows_jittered_up_to_its_cap_and_resets():
    backoff = Backoff(first=0.1, cap=2.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(2.0, 0.1 * 2**i) for i in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jittered, not one fixed value
    backoff.reset()
    assert backoff.next_delay() <= 0.1
    with pytest.raises(ValueError, match="first"):
        Backoff(first=0, cap=1)
