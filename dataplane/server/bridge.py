"""The server's side of the engine loop: named operations, streams of outputs, snapshots.

The engine loop (engine_process/loop.py) runs either in a process of its own
(process_link.py, the default) or on a thread beside the server (thread_link.py); an
`EngineLink` hides which. Everything here runs on the server's event loop, except
`_on_news`, which the link calls from its reader thread (or the engine thread) once per
batch of news and which hands each event loop its outputs with one wake-up.

asyncio code awaits named operations (`load_adapter`, `try_place_adapter`, ...) and
iterates `stream()` (adding a request is one-way); leaving a stream early (cancel,
disconnect, deadline) sends an abort at once, and `finish` ends a request the frontend
found finished (a stop string). Everything else reads `snapshot`, the engine's state as the loop last
reported it. A caller can never stop the loop. If the loop dies (a bug, or its process
is killed), every stream ends with `EngineDead`, later calls fail at once, and
`on_fatal` is called so the server can report NOT_SERVING and exit for its supervisor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from lorafleet.dataplane.engine.outputs import RequestOutput
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.engine_process.messages import (
    AdapterInfo,
    AdapterSource,
    Command,
    EngineDead,
    EngineFacts,
    MetricEvent,
    NewRequest,
    News,
    Op,
)

log = logging.getLogger(__name__)


class EngineLink(Protocol):
    """How the bridge reaches an engine loop: `facts` once built, commands out, news in."""

    facts: EngineFacts

    def start(self, on_news: Callable[[News], None],
              on_exit: Callable[[BaseException | None], None]) -> None:
        """Starts delivering news; `on_exit(error)` once the loop has ended (None: it
        stopped when asked)."""

    def send(self, command: Command) -> None:
        """Queues a command for the loop (raises OSError when the loop is gone)."""

    def stop(self, timeout: float) -> None:
        """Asks the loop to stop after its current step and waits for it."""


class EngineBridge:
    """The one interface the worker has to its engine, wherever the engine runs."""

    def __init__(self, link: EngineLink, *,
                 on_events: Callable[[tuple[MetricEvent, ...]], None] = lambda events: None,
                 on_fatal: Callable[[BaseException], None] = lambda exc: None):
        self.link = link
        self._on_events = on_events
        self._on_fatal = on_fatal
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._call_ids = itertools.count(1)
        self._lock = threading.Lock()  # _pending: the event loop and the link's thread
        self._is_stopping = False
        self.failure: BaseException | None = None
        self.snapshot = link.facts.snapshot

    @property
    def is_alive(self) -> bool:
        """False once the loop has died (it is never restarted)."""
        return self.failure is None

    def start(self) -> None:
        """Starts taking the loop's news (the loop itself may already run)."""
        self.link.start(self._on_news, self._on_exit)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the loop after its current step (blocking; call off the event loop)."""
        self._is_stopping = True
        self.link.stop(timeout)

    # -- named operations ---------------------------------------------------------------

    async def load_adapter(self, source: AdapterSource) -> AdapterInfo:
        """Loads an adapter into the engine's host tier (from its source, on a load
        thread of the engine's owner); raises the loader's error, with its type."""
        return await self._call(Op.LOAD_ADAPTER, source)

    async def try_place_adapter(self, digest: str) -> bool:
        """Copies a host-resident adapter into a free device slot now; False if none is
        free (it is placed when a request needs it)."""
        return await self._call(Op.PLACE_ADAPTER, digest)

    async def evict_adapter(self, digest: str, *, keep_host: bool) -> None:
        """Empties the adapter's device slot and, unless `keep_host`, drops it from the
        host tier; returns once done, which waits for its running requests to end (the
        engine evicts when the last one does). A caller that leaves before then (cancel,
        deadline) withdraws it: nothing is evicted."""
        call_id, future = self._send_call(Op.EVICT_ADAPTER, (digest, keep_host))
        try:
            await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            with self._lock:
                self._pending.pop(call_id, None)
            if self.is_alive:
                self._try_send(Command(Op.WITHDRAW_EVICTION, (digest, call_id)))
            raise

    async def stream(self, request: NewRequest) -> AsyncIterator[RequestOutput]:
        """Adds a request and yields its outputs until it finishes.

        Adding is one-way: a request the engine refuses ends with one final output that
        says why (FinishReason.ERROR, ErrorKind.INVALID_REQUEST). Leaving the loop before
        the request finishes aborts it, unless `finish` ended it first.
        """
        self._check_alive()
        request_id = request.request_id
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        finished = False
        try:
            if not self._try_send(Command(Op.ADD, request)):
                raise EngineDead(f"the engine loop stopped: "
                                 f"{self.failure or 'its process is gone'!r}")
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.is_finished
                yield item
        finally:
            if self._streams.pop(request_id, None) is not None and not finished:
                self._end(request_id, FinishReason.CANCELLED)

    def finish(self, request_id: str, reason: FinishReason) -> None:
        """Ends a request the frontend found finished (`reason` STOP: a stop string
        matched) before the engine did: the engine frees it; its stream yields no more,
        and the caller leaves it."""
        if self._streams.pop(request_id, None) is not None:
            self._end(request_id, reason)

    def _end(self, request_id: str, reason: FinishReason) -> None:
        if self.is_alive:
            self._try_send(Command(Op.ABORT, (request_id, reason)))

    async def _call(self, op: Op, arg: Any) -> Any:
        """Sends a command and awaits its answer."""
        _, future = self._send_call(op, arg)
        return await asyncio.wrap_future(future)

    def _send_call(self, op: Op, arg: Any) -> tuple[int, concurrent.futures.Future]:
        """Sends a command whose answer will settle the returned future."""
        self._check_alive()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            call_id = next(self._call_ids)
            self._pending[call_id] = future
        if not self._try_send(Command(op, arg, call_id)) or self.failure is not None:
            self._answer(call_id, error=EngineDead(
                f"the engine loop stopped: {self.failure or 'its process is gone'!r}"))
        return call_id, future

    def _try_send(self, command: Command) -> bool:
        try:
            self.link.send(command)
        except OSError:  # the loop's process is gone; the reader reports its death
            return False
        return True

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise EngineDead(f"the engine loop stopped: {self.failure!r}")

    # -- news, from the link's thread ---------------------------------------------------

    def _on_news(self, news: News) -> None:
        if news.snapshot is not None:  # first: whoever wakes reads this state or newer
            self.snapshot = news.snapshot
        if news.events:
            self._on_events(news.events)
        for answer in news.answers:
            error = answer.error.rebuild() if answer.error is not None else None
            self._answer(answer.call_id, answer.result, error)
        items = [(o.request_id, o) for o in news.outputs]
        items += [(request_id, error.rebuild()) for request_id, error in news.failures]
        if items:
            self._deliver(items)

    def _answer(self, call_id: int, result: Any = None,
                error: BaseException | None = None) -> None:
        with self._lock:
            future = self._pending.pop(call_id, None)
        if future is None or not future.set_running_or_notify_cancel():
            return  # the caller left before the answer: nobody to tell
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _deliver(self, items: list[tuple[str, Any]]) -> None:
        """Hands outputs to their streams: one wake-up per event loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request_id, item in items:
            target = self._streams.get(request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], item))
        for loop, batch in by_loop.items():
            # A closed event loop raises RuntimeError: its callers are gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, batch)

    def _on_exit(self, error: BaseException | None) -> None:
        if error is None and self._is_stopping:
            return
        self._die(error or EngineDead("the engine loop ended unasked"))

    def _die(self, exc: BaseException) -> None:
        self.failure = exc
        log.critical("the engine loop died; this worker cannot generate any more",
                     exc_info=exc)
        self._on_fatal(exc)  # first: health turns NOT_SERVING as early as it can
        dead = EngineDead(f"the engine loop stopped: {exc!r}")
        self._deliver([(request_id, dead) for request_id in list(self._streams)])
        with self._lock:
            call_ids = list(self._pending)
        for call_id in call_ids:  # answer the commands still waiting
            self._answer(call_id, error=dead)


def _put_all(batch: list[tuple[asyncio.Queue, Any]]) -> None:
    for outputs, item in batch:
        outputs.put_nowait(item)
