"""The typed pieces of one etcd transaction: conditions that must hold, changes to apply.

Control-plane modules describe every write with these and hand it to `EtcdStore.commit`,
the one place that turns them into etcd's compares and operations (no other module
imports aetcd). Keys are the schema's strings; a value is bytes or a protobuf message,
serialized on commit. The compare-and-swap idiom is "read an `Entry`, then commit on
`Unchanged(key, entry)`": a lost race is a False from `commit`, retried from a fresh read.
"""

from __future__ import annotations

import dataclasses

from google.protobuf.message import Message

Value = bytes | Message


@dataclasses.dataclass(frozen=True)
class Entry:
    """A key's value as read, the revision that last changed it, and its lease (0: none)."""

    value: bytes
    mod_revision: int
    lease: int = 0


@dataclasses.dataclass(frozen=True)
class Absent:
    """The key does not exist (create-if-absent)."""

    key: str


@dataclasses.dataclass(frozen=True)
class Exists:
    """The key exists."""

    key: str


@dataclasses.dataclass(frozen=True)
class Unchanged:
    """The key is as `entry` read it: last changed at the entry's revision, or still
    absent when `entry` is None (it was absent when read)."""

    key: str
    entry: Entry | None


@dataclasses.dataclass(frozen=True)
class UnchangedSince:
    """Nobody changed the key after `revision` (a snapshot's); an absent key passes."""

    key: str
    revision: int


@dataclasses.dataclass(frozen=True)
class HoldsValue:
    """The key holds exactly `value` (the leader's fence: the leader key names it)."""

    key: str
    value: bytes


@dataclasses.dataclass(frozen=True)
class Put:
    """Write `value` at `key`, attached to `lease` when it is not 0 (gone with the lease)."""

    key: str
    value: Value
    lease: int = 0

    def value_bytes(self) -> bytes:
        """The value as stored."""
        return self.value if isinstance(self.value, bytes) else self.value.SerializeToString()


@dataclasses.dataclass(frozen=True)
class Delete:
    """Delete `key` (nothing happens when it is absent)."""

    key: str


@dataclasses.dataclass(frozen=True)
class DeletePrefix:
    """Delete every key under `prefix`."""

    prefix: str


Condition = Absent | Exists | Unchanged | UnchangedSince | HoldsValue
Change = Put | Delete | DeletePrefix
