"""The engine process's entry point (`--engine-runs process`, the default): builds the
engine from the worker's config, answers the server's handshake with `EngineFacts` (or
its start-up error), then runs the engine loop on commands from the pipe until STOP or
the pipe's end. The server's side, which starts this process and watches it, is
dataplane/server/process_link.py (it says why the engine has a process of its own).

Lifetimes, this side: the child ignores SIGINT and leaves the server's process group (a
Ctrl-C or a SIGTERM to the group is the server's to handle); if the server dies, the
child sees its pipe close and exits, so no orphan holds the device; while it builds, the
kernel kills it instead (`_engine_main`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any

from lorafleet.dataplane.engine_process.build import build_engine
from lorafleet.dataplane.engine_process.loop import EngineLoop, MetricEvents
from lorafleet.dataplane.engine_process.messages import CarriedError, Command
from lorafleet.runtime.startup import freeze_startup_heap

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [engine]: %(message)s"


def run_engine_process(config: Any, conn: Any, log_level: int, server_pid: int) -> None:
    """The child's main: runs the engine on a thread that is not the main thread.

    Why: on a busy machine torch ops issued from a process's main thread were measured
    5-9x slower than from another thread (OpenMP's spinning wait in the main thread's
    team; docs/benchmarks.md), and the engine was built to run on a thread of its own.
    `server_pid` is the server's process id, which the engine watches while it builds.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # signals to the server's process group are the server's
    logging.basicConfig(level=log_level, format=_LOG_FORMAT)
    exit_code: list[int] = [0]
    engine = threading.Thread(target=_engine_main, args=(config, conn, exit_code, server_pid),
                              name="lorafleet-engine")
    engine.start()
    engine.join()
    sys.exit(exit_code[0])


def _engine_main(config: Any, conn: Any, exit_code: list[int], server_pid: int) -> None:
    """Build the engine, answer the handshake, run the loop until STOP or the end.

    While it builds, the engine reads no pipe, so it could not see the server die: a
    server killed then (SIGKILL, the OOM killer) would leave it running, holding the
    device, for as long as the build takes, for ever if it hangs on a stuck mount (and a
    watching thread would not help: a read that blocks in a native library can hold the
    GIL). So the kernel kills it if the server's waiting thread ends, until the build is
    done; from then on the pipe's closing tells.
    """
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != server_pid:
        os._exit(0)  # the server ended before the signal was armed
    try:
        loop, host = _build(config, conn)
        freeze_startup_heap()  # the engine loop's steps never wait for a full collection
    except BaseException as exc:  # noqa: BLE001 - the server re-raises it, with its type
        conn.send(CarriedError.of(exc))
        return
    try:
        loop.run(lambda timeout: _receive(conn, timeout))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        log.warning("the server process is gone; the engine stops")
        os._exit(0)  # now: do not wait for adapter loads still reading
    except BaseException as exc:
        log.critical("the engine loop died", exc_info=exc)
        with contextlib.suppress(OSError):
            conn.send(CarriedError.of(exc))
        exit_code[0] = 1
    finally:
        host.close()


def _build(config: Any, conn: Any):

    events = MetricEvents()  # forwarded with each News to the server's /metrics
    parts = build_engine(config, events)
    loop = EngineLoop(parts.engine, parts.host, events, send=conn.send)
    facts = parts.facts(loop.first_snapshot())
    # Disarmed before the answer: the server's thread that waited for it may then end.
    _set_parent_death_signal(0)
    conn.send(facts)
    return loop, parts.host


def _set_parent_death_signal(signum: int) -> None:
    """Linux's PR_SET_PDEATHSIG for the calling thread: `signum` is sent to this process
    when the thread that started it ends (0 disarms). Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _receive(conn: Any, timeout: float) -> list[Command]:
    """The commands that arrived, waiting up to `timeout` for the first."""
    if not conn.poll(timeout):
        return []
    commands = [conn.recv()]
    while conn.poll(0):
        commands.append(conn.recv())
    return commands
