"""The host tier: background loads, LRU trimming that keeps adapters with requests, and
failures reported once."""

from __future__ import annotations

import threading
import time

import pytest

from lorafleet.dataplane.engine_process.messages import AdapterSource
from lorafleet.dataplane.lora.host_tier import HostAdapters
from tests.lora.fakes import FakeAdapter


def _source(digest):
    return AdapterSource(label=f"t/{digest}@1", source_uri=f"/src/{digest}", digest=digest)


def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _make(max_host=3, load=None):
    return HostAdapters(max_host=max_host, load=load or (lambda s: FakeAdapter(s.digest)))


def test_cold_adapter_loads_in_background_without_blocking_the_caller():
    gate = threading.Event()
    cache = _make(load=lambda s: (gate.wait(5), FakeAdapter(s.digest))[1])
    cache.add_source(_source("a"))
    cache.request_load("a")
    cache.request_load("a")  # a second request while loading is a no-op
    assert not cache.has("a")  # the load is blocked: request_load never waits for it
    gate.set()
    _wait_until(lambda: cache.has("a"))
    assert cache.get("a") == FakeAdapter("a")


def test_trim_drops_least_recent_but_never_an_adapter_with_requests():
    cache = _make(max_host=2)
    for key in "abcd":
        cache.load(_source(key))
    assert cache.has("a")  # a used again: b, c, d, a from least to most recent
    cache.trim(keep={"b", "c", "d"})
    assert cache.held() == ["b", "c", "d"]  # over the size: b, c and d have requests
    cache.trim(keep=set())
    assert cache.held() == ["c", "d"]


def test_failed_load_is_reported_once_with_the_reason():
    def load(source):
        raise FileNotFoundError(f"{source.source_uri} is gone")

    cache = _make(load=load)
    cache.add_source(_source("a"))
    cache.request_load("a")
    _wait_until(lambda: cache.take_failures() == {"a": "/src/a is gone"} or False)
    assert cache.take_failures() == {}


def test_unregistered_digest_fails_instead_of_waiting_forever():
    cache = _make()
    cache.request_load("nope")
    assert "not registered" in cache.take_failures()["nope"]


def test_wrong_digest_at_source_is_refused():
    cache = _make(load=lambda s: FakeAdapter("other"))
    with pytest.raises(ValueError, match="expected"):
        cache.load(_source("a"))
    assert not cache.has("a")


def test_drop_forgets_the_copy_and_the_source():
    cache = _make()
    cache.load(_source("a"))
    cache.drop("a")
    assert not cache.has("a")
    cache.request_load("a")
    assert "not registered" in cache.take_failures()["a"]
