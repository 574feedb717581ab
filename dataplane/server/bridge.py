"""Runs the engine on its own thread and streams its outputs to asyncio callers.

The engine is synchronous and single-threaded: every call into it (add, abort, adapter
changes) runs on the engine thread, between steps, so nothing needs a lock. asyncio code
talks to it through `call()` (run a function there, await the result) and `stream()`
(submit a request, iterate its outputs; leaving the iteration early — cancel, disconnect,
deadline — aborts the request on the engine thread at once). Everything else reads the
`snapshot` the engine thread publishes; nobody peeks at the engine from another thread.

A caller can never stop the loop: a command whose caller already left is skipped, and
output delivery to a closed event loop is dropped. If the loop dies anyway (a bug), every
stream ends with `EngineDead`, later calls fail at once, and `on_fatal` is called so the
server can report NOT_SERVING and exit for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

_IDLE_WAIT_SECONDS = 0.05


class EngineStepError(RuntimeError):
    """The engine failed a step; the requests in flight were failed with it."""


class EngineDead(RuntimeError):
    """The engine loop has stopped; this worker can no longer generate."""


class EngineBridge:
    """Owns the engine thread. `engine` needs add_request/abort/step/has_unfinished;
    `take_snapshot(engine)` builds what other threads may read (see `snapshot`)."""

    def __init__(self, engine: Any, *, take_snapshot: Callable[[Any], Any] = lambda e: None,
                 on_fatal: Callable[[BaseException], None] = lambda exc: None,
                 name: str = "lorafleet-engine"):
        self.engine = engine
        self._take_snapshot = take_snapshot
        self._on_fatal = on_fatal
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failure: BaseException | None = None
        self.snapshot = take_snapshot(engine)

    @property
    def is_alive(self) -> bool:
        """False once the loop has died (it is never restarted)."""
        return self.failure is None

    def start(self) -> None:
        """Starts the engine thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the engine thread after its current step."""
        self._stopping.set()
        self._commands.put(None)
        self._thread.join(timeout)

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """Runs `fn(engine)` on the engine thread between steps and returns its result."""
        self._check_alive()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, future))
        if self.failure is not None:  # died while we queued: nobody will run it
            _try_fail(future)
        return await asyncio.wrap_future(future)

    async def stream(self, request_id: str, add: Callable[[Any], Any]) -> AsyncIterator[Any]:
        """Adds a request with `add(engine)` and yields its outputs until it finishes.

        `add` may raise (a bad request): the error reaches the caller and nothing is left
        behind. Leaving the loop before the request finishes aborts it.
        """
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        finished = False
        try:
            await self.call(add)
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.is_finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished and self.is_alive:
                self._commands.put((lambda eng: eng.abort(request_id), None))

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise EngineDead(f"the engine loop stopped: {self.failure!r}")

    # -- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                busy = self.engine.has_unfinished()
                self._run_queued_commands(block=not busy)
                if self._stopping.is_set():
                    break
                if self.engine.has_unfinished():
                    self._step()
        except BaseException as exc:  # a bug in the loop itself: report it, never hide it
            self._die(exc)

    def _run_queued_commands(self, *, block: bool) -> None:
        """Runs queued commands; waits briefly for one when the engine is idle."""
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_SECONDS) if block \
                else self._commands.get_nowait()
        except queue.Empty:
            if block:  # idle: background adapter loads may have changed the tiers
                self._publish_snapshot()
            return
        while command is not None:  # None is stop()'s wake-up
            self._run_command(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _run_command(self, fn: Callable, future: concurrent.futures.Future | None) -> None:
        if future is not None and not future.set_running_or_notify_cancel():
            return  # the caller left before its turn: nothing to do, nobody to answer
        try:
            result = fn(self.engine)
        except Exception as exc:  # reported to the caller that asked
            if future is not None:
                future.set_exception(exc)
            else:
                log.exception("engine command failed")
            return
        if future is not None:
            self._publish_snapshot()  # the caller may read what it changed
            future.set_result(result)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the requests in flight")
            self._fail_all(EngineStepError(f"engine step failed: {exc}"))
            return
        self._publish_snapshot()  # before the outputs: a caller never reads an older state
        self._deliver([(output.request_id, output) for output in outputs])

    def _deliver(self, items: list[tuple[str, Any]]) -> None:
        """Hands outputs to their streams: one wake-up per event loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request_id, item in items:
            target = self._streams.get(request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], item))
        for loop, batch in by_loop.items():
            # A closed event loop raises RuntimeError: its callers are gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, batch)

    def _publish_snapshot(self) -> None:
        self.snapshot = self._take_snapshot(self.engine)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._streams):
            self._run_command(lambda eng, rid=request_id: eng.abort(rid), None)
        self._deliver([(request_id, error) for request_id in list(self._streams)])

    def _die(self, exc: BaseException) -> None:
        self.failure = exc
        log.critical("the engine loop died; this worker cannot generate any more",
                     exc_info=exc)
        self._deliver([(rid, EngineDead(f"the engine loop stopped: {exc!r}"))
                       for rid in list(self._streams)])
        while True:  # answer the commands still queued
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command is not None and command[1] is not None:
                _try_fail(command[1])
        self._on_fatal(exc)


def _try_fail(future: concurrent.futures.Future) -> None:
    """Fails a queued command's future unless its caller left or someone answered it."""
    # RuntimeError: already running or done, so answered elsewhere.
    with contextlib.suppress(RuntimeError):
        if future.set_running_or_notify_cancel():
            future.set_exception(EngineDead("the engine loop stopped"))


def _put_all(batch: list[tuple[asyncio.Queue, Any]]) -> None:
    for outputs, item in batch:
        outputs.put_nowait(item)
