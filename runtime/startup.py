"""How every lorafleet server process starts and ends: logging, the event loop, signals,
and start-up mistakes as one clear line.

A server's `main` hands `run()` a coroutine that takes a `Stopper`. Signal handlers are
installed before the coroutine runs, so a SIGTERM that arrives during start-up (or right
after "serving on" is printed) ends the process gracefully instead of killing it. A
`StartupError` (start-up work wrapped in `starting()` turns a missing file, a busy port
or a bad value into one), or a missing extra, prints one line and exits 2;
`--log-level debug` shows the traceback as well. A stop asked for while start-up work
that can be cut short is running (StartupStopped) exits 0 with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable

EXIT_OK = 0
EXIT_FATAL = 1  # the server failed while serving; a supervisor should restart it
EXIT_USAGE = 2  # the server could not start as asked

LOG_LEVELS = ("debug", "info", "warning", "error")


class StartupError(Exception):
    """A mistake in how a server was started, said in one line for the operator."""


class StartupStopped(Exception):
    """A stop was asked for (SIGTERM, Ctrl-C) before start-up finished; what start-up had
    taken is released."""


class Stopper:
    """Set by SIGTERM or SIGINT: the server should stop gracefully.

    `event` is for the event loop; `threaded` is the same news for start-up work running
    on a thread (waiting for an engine process to build), which checks it to give up
    early instead of holding the stop until it is done."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.threaded = threading.Event()

    def set(self) -> None:
        """Asks for a stop (on the event loop's thread)."""
        self.threaded.set()
        self.event.set()

    @property
    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self.event.is_set()

    async def wait(self) -> None:
        """Returns when a stop is asked for."""
        await self.event.wait()


def freeze_startup_heap() -> int:
    """Takes every object alive at the end of start-up out of the garbage collector's
    scans; returns how many it froze.

    A server process holds hundreds of thousands of long-lived objects once started
    (torch, protobuf descriptors, the model's modules). Python's full (generation 2)
    collection walks all of them, holding the GIL: measured on a worker with 218,000
    objects, 130-135 ms, during which no stream got a token and no new request was
    accepted. Frozen objects are never scanned, so a full collection walks only what
    serving created since. Call when start-up is done (a benchmark may call it again
    before each measured cell): a frozen object is never freed by the cycle collector, so
    the garbage there is now is collected first.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def add_log_level_argument(parser) -> None:
    """The `--log-level` option every server takes."""
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower,
                        help="log verbosity; 'debug' also prints tracebacks of start-up "
                             "errors (default %(default)s)")


def run(prog: str, main: Callable[[Stopper], Awaitable[int | None]], *,
        log_level: str = "info") -> int:
    """Runs `main(stopper)` on a new event loop; returns the process exit status."""
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_with_signals(main)) or EXIT_OK
    except StartupStopped as exc:
        print(f"{prog}: {exc}", flush=True)
        return EXIT_OK
    except (StartupError, ImportError) as exc:
        if log_level == "debug":
            logging.getLogger(prog).exception("start-up failed")
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USAGE


async def _with_signals(main: Callable[[Stopper], Awaitable[int | None]]) -> int | None:
    stopper = Stopper()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopper.set)
    return await main(stopper)


@contextlib.contextmanager
def starting(what: str = ""):
    """Turns the ordinary failures of start-up work (a missing file, a busy port, a bad
    value) into a StartupError, prefixed with `what` (e.g. "--adapter acme/x")."""
    try:
        yield
    except StartupError:
        raise
    except (OSError, ValueError, LookupError) as exc:
        prefix = f"{what}: " if what else ""
        raise StartupError(prefix + _one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ImportError) and not isinstance(exc, StartupError):
        return (f"a module is missing ({exc.name or exc}); the worker needs the worker "
                "extra: pip install 'lorafleet[worker]'")
    return " ".join(str(exc).split()) or type(exc).__name__


def check_port_free(host: str, port: int, option: str, hint: str = "") -> None:
    """StartupError naming `option` when another process listens on host:port (checked
    before a slow start, so a busy port is said at once, not after the model loads)."""
    with socket.socket() as sock:
        # As the servers do, so a port left in TIME_WAIT by the last run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"{option} {port}: cannot listen on {host}:{port} "
                               f"({exc.strerror}){hint}") from exc
