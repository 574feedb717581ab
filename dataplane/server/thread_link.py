"""The engine loop on a thread of the server's process (`--engine-runs thread`).

For tests and debugging: the engine is reachable as `link.engine`, nothing is pickled
and a debugger sees both sides. Serving uses a process of its own (process_link.py),
because the engine thread and the server's Python share one GIL here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from lorafleet.dataplane.engine_process.loop import EngineLoop
from lorafleet.dataplane.engine_process.messages import Command, EngineFacts, News, Op


class ThreadLink:
    """Runs an `EngineLoop` over `engine` and `host` on its own thread once started."""

    def __init__(self, engine: Any, host: Any, *, facts: Callable[[Any], EngineFacts],
                 name: str = "lorafleet-engine"):
        self.engine = engine
        self.host = host
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._on_news: Callable[[News], None] = lambda news: None
        # No metric events to forward: the host tier and the slots count straight
        # into the server's metrics (same process).
        self._loop = EngineLoop(engine, host, None, send=lambda news: self._on_news(news))
        self.facts = facts(self._loop.first_snapshot())
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._on_exit: Callable[[BaseException | None], None] = lambda error: None

    def start(self, on_news: Callable[[News], None],
              on_exit: Callable[[BaseException | None], None]) -> None:
        """Starts the engine thread; news is handed to `on_news` on that thread."""
        self._on_news, self._on_exit = on_news, on_exit
        self._thread.start()

    def send(self, command: Command) -> None:
        """Queues a command for the loop."""
        self._inbox.put(command)

    def stop(self, timeout: float) -> None:
        """Stops the loop after its current step, joins the thread and stops the host
        tier's load threads (as the engine process does when it ends)."""
        self.send(Command(Op.STOP))
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.host.close()

    def _run(self) -> None:
        try:
            self._loop.run(self._receive)
        except BaseException as exc:  # a bug in the loop itself: report it, never hide it
            self._on_exit(exc)
            return
        self._on_exit(None)

    def _receive(self, timeout: float) -> list[Command]:
        try:
            commands = [self._inbox.get(timeout=timeout) if timeout else
                        self._inbox.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands
