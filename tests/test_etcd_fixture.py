"""The etcd fixture starts a real etcd that aetcd can use: the control plane's footing."""

from __future__ import annotations

import asyncio

import aetcd
import pytest


@pytest.fixture
def key(etcd):
    """A key under this test's root."""
    return etcd.key


@pytest.fixture
async def client(etcd):
    host, port = etcd.endpoint.split(":")
    async with aetcd.Client(host=host, port=int(port)) as etcd_client:
        yield etcd_client


async def test_put_get_and_prefix(client, key):
    await client.put(key("adapters/acme/a"), b"1")
    await client.put(key("adapters/acme/b"), b"2")
    await client.put(key("other"), b"3")
    assert (await client.get(key("adapters/acme/a"))).value == b"1"
    listed = await client.get_prefix(key("adapters/"))
    assert [(kv.key, kv.value) for kv in listed] == [
        (key("adapters/acme/a"), b"1"), (key("adapters/acme/b"), b"2")
    ]
    assert await client.get(key("missing")) is None


async def test_watch_sees_changes_after_a_revision(client, key):
    first = await client.put(key("w"), b"old")
    watch = await client.watch(key("w"), start_revision=first.header.revision + 1)
    await client.put(key("w"), b"new")
    events = watch.__aiter__()
    event = await asyncio.wait_for(events.__anext__(), 10)
    assert event.kv.value == b"new"
    await watch.cancel()


@pytest.mark.slow
async def test_lease_expiry_deletes_its_keys(client, key):
    lease = await client.lease(1)
    await client.put(key("worker/w1"), b"alive", lease=lease)
    assert await client.get(key("worker/w1")) is not None
    for _ in range(60):
        if await client.get(key("worker/w1")) is None:
            break
        await asyncio.sleep(0.1)
    assert await client.get(key("worker/w1")) is None


async def test_transaction_is_all_or_nothing(client, key):
    await client.put(key("version"), b"1")
    compare = [client.transactions.value(key("version")) == b"1"]
    success = [
        client.transactions.put(key("version"), b"2"),
        client.transactions.put(key("rollout"), b"v2"),
    ]
    ok, _ = await client.transaction(compare=compare, success=success, failure=[])
    assert ok
    stale, _ = await client.transaction(compare=compare, success=success[:1], failure=[])
    assert not stale
    assert (await client.get(key("version"))).value == b"2"
    assert (await client.get(key("rollout"))).value == b"v2"


@pytest.mark.slow
@pytest.mark.own_etcd
def test_restart_keeps_data(etcd, key):
    async def put_then_get(write: bool):
        host, port = etcd.endpoint.split(":")
        async with aetcd.Client(host=host, port=int(port)) as c:
            if write:
                await c.put(key("kept"), b"yes")
            return await c.get(key("kept"))

    asyncio.run(put_then_get(True))
    etcd.stop()
    etcd.start()
    assert asyncio.run(put_then_get(False)).value == b"yes"


def test_tests_share_one_etcd_under_roots_of_their_own(etcd, shared_etcd):
    assert etcd.server is shared_etcd and etcd.root.startswith("/test-")
    with pytest.raises(RuntimeError, match="own_etcd"):
        etcd.stop()
