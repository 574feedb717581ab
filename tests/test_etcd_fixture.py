"""The etcd fixture starts a real etcd that aetcd can use: the control plane's footing."""

from __future__ import annotations

import asyncio

import aetcd
import pytest


@pytest.fixture
async def client(etcd):
    host, port = etcd.endpoint.split(":")
    async with aetcd.Client(host=host, port=int(port)) as etcd_client:
        yield etcd_client


async def test_put_get_and_prefix(client):
    await client.put(b"/t/adapters/acme/a", b"1")
    await client.put(b"/t/adapters/acme/b", b"2")
    await client.put(b"/t/other", b"3")
    assert (await client.get(b"/t/adapters/acme/a")).value == b"1"
    listed = await client.get_prefix(b"/t/adapters/")
    assert [(kv.key, kv.value) for kv in listed] == [
        (b"/t/adapters/acme/a", b"1"), (b"/t/adapters/acme/b", b"2")
    ]
    assert await client.get(b"/t/missing") is None


async def test_watch_sees_changes_after_a_revision(client):
    first = await client.put(b"/t/w", b"old")
    watch = await client.watch(b"/t/w", start_revision=first.header.revision + 1)
    await client.put(b"/t/w", b"new")
    events = watch.__aiter__()
    event = await asyncio.wait_for(events.__anext__(), 10)
    assert event.kv.value == b"new"
    await watch.cancel()


async def test_lease_expiry_deletes_its_keys(client):
    lease = await client.lease(1)
    await client.put(b"/t/worker/w1", b"alive", lease=lease)
    assert await client.get(b"/t/worker/w1") is not None
    for _ in range(60):
        if await client.get(b"/t/worker/w1") is None:
            break
        await asyncio.sleep(0.1)
    assert await client.get(b"/t/worker/w1") is None


async def test_transaction_is_all_or_nothing(client):
    await client.put(b"/t/version", b"1")
    compare = [client.transactions.value(b"/t/version") == b"1"]
    success = [
        client.transactions.put(b"/t/version", b"2"),
        client.transactions.put(b"/t/rollout", b"v2"),
    ]
    ok, _ = await client.transaction(compare=compare, success=success, failure=[])
    assert ok
    stale, _ = await client.transaction(compare=compare, success=success[:1], failure=[])
    assert not stale
    assert (await client.get(b"/t/version")).value == b"2"
    assert (await client.get(b"/t/rollout")).value == b"v2"


def test_restart_keeps_data(etcd):
    async def put_then_get(write: bool):
        host, port = etcd.endpoint.split(":")
        async with aetcd.Client(host=host, port=int(port)) as c:
            if write:
                await c.put(b"/t/kept", b"yes")
            return await c.get(b"/t/kept")

    asyncio.run(put_then_get(True))
    etcd.stop()
    etcd.start()
    assert asyncio.run(put_then_get(False)).value == b"yes"
