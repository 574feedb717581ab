"""The server's side of the engine process (`--engine-runs process`, the default): starts
it, sends it commands, reads its news, stops it.

Why: the engine's Python (scheduling, sampling bookkeeping) and the server's Python
(gRPC, protobuf, tokenizing) must not share one GIL — measured here, one busy Python
thread beside the engine thread cut the engine from 6,721 to 46 tokens/s. vLLM v1 runs
its engine core in its own process for the same reason.

The child is started with multiprocessing's spawn context (gRPC and fork do not mix),
runs dataplane/engine_process/main.py, builds the engine from the same WorkerConfig and answers with `EngineFacts` (or the
start-up error, re-raised here with its type). Then commands go down the pipe and `News`
comes back, one message per step. The child owns every tensor; the server never loads
the model's weights.

Lifetimes: the server stops the child with STOP (and kills it if it does not stop in
time); if the child dies, the reader thread sees the pipe close and reports it; if the
server dies, the child sees its pipe close and exits, so no orphan holds the device (while
it builds, the kernel kills it instead: engine_process/main.py). A build that takes longer than
`engine_start_timeout`, or a stop asked for meanwhile, kills the child too. The
child ignores SIGINT and leaves the server's process group: a Ctrl-C or a SIGTERM to the
group is the server's to handle (it drains its streams, then stops the child).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from lorafleet.dataplane.engine_process.main import run_engine_process
from lorafleet.dataplane.engine_process.messages import (
    CarriedError,
    Command,
    EngineDead,
    EngineFacts,
    News,
    Op,
)
from lorafleet.kernels.cpu.lora import LORA_THREADS_ENV
from lorafleet.runtime.startup import StartupError, StartupStopped

log = logging.getLogger(__name__)

_STOP_POLL_SECONDS = 0.2  # how often a start-up wait looks at its stop event


class ProcessLink:
    """Starts the engine process for `config` and waits until it is built (blocking:
    call off the event loop). Raises the child's start-up error, with its type, or a
    StartupError when it is not built within `config.engine_start_timeout` seconds, or
    StartupStopped as soon as `stop` is set (a SIGTERM while starting); either way the
    child is killed."""

    def __init__(self, config: Any, *, name: str = "lorafleet-engine",
                 stop: threading.Event | None = None):
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=run_engine_process, name=name, daemon=True,
            args=(config, child_conn, logging.getLogger().getEffectiveLevel(), os.getpid()))
        with _child_environment(config.cpu_thread_wait):
            self._process.start()
        child_conn.close()  # the child's end lives in the child only: its exit closes it
        self._is_stopping = False
        self._reader: threading.Thread | None = None
        # Commands leave through a writer thread: the child reads none while it steps, and
        # a write beyond the pipe's buffer would otherwise hold the caller (the server's
        # event loop) until the step ends.
        self._outbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._is_broken = False
        self._writer = threading.Thread(target=self._write, name="lorafleet-engine-commands",
                                        daemon=True)
        try:
            self.facts = self._handshake(config.engine_start_timeout, stop)
        except BaseException:
            self._kill()
            raise
        self._writer.start()

    @property
    def pid(self) -> int | None:
        """The engine process's id."""
        return self._process.pid

    def start(self, on_news: Callable[[News], None],
              on_exit: Callable[[BaseException | None], None]) -> None:
        """Starts the reader thread that hands each News to `on_news`."""
        self._reader = threading.Thread(target=self._read, args=(on_news, on_exit),
                                        name="lorafleet-engine-news", daemon=True)
        self._reader.start()

    def send(self, command: Command) -> None:
        """Queues a command for the pipe; never waits for the child (OSError once the
        pipe is broken: the child is gone)."""
        if self._is_broken:
            raise OSError("the engine process is gone")
        self._outbox.put(command)

    def stop(self, timeout: float) -> None:
        """Asks the child to stop after its current step; kills it after `timeout`."""
        self._is_stopping = True
        with contextlib.suppress(OSError):
            self.send(Command(Op.STOP))
        self._outbox.put(None)  # the writer's last item
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("the engine process did not stop in %.0fs; killing it", timeout)
            self._kill()
        self._writer.join(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        self._conn.close()

    def _write(self) -> None:
        """The writer thread: sends queued commands in order until None or a broken pipe
        (the reader then reports the child's end; commands still queued are moot)."""
        while (command := self._outbox.get()) is not None:
            try:
                self._conn.send(command)
            except (OSError, ValueError):  # gone, or the pipe closed by stop
                self._is_broken = True
                return

    def _handshake(self, timeout: float, stop: threading.Event | None) -> EngineFacts:
        # The child may hang while building (weights on a stuck network mount, say): its
        # pipe then neither answers nor closes, and start-up would wait for ever. A big
        # model may take minutes, and a stop asked for meanwhile ends the wait at once.
        deadline = time.monotonic() + timeout
        while not self._conn.poll(min(_STOP_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            if stop is not None and stop.is_set():
                raise StartupStopped("stopped while the engine process was starting")
            if time.monotonic() < deadline:
                continue
            raise StartupError(
                f"the engine process did not finish starting in {timeout:g} s (loading "
                "the model and placing it); it was stopped. Raise --engine-start-timeout "
                "if the model is that slow to load")
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise EngineDead("the engine process exited while starting (exit code "
                             f"{self._process.exitcode}); see its log above") from None
        if isinstance(message, CarriedError):
            raise message.rebuild()
        return message

    def _read(self, on_news: Callable[[News], None],
              on_exit: Callable[[BaseException | None], None]) -> None:
        error: BaseException | None = None
        try:
            while True:
                message = self._conn.recv()
                if isinstance(message, CarriedError):  # the loop's last word
                    error = message.rebuild()
                    break
                on_news(message)
        except (EOFError, OSError):
            pass
        except BaseException as exc:  # noqa: BLE001 - a bug on this side: the same end
            error = exc
        if error is None and not self._is_stopping:
            self._process.join(5)
            error = EngineDead(f"the engine process exited (exit code "
                               f"{self._process.exitcode})")
        on_exit(error)

    def _kill(self) -> None:
        self._process.kill()
        self._process.join(10)


@contextlib.contextmanager
def _child_environment(wait: str):
    """The environment the child starts with (spawn copies this process's): with `wait`
    "sleep" (the default), OpenMP threads that sleep as soon as they are idle; with
    "spin", OpenMP's own default, a short spin before sleeping. An OMP_WAIT_POLICY or
    GOMP_SPINCOUNT the operator set wins over both.

    Why both: between two ops of a step a spinning thread is already awake, a sleeping
    one must be woken, which costs more than a small op. On a quiet 2-core machine
    (serving benchmark, adapters preset, tiny model, 32 streams; two runs each, taking
    turns) the server did 1,782-2,228 tok/s at K=0 and 1,227-1,243 at K=32 spinning,
    against 1,385-1,557 and 881-916 sleeping (0.78-0.92x of the in-process engine against
    0.94-1.14x). But on a machine whose cores are busy with other work the spinning
    threads take the CPU from those who have work: measured at load average 6 (3 x 32
    streams), the engine process burned 8.7 s of CPU for 116-668 tok/s spinning, 0.55 s
    for 1,685-2,351 tok/s sleeping. So: sleep by default (most machines do other work
    too), spin on a worker with its cores to itself (`lorafleet serve --cpu-thread-wait`).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        yield
        return
    name, value = ("OMP_WAIT_POLICY", "PASSIVE") if wait != "spin" else (LORA_THREADS_ENV, "all")
    if name in os.environ:  # the operator's
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
