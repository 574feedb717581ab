"""The three-tier adapter cache: device slots <- host LRU <- source.

Keys are adapter digests (sha256 of the weights), never names: two versions of one name
are two keys, so a request admitted on one version can never run on the other's weights.

Threads: loads from the source run on a small thread pool and land in the host tier
(under a lock). Everything else — the scheduler's `is_ready`/`request_load`, installs into
device slots, evictions — runs on the engine thread between steps, so a slot is never
rewritten while a step reads it. A slot whose adapter is used by a running request is
pinned: it is never evicted or overwritten.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdapterSource:
    """Where to (re)load one adapter version from, and the digest it must have."""

    label: str  # "tenant/name@N", for messages and metrics
    source_uri: str
    digest: str


class DeviceSlots(Protocol):
    """Preallocated device buffers for `num_slots` adapters (see slots.py)."""

    num_slots: int

    def write(self, slot: int, adapter: Any) -> None:
        """Copies an adapter's weights into a slot, replacing what was there."""

    def clear(self, slot: int) -> None:
        """Zeroes a slot so it adds nothing."""


LoadEvent = Callable[[str, float, bool], None]  # (tier, seconds, is_ok)


class AdapterCache:
    """Device slots, a host LRU of `max_host` adapters, and background loads from source."""

    def __init__(self, slots: DeviceSlots, *, max_host: int, load: Callable[[AdapterSource], Any],
                 running_keys: Callable[[], Iterable[Hashable]] = tuple,
                 on_load: LoadEvent | None = None, on_evict: Callable[[str], None] | None = None,
                 num_load_threads: int = 2):
        if max_host < 1:
            raise ValueError("max_cpu_loras must be at least 1")
        self._slots = slots
        self._slot_keys: list[str | None] = [None] * slots.num_slots
        self._slot_used: list[float] = [0.0] * slots.num_slots
        self._max_host = max_host
        self._host: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._sources: dict[str, AdapterSource] = {}
        self._loading: dict[str, concurrent.futures.Future] = {}
        self._failures: dict[str, str] = {}
        self._draining: str | None = None  # see can_admit
        self._lock = threading.Lock()
        self._load = load
        self._running_keys = running_keys
        self._on_load = on_load or (lambda tier, seconds, is_ok: None)
        self._on_evict = on_evict or (lambda tier: None)
        self._pool = concurrent.futures.ThreadPoolExecutor(num_load_threads, "adapter-load")

    @property
    def slots(self) -> DeviceSlots:
        """The device slots this cache fills."""
        return self._slots

    @property
    def max_loras(self) -> int:
        """Distinct adapters one step may use: the number of device slots."""
        return self._slots.num_slots

    def add_source(self, source: AdapterSource) -> None:
        """Makes a version loadable by digest (the cache loads it on first use)."""
        self._sources[source.digest] = source
        with self._lock:
            self._failures.pop(source.digest, None)

    # -- the scheduler's gate (engine thread) ------------------------------------------

    def is_ready(self, key: Hashable) -> bool:
        """True when `key` is in a device slot, installing it from host if a slot frees."""
        slot = self.slot_of(key)
        if slot is not None:
            self._slot_used[slot] = time.monotonic()
            return True
        return self.try_install(key)

    def request_load(self, key: Hashable) -> None:
        """Starts a background load from source into host memory, unless under way."""
        with self._lock:
            if key in self._host or key in self._loading or key in self._failures:
                return
            source = self._sources.get(key)
            if source is None:
                self._failures[key] = f"adapter {key} is not registered on this worker"
                return
            self._loading[key] = self._pool.submit(self._load_into_host, source)

    # -- tiers ----------------------------------------------------------------------

    def slot_of(self, key: Hashable) -> int | None:
        """The device slot holding `key`, if any."""
        try:
            return self._slot_keys.index(key)
        except ValueError:
            return None

    def load_host(self, source: AdapterSource) -> Any:
        """Loads a version into host memory now (blocking; call off the engine thread)."""
        self.add_source(source)
        with self._lock:
            adapter = self._host.get(source.digest)
        return adapter if adapter is not None else self._load_into_host(source)

    def put_host(self, source: AdapterSource, adapter: Any) -> None:
        """Adds an adapter the caller already loaded (and checked) to the host tier."""
        self.add_source(source)
        with self._lock:
            self._host[source.digest] = adapter
            self._host.move_to_end(source.digest)
            self._trim_host()

    def try_install(self, key: Hashable) -> bool:
        """Copies `key` from host into a free or evictable device slot; False if neither."""
        with self._lock:
            adapter = self._host.get(key)
            if adapter is not None:
                self._host.move_to_end(key)
        if adapter is None:
            return False
        slot = self._free_slot()
        if slot is None:
            self._start_draining()
            return False
        started = time.monotonic()
        self._release_slot(slot)
        self._slots.write(slot, adapter)
        self._slot_keys[slot], self._slot_used[slot] = key, time.monotonic()
        self._draining = None
        self._on_load("device", time.monotonic() - started, True)
        return True

    def can_admit(self, key: Hashable) -> bool:
        """False for new requests of the adapter whose slot is draining, while it still
        has running requests; its running requests go on."""
        return key != self._draining or key not in set(self._running_keys())

    def _start_draining(self) -> None:
        """Every slot is pinned and an adapter waits: stop admitting new requests to the
        least recently used slot, so it empties and the waiting adapter gets it."""
        if self._draining is not None and self.slot_of(self._draining) is not None:
            return
        held = [i for i, k in enumerate(self._slot_keys) if k is not None]
        if held:
            self._draining = self._slot_keys[min(held, key=self._slot_used.__getitem__)]

    def _free_slot(self) -> int | None:
        """An empty slot, else the least recently used one no running request pins."""
        if None in self._slot_keys:
            return self._slot_keys.index(None)
        pinned = set(self._running_keys())
        candidates = [i for i, k in enumerate(self._slot_keys) if k not in pinned]
        return min(candidates, key=self._slot_used.__getitem__) if candidates else None

    def _release_slot(self, slot: int) -> None:
        if self._slot_keys[slot] is not None:
            self._slot_keys[slot] = None
            self._on_evict("device")

    def evict(self, key: Hashable, *, keep_host: bool) -> bool:
        """Drops `key` from its device slot (and from host unless keep_host). Refuses
        (returns False) while a running request uses it."""
        if key in set(self._running_keys()):
            return False
        slot = self.slot_of(key)
        if slot is not None:
            self._release_slot(slot)
            self._slots.clear(slot)
        if not keep_host:
            with self._lock:
                if self._host.pop(key, None) is not None:
                    self._on_evict("host")
                self._sources.pop(key, None)
        return True

    def _load_into_host(self, source: AdapterSource) -> Any:
        started = time.monotonic()
        try:
            adapter = self._load(source)
            if adapter.digest != source.digest:
                raise ValueError(
                    f"{source.label}: weights at {source.source_uri} have digest "
                    f"{adapter.digest[:12]}, expected {source.digest[:12]}")
        except Exception as exc:
            with self._lock:
                self._failures[source.digest] = str(exc)
                self._loading.pop(source.digest, None)
            self._on_load("host", time.monotonic() - started, False)
            raise
        with self._lock:
            self._host[source.digest] = adapter
            self._host.move_to_end(source.digest)
            self._loading.pop(source.digest, None)
            self._trim_host()
        self._on_load("host", time.monotonic() - started, True)
        return adapter

    def _trim_host(self) -> None:
        while len(self._host) > self._max_host:
            self._host.popitem(last=False)
            self._on_evict("host")

    # -- reports --------------------------------------------------------------------

    def take_failures(self) -> dict[str, str]:
        """Background load failures since the last call, by digest (then retried on use)."""
        with self._lock:
            failures, self._failures = self._failures, {}
        return failures

    def tier_of(self, key: Hashable) -> str | None:
        """"device", "host", or None when only the source has it."""
        if self.slot_of(key) is not None:
            return "device"
        with self._lock:
            return "host" if key in self._host else None

    def tiers(self) -> dict[str, str]:
        """The tier of every adapter held above the source: "device" or "host"."""
        with self._lock:
            found = dict.fromkeys(self._host, "host")
        found.update((k, "device") for k in self._slot_keys if k is not None)
        return found

    def counts(self) -> dict[str, int]:
        """Adapters per tier (a device-resident adapter may also have a host copy)."""
        with self._lock:
            num_host = len(self._host)
        return {"device": sum(k is not None for k in self._slot_keys), "host": num_host}

    def close(self) -> None:
        """Stops the load threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
