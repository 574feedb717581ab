"""The audit trail: every admin change recorded in etcd in the same transaction as the
change itself, with who asked, what, on what, when, and how it ended.

A servicer method marked `@audited(action, target)` opens an audit scope (a context
variable); the store's `commit` adds the scope's entry to the first transaction that
succeeds inside it, so the entry exists exactly when the change does. A change that is
refused (no transaction succeeded) is recorded on its own, with the refusal as result.

Keys: `audit/<unix nanoseconds:020d>-<random>` under the root, values AuditEntry.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from lorafleet.control.v1 import access_service_pb2 as access_pb
from lorafleet.controlplane.transactions import Put
from lorafleet.runtime.auth import current_principal

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Scope:
    entry: access_pb.AuditEntry
    key: str
    is_recorded: bool = False


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "lorafleet_audit", default=None)


def audit_key(root: str, nanoseconds: int) -> str:
    """Key of an audit entry made at `nanoseconds` (unique by a random suffix)."""
    return f"{root}audit/{nanoseconds:020d}-{secrets.token_hex(4)}"


def pending_changes() -> list[Put]:
    """The transaction change that records the open audit scope's entry (none outside a
    scope, or once recorded). The store's `commit` calls this."""
    scope = _SCOPE.get()
    if scope is None or scope.is_recorded:
        return []
    return [Put(scope.key, scope.entry)]


def note_committed() -> None:
    """Marks the open scope's entry as written (its transaction succeeded)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.is_recorded = True


def name_target(target: str) -> None:
    """Replaces the open scope's target, for a change whose target is known only once it
    is made (the id of a new key), before its transaction."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.entry.target = target[:256]


def _new_scope(root: str, action: str, target: str) -> _Scope:
    stamp = timestamp_pb2.Timestamp()
    nanoseconds = time.time_ns()
    stamp.FromNanoseconds(nanoseconds)
    principal = current_principal()
    who = principal.describe() if principal is not None else "anonymous (auth off)"
    entry = access_pb.AuditEntry(time=stamp, principal=who, action=action,
                                 target=target[:256], result="ok")
    return _Scope(entry, audit_key(root, nanoseconds))


def audited(action: str, target: Callable[[object], str]):
    """Decorates a servicer method (whose `self.store` is the EtcdStore) so the change it
    makes is recorded; `target(request)` names what it changes."""

    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            scope = _new_scope(self.store.keys.root, action, target(request))
            token = _SCOPE.set(scope)
            try:
                return await method(self, request, context)
            except Exception as error:
                if not scope.is_recorded:
                    scope.entry.result = _result_of(error)
                    await _record_alone(self.store, scope)
                raise
            finally:
                _SCOPE.reset(token)

        return wrapper

    return decorate


def _result_of(error: Exception) -> str:
    return f"refused: {type(error).__name__}: {' '.join(str(error).split())[:200]}"


async def _record_alone(store, scope: _Scope) -> None:
    try:
        await store.put(scope.key, scope.entry.SerializeToString())
    except Exception:  # noqa: BLE001 - a refusal's entry must not hide the refusal
        log.exception("could not record the audit entry of a refused %s", scope.entry.action)


async def list_entries(store, since_nanoseconds: int = 0) -> list[access_pb.AuditEntry]:
    """Entries at or after `since_nanoseconds`, oldest first."""
    prefix = f"{store.keys.root}audit/"
    items, _ = await store.get_prefix(prefix)
    first = f"{prefix}{since_nanoseconds:020d}"
    return [access_pb.AuditEntry.FromString(items[key]) for key in sorted(items)
            if key >= first]
