"""The etcd store and election against a real etcd: watches, transactions, restarts."""

from __future__ import annotations

import asyncio

import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.controlplane.election import LeaderElection
from lorafleet.controlplane.store import EtcdStore, RetryPolicy, parse_endpoint


@pytest.fixture
async def store(etcd):
    opened = EtcdStore(etcd.url, etcd.root, retry=RetryPolicy(give_up_seconds=20.0))
    yield opened
    await opened.close()


def _put_adapter(store, name):
    key = store.keys.adapter(name).encode()
    value = pb.Adapter(name=name, base_model="m").SerializeToString()
    return store.ops.put(key, value)


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
    assert (await store.get(store.keys.leader()))[0] == b"cp-1"
    await first.resign(lease)
    second_lease = await asyncio.wait_for(waiting, 5)
    assert (await store.get(store.keys.leader()))[0] == b"cp-2"
    # A deposed leader notices: its fenced writes fail and hold() returns.
    ok = await store.commit([first.fence()], [_put_adapter(store, "acme/x")])
    assert not ok
    await store.client.delete(store.keys.leader().encode())
    await asyncio.wait_for(second.hold(second_lease), 5)


def test_parse_endpoint_accepts_urls_and_host_port():
    assert parse_endpoint("http://10.0.0.5:2379") == ("10.0.0.5", 2379)
    assert parse_endpoint("etcd.internal:32379") == ("etcd.internal", 32379)
    with pytest.raises(ValueError, match="no host"):
        parse_endpoint("http://:2379")
