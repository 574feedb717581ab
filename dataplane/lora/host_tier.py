"""The host tier: loaded adapters in host memory by digest, and background loads.

Keys are adapter digests (sha256 of the weights), never names: two versions of one name
are two keys, so a request admitted on one version can never run on the other's weights.

Threads: loads from the source run on a small thread pool and land here under a lock.
Trimming to `max_host` happens only when the scheduler asks (in the engine loop), with
the adapters of waiting and running requests kept however small the tier: an adapter is
read from its source once per wait, never again while its requests wait.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable
from typing import Any

from lorafleet.dataplane.engine_process.messages import AdapterSource
from lorafleet.dataplane.lora.load_threads import LoadThreads

log = logging.getLogger(__name__)

LoadEvent = Callable[[str, float, bool], None]  # (tier, seconds, is_ok)


class DigestMismatch(ValueError):
    """The weights at the source are not the ones the caller expected."""

    status_code_name = "FAILED_PRECONDITION"


class HostAdapters:
    """A host LRU of at least `max_host` adapters and background loads from source."""

    def __init__(self, *, max_host: int, load: Callable[[AdapterSource], Any],
                 on_load: LoadEvent | None = None, on_evict: Callable[[str], None] | None = None,
                 num_load_threads: int = 2):
        if max_host < 1:
            raise ValueError("max_cpu_loras must be at least 1")
        self._max_host = max_host
        self._host: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._sources: dict[Hashable, AdapterSource] = {}
        self._loading: set[Hashable] = set()
        self._failures: dict[Hashable, str] = {}
        self._lock = threading.Lock()
        self._load = load
        self._on_load = on_load or (lambda tier, seconds, is_ok: None)
        self._on_evict = on_evict or (lambda tier: None)
        self._pool = LoadThreads(num_load_threads, "adapter-load")

    def add_source(self, source: AdapterSource) -> None:
        """Makes a version loadable by digest (loaded on first use)."""
        with self._lock:
            self._sources[source.digest] = source
            self._failures.pop(source.digest, None)

    def put(self, source: AdapterSource, adapter: Any) -> None:
        """Adds an adapter the caller already loaded (and checked)."""
        self.add_source(source)
        with self._lock:
            self._host[source.digest] = adapter
            self._host.move_to_end(source.digest)

    def has(self, key: Hashable) -> bool:
        """True when `key` is in host memory (and marks it recently used)."""
        with self._lock:
            if key in self._host:
                self._host.move_to_end(key)
                return True
            return False

    def get(self, key: Hashable) -> Any | None:
        """The loaded adapter `key`, or None."""
        with self._lock:
            return self._host.get(key)

    def request_load(self, key: Hashable) -> None:
        """Starts a background load from source, unless loaded, loading or failed."""
        with self._lock:
            if key in self._host or key in self._loading or key in self._failures:
                return
            source = self._sources.get(key)
            if source is None:
                self._failures[key] = f"adapter {key} is not registered on this worker"
                return
            self._loading.add(key)
        self._pool.submit(self._load_quietly, source)

    def load(self, source: AdapterSource) -> Any:
        """Loads a version into host memory now (blocking; call outside the engine loop).
        With `source.digest` empty, the load learns the digest; otherwise the weights must
        have it (DigestMismatch). The one path into host memory: one digest check, one
        load metric, for LoadAdapter and background loads alike."""
        adapter = self.get(source.digest) if source.digest else None
        return adapter if adapter is not None else self._load_into_host(source)

    def trim(self, keep: Collection[Hashable]) -> None:
        """Drops least recently used adapters beyond `max_host`, never one in `keep`."""
        with self._lock:
            excess = len(self._host) - self._max_host
            for key in [k for k in self._host if k not in keep][:max(excess, 0)]:
                del self._host[key]
                self._on_evict("host")

    def drop(self, key: Hashable) -> None:
        """Forgets `key`: its host copy and its source."""
        with self._lock:
            if self._host.pop(key, None) is not None:
                self._on_evict("host")
            self._sources.pop(key, None)

    def take_failures(self) -> dict[Hashable, str]:
        """Background load failures since the last call, by digest (retried on next use)."""
        with self._lock:
            failures, self._failures = self._failures, {}
        return failures

    def held(self) -> list[Hashable]:
        """Digests in host memory, least recently used first."""
        with self._lock:
            return list(self._host)

    def close(self) -> None:
        """Stops the load threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _load_quietly(self, source: AdapterSource) -> None:
        """A background load: failures are recorded for the engine, not raised."""
        try:
            self._load_into_host(source)
        except Exception:  # noqa: BLE001 - kept in _failures with the reason
            log.info("adapter %s could not be loaded", source.label, exc_info=True)

    def _load_into_host(self, source: AdapterSource) -> Any:
        started = time.monotonic()
        try:
            adapter = self._load(source)
            if source.digest and adapter.digest != source.digest:
                raise DigestMismatch(f"{source.label}: the weights at the source have digest "
                                     f"{adapter.digest[:12]}, expected {source.digest[:12]}")
        except Exception as exc:
            with self._lock:
                if source.digest:
                    self._failures[source.digest] = str(exc)
                    self._loading.discard(source.digest)
            self._on_load("host", time.monotonic() - started, False)
            raise
        with self._lock:
            self._sources[adapter.digest] = dataclasses.replace(source, digest=adapter.digest)
            self._failures.pop(adapter.digest, None)
            self._host[adapter.digest] = adapter
            self._host.move_to_end(adapter.digest)
            self._loading.discard(adapter.digest)
        self._on_load("host", time.monotonic() - started, True)
        return adapter
