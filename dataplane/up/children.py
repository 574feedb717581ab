"""The child processes of `lorafleet up`: started in their own process groups with their
output in a log file each, waited on until their gRPC health says SERVING, and stopped in
order with SIGTERM, then SIGKILL after a grace, so that nothing is left behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.runtime import startup
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

# How long each child may take to stop after SIGTERM before its group gets SIGKILL.
STOP_GRACE_SECONDS = 10.0
NUM_TAIL_LINES = 12


class ChildDied(StartupError):
    """A child exited while it was starting; its log's last lines were printed."""


@dataclasses.dataclass
class Child:
    """One started process: its name (\"worker-0\"), process and log file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: pathlib.Path
    is_service: bool = True  # runs until stopped (False: a task that exits when done)
    is_reported: bool = False  # the end of its log was printed
    argv: tuple[str, ...] = ()  # how it was started, to start it again
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    started_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return self.process.pid

    @property
    def is_running(self) -> bool:
        """Whether the child has not exited yet."""
        return self.process.returncode is None

    def tail(self, num_lines: int = NUM_TAIL_LINES) -> list[str]:
        """The last lines of the child's log."""
        try:
            with self.log_path.open(errors="replace") as log:
                return list(collections.deque(log, maxlen=num_lines))
        except OSError:
            return []


class Children:
    """Every process `up` started, in start order; `stop_all` stops them in stop order."""

    def __init__(self, log_dir: pathlib.Path):
        self.log_dir = log_dir
        self.started: list[Child] = []

    async def spawn(self, name: str, argv: list[str], *, is_service: bool = True,
                    env: dict[str, str] | None = None) -> Child:
        """Starts `argv` in a new session (its own process group), output to its log,
        with `env` added to the environment; a task's (not a service's) stdout is a pipe
        for `up` to read."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        process = await _start(argv, log_path, env or {}, is_service, mode="wb")
        child = Child(name, process, log_path, is_service, argv=tuple(argv), env=env or {})
        self.started.append(child)
        return child

    async def restart(self, child: Child) -> Child:
        """Starts a service that exited again, as it was started, its log continued."""
        process = await _start(child.argv, child.log_path, child.env, True, mode="ab")
        again = dataclasses.replace(child, process=process, is_reported=False,
                                    started_at=time.monotonic())
        self.started[self.started.index(child)] = again
        return again

    async def stop_all(self, order: list[list[str]]) -> None:
        """Stops the children named in each group of `order`, one group after the other
        (a group's children together), then any child not named."""
        named = {name for group in order for name in group}
        groups = [[c for c in self.started if c.name in group] for group in order]
        groups.append([c for c in self.started if c.name not in named])
        for group in groups:
            await asyncio.gather(*(stop(child) for child in group))

    async def first_exit(self) -> Child:
        """Returns the first service that exits, started before or while this waits."""
        while True:
            for child in self.started:
                if child.is_service and not child.is_running:
                    return child
            await asyncio.sleep(0.2)


async def _start(argv, log_path: pathlib.Path, env: dict[str, str], is_service: bool, *,
                 mode: str) -> asyncio.subprocess.Process:
    """Starts `argv` in a new session (its own process group), output to its log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    with log_path.open(mode) as log:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=log if is_service else asyncio.subprocess.PIPE, stderr=log,
            start_new_session=True, env=env)


class RestartDelays:
    """How long to wait before starting a part that exited again: 1 s, doubling up to
    30 s while it keeps dying, back to 1 s once it has run a minute."""

    FIRST, CAP, SETTLED = 1.0, 30.0, 60.0

    def __init__(self) -> None:
        self._next: dict[str, float] = {}

    def next_delay(self, child: Child) -> float:
        """The delay before `child` (which just exited) starts again."""
        if time.monotonic() - child.started_at >= self.SETTLED:
            self._next.pop(child.name, None)
        delay = self._next.get(child.name, self.FIRST)
        self._next[child.name] = min(self.CAP, 2 * delay)
        return delay


async def stop(child: Child, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the child's process group, SIGKILL to it after the grace; then SIGKILL to
    whatever is left of the group (a grandchild the child did not reap)."""
    if child.is_running:
        _signal_group(child.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), grace_seconds)
        except asyncio.TimeoutError:
            _signal_group(child.pid, signal.SIGKILL)
            await child.process.wait()
    _signal_group(child.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def wait_serving(child: Child, address: str, timeout: float,
                       tls: TlsConfig = PLAINTEXT_TLS) -> None:
    """Waits until gRPC health on `address` says SERVING. Raises ChildDied (after printing
    the end of its log) if the child exits first, StartupError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with tls.aio_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not child.is_running:
                raise died_at_start(child)
            if await _is_serving(health):
                return
            await asyncio.sleep(0.2)
    raise StartupError(f"{child.name} did not report SERVING on {address} within "
                       f"{timeout:.0f} s (see {child.log_path})")


async def _is_serving(health: health_pb2_grpc.HealthStub) -> bool:
    try:
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def died_at_start(child: Child) -> ChildDied:
    """Prints the end of the child's log to stderr (once); returns the one-line error."""
    if not child.is_reported:
        _print_tail(child)
    child.is_reported = True
    return ChildDied(f"{child.name} did not start (exit status {child.process.returncode}; "
                     f"log: {child.log_path})")


def _print_tail(child: Child) -> None:
    print(f"{child.name} exited with status {child.process.returncode} while starting; "
          f"the end of {child.log_path}:", file=sys.stderr, flush=True)
    for line in child.tail():
        print(f"  | {line.rstrip()}", file=sys.stderr, flush=True)


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free on `host` a moment ago (held together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def check_port_free(host: str, port: int, option: str) -> None:
    """Raises a StartupError naming `option` when another process listens on `port`."""
    startup.check_port_free(host, port, option, hint=f"; is another `lorafleet up` running? "
                                                     f"Stop it or pass another {option}")
