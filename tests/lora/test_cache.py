"""The three-tier adapter cache with fake device slots: residency, pins and LRU order."""

from __future__ import annotations

import threading
import time

import pytest

from lorafleet.dataplane.lora.cache import AdapterCache, AdapterSource
from tests.lora.fakes import FakeAdapter, FakeSlots


def _source(digest):
    return AdapterSource(label=f"t/{digest}@1", source_uri=f"/src/{digest}", digest=digest)


def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _make(num_slots=2, max_host=3, running=(), load=None):
    slots = FakeSlots(num_slots)
    running_keys = running if callable(running) else (lambda: running)
    cache = AdapterCache(slots, max_host=max_host, load=load or (lambda s: FakeAdapter(s.digest)),
                         running_keys=running_keys)
    return cache, slots


def test_cold_adapter_loads_in_background_then_becomes_ready():
    gate = threading.Event()
    cache, slots = _make(load=lambda s: (gate.wait(5), FakeAdapter(s.digest))[1])
    cache.add_source(_source("a"))
    assert not cache.is_ready("a")
    cache.request_load("a")
    cache.request_load("a")  # a second request while loading is a no-op
    assert not cache.is_ready("a")  # the load is blocked: never waits for it
    gate.set()
    _wait_until(lambda: cache.tier_of("a") == "host")
    assert cache.is_ready("a")
    assert slots.contents[cache.slot_of("a")] == "a"


def test_running_adapter_slot_is_never_evicted():
    running = {"a", "b"}
    cache, slots = _make(num_slots=2, running=lambda: running)
    for key in "abc":
        cache.load_host(_source(key))
    assert cache.is_ready("a") and cache.is_ready("b")
    assert not cache.is_ready("c")  # both slots pinned by running requests
    assert sorted(slots.contents) == ["a", "b"]
    running.discard("a")
    assert cache.is_ready("c")
    assert sorted(slots.contents) == ["b", "c"]
    assert not cache.evict("b", keep_host=True)  # still running


def test_least_recently_used_unpinned_slot_is_replaced():
    cache, slots = _make(num_slots=2)
    for key in "abc":
        cache.load_host(_source(key))
    assert cache.is_ready("a") and cache.is_ready("b")
    assert cache.is_ready("a")  # a used again: b is now the least recent
    assert cache.is_ready("c")
    assert cache.tier_of("b") == "host" and cache.tier_of("a") == "device"


def test_host_tier_is_an_lru_of_bounded_size():
    cache, _ = _make(num_slots=1, max_host=2)
    for key in "abc":
        cache.load_host(_source(key))
    assert cache.tier_of("a") is None  # dropped from host, still loadable from source
    assert cache.counts()["host"] == 2
    cache.request_load("a")
    _wait_until(lambda: cache.tier_of("a") == "host")


def test_failed_load_is_reported_once_with_the_reason():
    def load(source):
        raise FileNotFoundError(f"{source.source_uri} is gone")

    cache, _ = _make(load=load)
    cache.add_source(_source("a"))
    cache.request_load("a")
    _wait_until(lambda: cache.take_failures() == {"a": "/src/a is gone"} or False)


def test_unregistered_digest_fails_instead_of_waiting_forever():
    cache, _ = _make()
    cache.request_load("nope")
    assert "not registered" in cache.take_failures()["nope"]


def test_wrong_digest_at_source_is_refused():
    cache, _ = _make(load=lambda s: FakeAdapter("other"))
    with pytest.raises(ValueError, match="expected"):
        cache.load_host(_source("a"))
    assert cache.tier_of("a") is None


def test_evict_clears_the_slot_and_optionally_the_host_copy():
    cache, slots = _make()
    cache.load_host(_source("a"))
    assert cache.is_ready("a")
    assert cache.evict("a", keep_host=True)
    assert slots.contents == [None, None] and cache.tier_of("a") == "host"
    assert cache.evict("a", keep_host=False)
    assert cache.tier_of("a") is None
