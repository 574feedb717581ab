"""The etcd store and election against a real etcd: watches, transactions, restarts."""

from __future__ import annotations

import asyncio

import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.election import LeaderElection
from lorafleet.controlplane.placement_writes import try_put_placement
from lorafleet.controlplane.store import EtcdStore, RetryPolicy, parse_endpoint
from lorafleet.controlplane.transactions import (
    Absent,
    Delete,
    DeletePrefix,
    Exists,
    HoldsValue,
    Put,
    Unchanged,
    UnchangedSince,
)


@pytest.fixture
async def store(etcd):
    opened = EtcdStore(etcd.url, etcd.root, retry=RetryPolicy(give_up_seconds=20.0))
    yield opened
    await opened.close()


def _put_adapter(store, name):
    return Put(store.keys.adapter(name), pb.Adapter(name=name, base_model="m"))


async def test_watch_lists_then_streams_whole_transactions(store):
    await store.commit([], [_put_adapter(store, "acme/a")])
    snapshots = store.watch_snapshots()
    first = await anext(snapshots)
    assert list(first.adapters) == ["acme/a"]
    ops = [_put_adapter(store, "acme/b"), _put_adapter(store, "acme/c")]
    await store.commit([], ops)
    second = await asyncio.wait_for(anext(snapshots), 10)
    assert sorted(second.adapters) == ["acme/a", "acme/b", "acme/c"]  # never half of it
    assert second.revision > first.revision
    await snapshots.aclose()


@pytest.mark.slow
@pytest.mark.own_etcd
async def test_calls_and_watches_ride_out_an_etcd_restart(etcd, store):
    snapshots = store.watch_snapshots()
    await anext(snapshots)
    await asyncio.to_thread(etcd.stop)
    restart = asyncio.create_task(_restart_later(etcd, 1.0))
    # Issued while etcd is down: waits with backoff, then succeeds.
    await store.commit([], [_put_adapter(store, "acme/during")])
    await restart
    seen = await asyncio.wait_for(anext(snapshots), 15)
    while "acme/during" not in seen.adapters:
        seen = await asyncio.wait_for(anext(snapshots), 15)
    await store.commit([], [_put_adapter(store, "acme/after")])
    while "acme/after" not in seen.adapters:
        seen = await asyncio.wait_for(anext(snapshots), 15)
    await snapshots.aclose()


async def _restart_later(etcd, delay):
    await asyncio.sleep(delay)
    await asyncio.to_thread(etcd.start)


@pytest.mark.slow
async def test_one_leader_at_a_time_and_handover_on_resign(store):
    first = LeaderElection(store, "cp-1", ttl_seconds=2)
    second = LeaderElection(store, "cp-2", ttl_seconds=2)
    lease = await first.campaign()
    waiting = asyncio.create_task(second.campaign())
    await asyncio.sleep(1.0)
    assert not waiting.done()
    assert (await store.get(store.keys.leader())).value == b"cp-1"
    await first.resign(lease)
    second_lease = await asyncio.wait_for(waiting, 5)
    assert (await store.get(store.keys.leader())).value == b"cp-2"
    # A deposed leader notices: its fenced writes fail and hold() returns.
    ok = await store.commit([first.fence()], [_put_adapter(store, "acme/x")])
    assert not ok
    await store.commit([], [Delete(store.keys.leader())])
    await asyncio.wait_for(second.hold(second_lease), 5)


async def test_each_condition_holds_exactly_when_it_says(store):
    key = store.keys.adapter("acme/cas")
    assert await store.commit([Absent(key)], [Put(key, b"v1")])
    assert not await store.commit([Absent(key)], [Put(key, b"again")])
    read = await store.get(key)
    assert read.value == b"v1"
    assert await store.commit([Exists(key), Unchanged(key, read), HoldsValue(key, b"v1")],
                              [Put(key, b"v2")])
    # The entry read before that write is stale now; a snapshot's revision likewise.
    assert not await store.commit([Unchanged(key, read)], [Put(key, b"lost")])
    assert not await store.commit([UnchangedSince(key, read.mod_revision)], [Put(key, b"lost")])
    assert not await store.commit([HoldsValue(key, b"v1")], [Put(key, b"lost")])
    assert await store.commit([UnchangedSince(key, (await store.get(key)).mod_revision)], [])
    absent = store.keys.adapter("acme/never")
    assert await store.commit([Unchanged(absent, None), UnchangedSince(absent, 1)], [])
    assert not await store.commit([Exists(absent)], [])
    assert await store.commit([], [DeletePrefix(store.keys.adapter("acme/"))])
    assert await store.get(key) is None


async def test_a_placement_changed_after_a_writers_snapshot_is_not_overwritten(store):
    """The reconciler and on-demand placement write placement by one rule: neither
    overwrites what the other wrote after the snapshot it decided on."""
    seen = await store.snapshot()
    on_demand = fleet_pb.VersionPlacement(adapter="acme/a", version=1, desired_worker_ids=["b"])
    assert await try_put_placement(store, seen, on_demand)
    stale = fleet_pb.VersionPlacement(adapter="acme/a", version=1, desired_worker_ids=["a"],
                                      failures={"a": "FAILED_PRECONDITION: refused"})
    assert not await try_put_placement(store, seen, stale)
    fresh = await store.snapshot()
    assert list(fresh.placements[("acme/a", 1)].desired_worker_ids) == ["b"]
    assert await try_put_placement(store, fresh, stale)


def test_parse_endpoint_accepts_urls_and_host_port():
    assert parse_endpoint("http://10.0.0.5:2379") == ("10.0.0.5", 2379)
    assert parse_endpoint("etcd.internal:32379") == ("etcd.internal", 32379)
    with pytest.raises(ValueError, match="no host"):
        parse_endpoint("http://:2379")
