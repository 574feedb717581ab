"""Runs the engine on its own thread and streams its outputs to asyncio callers.

The engine is synchronous and single-threaded: every call into it (add, abort, adapter
changes, status reads) runs on the engine thread, between steps, so nothing needs a
lock. asyncio code talks to it through `call()` (run a function there, await the result)
and `stream()` (submit a request, iterate its outputs; leaving the iteration early —
cancel, disconnect, deadline — aborts the request on the engine thread at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

_IDLE_WAIT_SECONDS = 0.05


class EngineStepError(RuntimeError):
    """The engine failed a step; the requests in flight were failed with it."""


class EngineBridge:
    """Owns the engine thread. `engine` needs add_request/abort/step/has_unfinished;
    `before_step(engine)` runs on the engine thread before every step."""

    def __init__(self, engine: Any, *, before_step: Callable[[Any], None] | None = None,
                 name: str = "lorafleet-engine"):
        self.engine = engine
        self._before_step = before_step
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

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
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, future))
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
            if not finished:
                self._commands.put((lambda eng: eng.abort(request_id), None))

    def _run(self) -> None:
        while not self._stopping.is_set():
            busy = self.engine.has_unfinished()
            self._drain_commands(block=not busy)
            if self._stopping.is_set():
                break
            if self.engine.has_unfinished():
                self._step()

    def _drain_commands(self, *, block: bool) -> None:
        """Runs queued commands; waits briefly for one when the engine is idle."""
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_SECONDS) if block \
                else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:  # None is stop()'s wake-up
            self._run_command(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _run_command(self, fn: Callable, future: concurrent.futures.Future | None) -> None:
        try:
            result = fn(self.engine)
        except Exception as exc:  # reported to the caller that asked
            if future is not None:
                future.set_exception(exc)
            else:
                log.exception("engine command failed")
            return
        if future is not None:
            future.set_result(result)

    def _step(self) -> None:
        try:
            if self._before_step is not None:
                self._before_step(self.engine)
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the requests in flight")
            self._fail_all(EngineStepError(f"engine step failed: {exc}"))
            return
        for output in outputs:
            target = self._streams.get(output.request_id)
            if target is not None:
                loop, outputs_queue = target
                loop.call_soon_threadsafe(outputs_queue.put_nowait, output)

    def _fail_all(self, error: Exception) -> None:
        for request_id, (loop, outputs_queue) in list(self._streams.items()):
            self._run_command(lambda eng, rid=request_id: eng.abort(rid), None)
            loop.call_soon_threadsafe(outputs_queue.put_nowait, error)
