"""Typed access to etcd (aetcd): reads, one-transaction writes, leases and watches.

The only control-plane module that speaks aetcd: others describe writes with the typed
conditions and changes of controlplane/transactions.py, and read `Entry`s and snapshots.

Every call rides out an etcd restart: connection errors are retried with exponential
backoff until `RetryPolicy.give_up_seconds`, then StoreUnavailable is raised. The gRPC
channel reconnects on its own; short reconnect backoffs make recovery quick.
`with_retry()` gives request paths (admin RPCs) a view with a short give-up, so a caller
hears UNAVAILABLE in seconds instead of waiting out its deadline while etcd is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import aetcd
import aetcd.exceptions
import aetcd.utils

from lorafleet.controlplane import audit
from lorafleet.controlplane import transactions as txn
from lorafleet.controlplane.metrics import ControlPlaneMetrics
from lorafleet.controlplane.schema import DEFAULT_ROOT, Keys, Snapshot, decode_into
from lorafleet.controlplane.transactions import Change, Condition, Entry

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that mean "etcd is not reachable right now", worth retrying.
RETRYABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
    aetcd.exceptions.WatchTimeoutError,
)


class StoreUnavailable(RuntimeError):
    """etcd did not answer within the retry budget."""

    status_code_name = "UNAVAILABLE"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for etcd calls."""

    first_delay: float = 0.05
    max_delay: float = 1.0
    give_up_seconds: float = 30.0
    call_timeout_seconds: float = 5.0

    def delays(self):
        """Backoff delays, doubling up to max_delay."""
        delay = self.first_delay
        while True:
            yield delay
            delay = min(delay * 2, self.max_delay)


def parse_endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an etcd URL such as http://127.0.0.1:2379 or host:port."""
    parsed = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    if not parsed.hostname:
        raise ValueError(f"etcd URL {url!r} has no host; expected http://host:port")
    return parsed.hostname, parsed.port or 2379


