"""Adapter names, versions and pins on one worker."""

from __future__ import annotations

import asyncio

import pytest

from lorafleet.dataplane.server.versions import (
    AdapterUnavailable,
    UnknownAdapter,
    VersionEntry,
    VersionState,
    VersionTable,
    VersionTaken,
)
from lorafleet.runtime.names import check_worker_id, parse_ref, shorten


def _entry(name="acme/support", version=1, digest="d1"):
    return VersionEntry(name, version, digest, f"/src/{digest}", state=VersionState.READY)


def test_echoed_input_is_cut_and_worker_ids_take_host_and_port():
    assert len(shorten("x" * 10_000)) < 120
    assert shorten("acme/x") == "'acme/x'"
    assert check_worker_id("gpu-host-3:50051") == "gpu-host-3:50051"
    with pytest.raises(ValueError, match="worker_id"):
        check_worker_id("bad id")


async def test_one_load_claims_a_version_and_a_second_source_is_refused():
    table = VersionTable()
    first = table.reserve("acme/x", 3, "/a")
    assert first.state is VersionState.LOADING and first.version == 3
    with pytest.raises(VersionTaken):
        table.reserve("acme/x", 3, "/b")
    assert table.reserve("acme/x", 0, "/c").version == 4  # the next number skips a load
    with pytest.raises(AdapterUnavailable, match="loading"):
        table.resolve("acme/x@3")


async def test_a_drain_that_ends_early_leaves_the_version_serving():
    table = VersionTable()
    entry = table.add(_entry("acme/x", 1, "a" * 64), make_default=True)
    table.acquire(entry)
    assert not await table.retire(entry, timeout=0.01)
    assert table.resolve("acme/x") is entry
    waiting = asyncio.ensure_future(table.retire(entry, timeout=None))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert table.resolve("acme/x") is entry  # a cancelled eviction changed nothing


def test_refs_parse_and_bad_refs_say_why():
    assert parse_ref("acme/support") == ("acme/support", None)
    assert parse_ref("acme/support@12") == ("acme/support", 12)
    for bad in ("support", "Acme/x", "a/b@0", "a/b@x", "a/b/c", ""):
        with pytest.raises(ValueError, match="tenant/name"):
            parse_ref(bad)


def test_bare_name_follows_the_default_and_exact_version_is_kept():
    table = VersionTable()
    v1 = table.add(_entry(version=1, digest="d1"), make_default=False)
    assert table.resolve("acme/support") is v1  # first version becomes the default
    v2 = table.add(_entry(version=2, digest="d2"), make_default=False)
    assert table.resolve("acme/support") is v1
    table.add(v2, make_default=True)
    assert table.resolve("acme/support") is v2
    assert table.resolve("acme/support@1") is v1
    with pytest.raises(UnknownAdapter):
        table.resolve("acme/support@3")
    with pytest.raises(UnknownAdapter):
        table.resolve("acme/other")


async def test_drain_waits_for_pins_and_refuses_new_requests():
    table = VersionTable()
    v1 = table.add(_entry(), make_default=True)
    table.acquire(v1)
    drained = asyncio.create_task(table.retire(v1, timeout=5))
    await asyncio.sleep(0.01)
    assert not drained.done()
    with pytest.raises(AdapterUnavailable, match="being evicted"):
        table.resolve("acme/support")
    table.release(v1)
    assert await drained
    table.remove(v1)
    with pytest.raises(UnknownAdapter):
        table.resolve("acme/support")


async def test_drain_timeout_gives_the_version_back():
    table = VersionTable()
    v1 = table.add(_entry(), make_default=True)
    table.acquire(v1)
    assert not await table.retire(v1, timeout=0.01)
    assert table.resolve("acme/support") is v1


def test_removing_the_default_falls_back_to_the_newest():
    table = VersionTable()
    v1 = table.add(_entry(version=1, digest="d1"), make_default=True)
    v3 = table.add(_entry(version=3, digest="d3"), make_default=True)
    table.add(_entry(version=2, digest="d2"), make_default=False)
    table.remove(v3)
    assert table.resolve("acme/support").version == 2
    assert table.next_version("acme/support") == 3
    assert v1.label == "acme/support@1"
