"""Placement as a pure function: table tests, no etcd."""

from __future__ import annotations

import random

import pytest

from lorafleet.controlplane.placement import (
    PlacementPolicy,
    VersionDemand,
    WorkerCapacity,
    count_moves,
    place,
)


def _workers(num: int, slots: int = 4, model: str = "base", prefix: str = "w") -> list:
    return [WorkerCapacity(f"{prefix}{i}", model, slots) for i in range(num)]


def _version(name: str, **kwargs) -> VersionDemand:
    fields = {"adapter": f"acme/{name}", "version": 1, "base_model": "base", **kwargs}
    return VersionDemand(**fields)


CASES = {
    # name: (versions, workers, current, expected replicas per adapter)
    "one replica by default": (
        [_version("a")], _workers(3), {}, {"acme/a": 1},
    ),
    "min_replicas honoured": (
        [_version("a", min_replicas=2)], _workers(3), {}, {"acme/a": 2},
    ),
    "min_replicas capped by the fleet": (
        [_version("a", min_replicas=5)], _workers(3), {}, {"acme/a": 3},
    ),
    "demand adds replicas": (
        [_version("a", demand=9.0)], _workers(5), {}, {"acme/a": 3},
    ),
    "demand capped by max_replicas": (
        [_version("a", demand=40.0, max_replicas=2)], _workers(5), {}, {"acme/a": 2},
    ),
    "no worker of the base model": (
        [_version("a", base_model="other")], _workers(3), {}, {"acme/a": 0},
    ),
    "draining workers get nothing": (
        [_version("a", min_replicas=3)],
        [WorkerCapacity("w0", "base", 4), WorkerCapacity("w1", "base", 4, is_draining=True)],
        {},
        {"acme/a": 1},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_replica_counts(name):
    versions, workers, current, expected = CASES[name]
    placement = place(versions, workers, current)
    got = {adapter: len(ids) for (adapter, _), ids in placement.items()}
    assert got == expected


def test_never_more_versions_than_slots():
    versions = [_version(f"a{i}", min_replicas=2) for i in range(10)]
    placement = place(versions, _workers(3, slots=4), {})
    per_worker: dict[str, int] = {}
    for ids in placement.values():
        for worker_id in ids:
            per_worker[worker_id] = per_worker.get(worker_id, 0) + 1
    assert max(per_worker.values()) <= 4
    assert sum(per_worker.values()) == 12  # the fleet is full: 3 workers x 4 slots


def test_hot_versions_win_scarce_slots():
    versions = [_version("cold", demand=0.0), _version("hot", demand=3.0)]
    placement = place(versions, _workers(1, slots=1), {})
    assert placement[("acme/hot", 1)] == ("w0",)
    assert placement[("acme/cold", 1)] == ()


def test_every_version_is_covered_before_hot_versions_grow():
    versions = [_version("hot", demand=8.0), _version("cold")]
    current = {("acme/hot", 1): ("w0", "w1")}
    placement = place(versions, _workers(2, slots=1), current)
    assert placement == {("acme/cold", 1): ("w1",), ("acme/hot", 1): ("w0",)}


def test_replicas_of_one_version_land_on_distinct_workers():
    placement = place([_version("a", min_replicas=3)], _workers(3, slots=10), {})
    assert placement[("acme/a", 1)] == ("w0", "w1", "w2")


def test_replicas_spread_over_workers():
    versions = [_version(f"a{i}") for i in range(12)]
    placement = place(versions, _workers(4, slots=10), {})
    counts = [sum(w in ids for ids in placement.values()) for w in ("w0", "w1", "w2", "w3")]
    assert counts == [3, 3, 3, 3]


def test_only_matching_base_model():
    workers = _workers(2, model="llama") + _workers(2, model="qwen", prefix="q")
    versions = [_version("a", base_model="qwen", min_replicas=2)]
    assert place(versions, workers, {})[("acme/a", 1)] == ("q0", "q1")


def test_excluded_workers_are_avoided():
    versions = [_version("a", excluded_worker_ids=frozenset({"w0"}))]
    assert place(versions, _workers(2), {})[("acme/a", 1)] == ("w1",)


def test_sticky_keeps_current_workers():
    current = {("acme/a", 1): ("w2",), ("acme/b", 1): ("w2",)}
    placement = place([_version("a"), _version("b")], _workers(3), current)
    assert placement == current


def test_dead_worker_replicas_move_to_survivors():
    current = {("acme/a", 1): ("w0", "w1"), ("acme/b", 1): ("w1",)}
    versions = [_version("a", min_replicas=2), _version("b")]
    survivors = [w for w in _workers(3) if w.worker_id != "w1"]
    placement = place(versions, survivors, current)
    # a keeps w0 and gains w2; b then goes to the least-filled survivor (tie: lowest id).
    assert placement == {("acme/a", 1): ("w0", "w2"), ("acme/b", 1): ("w0",)}


def test_unknown_versions_in_current_are_dropped():
    placement = place([_version("a")], _workers(1), {("acme/gone", 1): ("w0",)})
    assert list(placement) == [("acme/a", 1)]


def test_deterministic_regardless_of_input_order():
    rng = random.Random(7)
    versions = [_version(f"a{i}", demand=rng.uniform(0, 12)) for i in range(50)]
    workers = _workers(6, slots=15)
    first = place(versions, workers, {})
    rng.shuffle(versions)
    workers.reverse()
    assert place(versions, workers, {}) == first


def test_small_demand_change_moves_few():
    rng = random.Random(11)
    versions = [_version(f"a{i}", demand=rng.uniform(0, 10)) for i in range(200)]
    workers = _workers(10, slots=80)
    before = place(versions, workers, {})
    changed = list(versions)
    changed[5] = _version("a5", demand=30.0)
    after = place(changed, workers, before)
    assert 0 < count_moves(before, after) <= 8


def test_removing_a_version_frees_its_slot_without_moving_others():
    versions = [_version(f"a{i}") for i in range(4)]
    before = place(versions, _workers(2, slots=2), {})
    after = place(versions[:3], _workers(2, slots=2), before)
    assert count_moves(before, after) == 1


def test_policy_rejects_nonpositive_demand_per_replica():
    with pytest.raises(ValueError, match="demand_per_replica"):
        PlacementPolicy(demand_per_replica=0)