class EtcdStore:
    """One aetcd client plus the schema's keys; every method retries connection errors."""

    def __init__(self, url: str, root: str = DEFAULT_ROOT, retry: RetryPolicy | None = None,
                 metrics: ControlPlaneMetrics | None = None):
        if not root.startswith("/") or not root.endswith("/"):
            raise ValueError(f"etcd root {root!r} must start and end with '/'")
        self.keys = Keys(root)
        self.retry = retry or RetryPolicy()
        self.metrics = metrics or ControlPlaneMetrics()  # request latency and errors
        host, port = parse_endpoint(url)
        self.client = aetcd.Client(
            host=host,
            port=port,
            timeout=self.retry.call_timeout_seconds,
            options={
                "grpc.initial_reconnect_backoff_ms": 100,
                "grpc.min_reconnect_backoff_ms": 100,
                "grpc.max_reconnect_backoff_ms": 1000,
            },
        )

    def with_retry(self, retry: RetryPolicy) -> EtcdStore:
        """A view sharing this store's client, keys and metrics, retrying by `retry`."""
        view = copy.copy(self)
        view.retry = retry
        return view

    async def close(self, timeout_seconds: float = 5.0) -> None:
        """Closes the client and its watches, giving up after `timeout_seconds`."""
        try:
            await asyncio.wait_for(self.client.close(), timeout_seconds)
        except asyncio.TimeoutError:
            # aetcd's watcher can block on a full request queue when its stream is gone;
            # the process is shutting down, so leaving the channel to the collector is fine.
            log.warning("etcd client did not close within %.1fs", timeout_seconds)

    async def call(self, fn: Callable[[], Awaitable[T]], op: str = "get") -> T:
        """Runs `fn()` (one etcd call, `op` in metrics), retrying connection errors with
        backoff; StoreUnavailable once `retry.give_up_seconds` have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry.give_up_seconds
        delays = self.retry.delays()
        while True:
            try:
                with self.metrics.etcd_request(op):
                    # Bounded by the give-up time too: a call to an etcd that accepted the
                    # connection and then stopped answering must not outlast it.
                    return await within(fn(), max(deadline - loop.time(), 0.01))
            except (*RETRYABLE, asyncio.TimeoutError) as error:
                delay = next(delays)
                if loop.time() + delay > deadline:
                    raise StoreUnavailable(f"etcd unavailable: {error!r}") from error
                log.info("etcd call failed (%r); retrying in %.2fs", error, delay)
            await asyncio.sleep(delay)

    async def get(self, key: str) -> Entry | None:
        """What `key` holds, or None when absent."""
        found = await self.call(lambda: self.client.get(key.encode()))
        return None if found is None else Entry(found.value, found.mod_revision, found.lease)

    async def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """Every key under `prefix` with its value, and the revision they were read at."""
        found = await self.call(lambda: self.client.get_prefix(prefix.encode()), "range")
        return {kv.key.decode(): kv.value for kv in found}, found.header.revision

    async def snapshot(self) -> Snapshot:
        """Everything under the root, decoded, at one revision."""
        items, revision = await self.get_prefix(self.keys.root)
        return decode_into(Snapshot(revision=revision), self.keys.root, items)

    async def commit(self, conditions: Sequence[Condition], changes: Sequence[Change]) -> bool:
        """Applies `changes` in one transaction if every condition holds; returns whether.
        Inside an audit scope the first successful transaction also records its entry."""
        compare = [self._compare(c) for c in conditions]
        success = [self._operation(c) for c in (*changes, *audit.pending_changes())]
        succeeded, _ = await self.call(
            lambda: self.client.transaction(compare=compare, success=success, failure=[]),
            "txn",
        )
        if succeeded:
            audit.note_committed()
        return succeeded

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        """Writes `value` at `key` outside any transaction (and audit scope)."""
        await self.call(lambda: self.client.put(key.encode(), value, lease=lease or None), "put")

    async def try_put(self, key: str, value: bytes, lease: int) -> bool:
        """`put` on a lease; False when etcd refuses it (the lease expired meanwhile)."""
        try:
            await self.put(key, value, lease)
        except aetcd.exceptions.ClientError:
            return False
        return True

    def _compare(self, condition: Condition):
        ops, key = self.client.transactions, condition.key.encode()
        match condition:
            case txn.Absent() | txn.Unchanged(entry=None):
                return ops.create(key) == 0
            case txn.Exists():
                return ops.version(key) > 0
            case txn.Unchanged(entry=entry):
                return ops.mod(key) == entry.mod_revision
            case txn.UnchangedSince(revision=revision):
                return ops.mod(key) < revision + 1
            case txn.HoldsValue(value=value):
                return ops.value(key) == value
        raise TypeError(f"not a transaction condition: {condition!r}")

    def _operation(self, change: Change):
        ops = self.client.transactions
        match change:
            case txn.Put(key=key, lease=lease):
                return ops.put(key.encode(), change.value_bytes(), lease=lease or None)
            case txn.Delete(key=key):
                return ops.delete(key.encode())
            case txn.DeletePrefix(prefix=prefix):
                return ops.delete(prefix.encode(),
                                  range_end=aetcd.utils.prefix_range_end(prefix.encode()))
        raise TypeError(f"not a transaction change: {change!r}")

    async def grant_lease(self, ttl_seconds: int) -> int:
        """A new lease's id."""
        lease = await self.call(lambda: self.client.lease(ttl_seconds), "lease_grant")
        return lease.id

    async def try_refresh_lease(self, lease_id: int) -> bool:
        """Renews a lease; False when it has already expired."""
        reply = await self.call(lambda: self.client.refresh_lease(lease_id), "lease_keepalive")
        return reply is not None and reply.TTL > 0

    async def revoke_lease(self, lease_id: int) -> None:
        """Ends a lease now, deleting its keys."""
        await self.call(lambda: self.client.revoke_lease(lease_id), "lease_revoke")

    async def watch_snapshots(self) -> AsyncIterator[Snapshot]:
        """Snapshots of the root: one at a listed revision, then one per change after it.

        Lists at revision R, watches from R + 1, so no change falls in between. When the
        watch breaks (etcd restarted, compaction), it lists again after a backoff.
        """
        delays = self.retry.delays()
        while True:
            try:
                items, listed_at = await self.get_prefix(self.keys.root)
                yield decode_into(Snapshot(revision=listed_at), self.keys.root, items)
                async for revision in self._watch_changes(items, listed_at + 1):
                    delays = self.retry.delays()
                    yield decode_into(Snapshot(revision=revision), self.keys.root, items)
            except (*RETRYABLE, StoreUnavailable, aetcd.exceptions.ClientError) as error:
                delay = next(delays)
                log.info("etcd watch broke (%s); listing again in %.2fs", error, delay)
                await asyncio.sleep(delay)

    async def _watch_changes(self, items: dict[str, bytes], start: int) -> AsyncIterator[int]:
        """Applies watched events to `items`; yields the revision after each batch."""
        prefix = self.keys.root.encode()
        watch = await self.client.watch(
            prefix, range_end=aetcd.utils.prefix_range_end(prefix), start_revision=start
        )
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(_pump(watch, queue))
        try:
            while True:
                # One etcd transaction arrives as events enqueued together: drain them
                # all so a snapshot never shows half a transaction.
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                yield _apply(items, batch)
        finally:
            pump.cancel()
            # The stream may be gone already (etcd restarted): nothing left to cancel.
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(watch.cancel(), 1.0)


async def within(coro, seconds: float):
    """`coro`'s result, or TimeoutError after `seconds`. Unlike asyncio.wait_for on Python
    3.11, a cancel that lands as `coro` finishes is never swallowed (that left a cancelled
    task running, and whoever cancelled it waiting for it forever)."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise asyncio.TimeoutError
    return task.result()


async def _pump(watch, queue: asyncio.Queue) -> None:
    try:
        async for event in watch:
            queue.put_nowait(event)
        queue.put_nowait(StoreUnavailable("etcd watch ended"))
    except Exception as error:  # handed to the consumer, which re-lists
        queue.put_nowait(error)


def _apply(items: dict[str, bytes], batch: list) -> int:
    revision = 0
    for event in batch:
        if isinstance(event, Exception):
            raise event
        key = event.kv.key.decode()
        if event.kind == "DELETE":
            items.pop(key, None)
        else:
            items[key] = event.kv.value
        revision = max(revision, event.kv.mod_revision)
    return revision
