"""Where a server finds key records: in memory (the control plane's copy of etcd, tests)
or in a file of JSON lines (a single worker without etcd; a Kubernetes Secret).

A store answers `record(key_id)` from memory, so checking a request costs a dict lookup;
the file store re-reads its file when the file's mtime or size changes (checked at most
every 0.2 s), so deleting a line revokes that key within a second.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Iterable
from typing import Protocol

from lorafleet.runtime.auth.keys import InvalidKeyRecord, KeyRecord

log = logging.getLogger(__name__)
_STAT_INTERVAL_SECONDS = 0.2


class KeyStore(Protocol):
    """Answers which record has a key id (None: no such key, or revoked)."""

    def record(self, key_id: str) -> KeyRecord | None:
        """The record of `key_id`, or None."""


class MemoryKeyStore:
    """Records held in a dict; whoever owns it keeps it current."""

    def __init__(self, records: Iterable[KeyRecord] = ()):
        self.records = {r.key_id: r for r in records}

    def record(self, key_id: str) -> KeyRecord | None:
        """The record of `key_id`, or None."""
        return self.records.get(key_id)

    def put(self, record: KeyRecord) -> None:
        """Adds or replaces a record."""
        self.records[record.key_id] = record

    def remove(self, key_id: str) -> None:
        """Forgets a record (revocation)."""
        self.records.pop(key_id, None)


class ChainKeyStore:
    """Several stores asked in order (the control plane: its bootstrap file, then etcd)."""

    def __init__(self, *stores: KeyStore):
        self.stores = stores

    def record(self, key_id: str) -> KeyRecord | None:
        """The first store's record of `key_id`, or None."""
        for store in self.stores:
            found = store.record(key_id)
            if found is not None:
                return found
        return None


def read_key_file(path: pathlib.Path) -> dict[str, KeyRecord]:
    """Records of a key file (blank lines and '#' comments skipped); OSError when it cannot
    be read, InvalidKeyRecord naming the line when one is malformed."""
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            record = KeyRecord.from_json(line)
        except InvalidKeyRecord as error:
            raise InvalidKeyRecord(f"{path}:{number}: {error}") from None
        records[record.key_id] = record
    return records


class FileKeyStore:
    """Records from a file of JSON lines, re-read when the file changes. A file that
    becomes unreadable or malformed empties the store (fail closed) until it is fixed."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._records = read_key_file(self.path)  # start-up: errors reach the operator
        self._signature = self._stat()
        self._checked_at = time.monotonic()

    def record(self, key_id: str) -> KeyRecord | None:
        """The record of `key_id` as the file says now, or None."""
        return self.records().get(key_id)

    def records(self) -> dict[str, KeyRecord]:
        """Every record as the file says now, by key id."""
        now = time.monotonic()
        if now - self._checked_at >= _STAT_INTERVAL_SECONDS:
            self._checked_at = now
            self._reload_if_changed()
        return self._records

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._records = read_key_file(self.path)
        except (OSError, InvalidKeyRecord) as error:
            log.error("key file unusable, refusing every key until it is fixed: %s", error)
            self._records = {}
