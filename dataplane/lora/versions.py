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
import re
import time

_PART = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME = re.compile(rf"^{_PART}/{_PART}$")
_REF = re.compile(rf"^(?P<name>{_PART}/{_PART})(?:@(?P<version>[1-9][0-9]{{0,8}}))?$")


class VersionState(enum.Enum):
    """Where a version's most recent load stands."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class UnknownAdapter(LookupError):
    """No such adapter name or version on this worker."""


class AdapterUnavailable(RuntimeError):
    """The version exists but cannot take new requests now (being evicted)."""


class AdapterFailed(AdapterUnavailable):
    """The version's load failed (invalid, or made for another base model)."""


def parse_name(name: str) -> str:
    """Checks an adapter name ("tenant/name"); raises ValueError saying what is wrong."""
    if not _NAME.match(name):
        raise ValueError(
            f"adapter name {name!r} must be 'tenant/name': lowercase letters, digits, "
            "'.', '_' or '-', each part 1-63 characters")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Splits "tenant/name[@N]" into (name, version or None); raises ValueError."""
    match = _REF.match(ref)
    if not match:
        raise ValueError(f"adapter {ref!r} must be 'tenant/name' or 'tenant/name@N'")
    version = match.group("version")
    return match.group("name"), int(version) if version else None


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
        return f"{self.name}@{self.version}"


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
        if entry is None:
            raise UnknownAdapter(f"adapter {ref!r} is not loaded on this worker")
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

    async def drain(self, entry: VersionEntry, timeout: float | None) -> bool:
        """Stops new requests for `entry` and waits for its pins; False on timeout (the
        version then takes requests again)."""
        entry.is_evicting = True
        if entry.num_pins == 0:
            return True
        try:
            await asyncio.wait_for(entry._unpinned.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            entry.is_evicting = False
            return False

    def remove(self, entry: VersionEntry) -> None:
        """Forgets a drained version; the bare name falls back to the newest remaining."""
        self._entries.pop((entry.name, entry.version), None)
        if self._defaults.get(entry.name) == entry.version:
            remaining = [v for n, v in self._entries if n == entry.name]
            if remaining:
                self._defaults[entry.name] = max(remaining)
            else:
                del self._defaults[entry.name]
