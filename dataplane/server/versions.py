"""Adapter names and versions known to one worker, and the requests pinned to each.

A request resolves "tenant/name" (the name's default version) or "tenant/name@N" once, at
admission, and pins that version until it ends. Evicting a version first stops new
requests from resolving to it, then waits until its pins reach zero. Runs on the asyncio
loop of the worker's gRPC server: no locks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time

from lorafleet.runtime.auth.principals import can_see
from lorafleet.runtime.names import parse_ref, shorten, version_label


class VersionState(enum.Enum):
    """Where a version's most recent load stands."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class UnknownAdapter(LookupError):
    """No such adapter name or version on this worker."""

    status_code_name = "NOT_FOUND"


class AdapterUnavailable(RuntimeError):
    """The version exists but cannot take new requests now (being evicted)."""

    status_code_name = "UNAVAILABLE"


class AdapterFailed(AdapterUnavailable):
    """The version's load failed (invalid, or made for another base model)."""

    status_code_name = "FAILED_PRECONDITION"


class VersionTaken(RuntimeError):
    """name@version is being loaded, or exists, with other weights: versions are immutable."""

    status_code_name = "ALREADY_EXISTS"


@dataclasses.dataclass(eq=False)
class VersionEntry:
    """One adapter version on this worker."""

    name: str
    version: int
    digest: str
    source_uri: str
    rank: int = 0
    size_bytes: int = 0
    state: VersionState = VersionState.LOADING
    error: str = ""
    num_pins: int = 0
    last_used: float | None = None
    is_evicting: bool = False
    _unpinned: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, repr=False)

    @property
    def label(self) -> str:
        """"tenant/name@N"."""
        return version_label(self.name, self.version)


class VersionTable:
    """Every adapter version this worker knows, and which one a bare name means."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], VersionEntry] = {}
        self._defaults: dict[str, int] = {}

    def entries(self) -> list[VersionEntry]:
        """All versions, by name then version."""
        return [self._entries[k] for k in sorted(self._entries)]

    def get(self, name: str, version: int) -> VersionEntry | None:
        """The entry for name@version, if known."""
        return self._entries.get((name, version))

    def reserve(self, name: str, version: int, source_uri: str) -> VersionEntry | None:
        """Claims name@version (0: the next number) for a load; returns the LOADING entry,
        or None when that exact version from that source is already ready. Raises
        VersionTaken when another load holds it or it exists with another source."""
        version = version or self.next_version(name)
        existing = self._entries.get((name, version))
        if existing is not None and existing.state is not VersionState.FAILED:
            if existing.source_uri != source_uri or existing.state is VersionState.LOADING:
                what = "is being loaded" if existing.state is VersionState.LOADING \
                    else "already exists"
                raise VersionTaken(f"{existing.label} {what} from another source; "
                                   "versions are immutable")
            return None
        entry = VersionEntry(name, version, "", source_uri, state=VersionState.LOADING)
        self._entries[(name, version)] = entry
        return entry

    def next_version(self, name: str) -> int:
        """One past the highest version of `name` seen here."""
        return max((v for n, v in self._entries if n == name), default=0) + 1

    def is_default(self, entry: VersionEntry) -> bool:
        """Whether `entry` serves the bare name."""
        return self._defaults.get(entry.name) == entry.version

    def add(self, entry: VersionEntry, *, make_default: bool) -> VersionEntry:
        """Records a version; the first version of a name (or the first to load after a
        failed one) becomes its default."""
        self._entries[(entry.name, entry.version)] = entry
        current = self._entries.get((entry.name, self._defaults.get(entry.name, 0)))
        if make_default or current is None or current.state is VersionState.FAILED:
            self._defaults[entry.name] = entry.version
        return entry

    def resolve(self, ref: str) -> VersionEntry:
        """The version `ref` names, ready for a new request."""
        name, version = parse_ref(ref)
        if version is None:
            version = self._defaults.get(name)
        entry = self._entries.get((name, version)) if version is not None else None
        # Another tenant's adapter reads exactly like one that is not here.
        if entry is None or not can_see(name):
            raise UnknownAdapter(f"adapter {shorten(ref)} is not loaded on this worker")
        if entry.state is VersionState.LOADING:
            raise AdapterUnavailable(f"adapter {entry.label} is still loading")
        if entry.is_evicting:
            raise AdapterUnavailable(f"adapter {entry.label} is being evicted")
        if entry.state is VersionState.FAILED:
            raise AdapterFailed(f"adapter {entry.label} failed to load: {entry.error}")
        return entry

    def acquire(self, entry: VersionEntry) -> None:
        """Pins `entry` for one request."""
        entry.num_pins += 1
        entry.last_used = time.time()
        entry._unpinned.clear()

    def release(self, entry: VersionEntry) -> None:
        """Unpins `entry` for one finished request."""
        entry.num_pins -= 1
        entry.last_used = time.time()
        if entry.num_pins == 0:
            entry._unpinned.set()

    async def retire(self, entry: VersionEntry, timeout: float | None) -> bool:
        """Stops new requests for `entry` and waits for its pins; False on timeout. If the
        wait ends any other way than retired (timeout, the caller cancelled), the version
        takes requests again: an eviction that did not happen changed nothing."""
        entry.is_evicting = True
        is_retired = False
        try:
            if entry.num_pins:
                await asyncio.wait_for(entry._unpinned.wait(), timeout)
            is_retired = True
        except asyncio.TimeoutError:
            pass
        finally:
            entry.is_evicting = is_retired
        return is_retired

    def remove(self, entry: VersionEntry) -> None:
        """Forgets a drained version; the bare name falls back to the newest remaining."""
        self._entries.pop((entry.name, entry.version), None)
        if self._defaults.get(entry.name) == entry.version:
            remaining = [v for n, v in self._entries if n == entry.name]
            if remaining:
                self._defaults[entry.name] = max(remaining)
            else:
                del self._defaults[entry.name]
