"""Finding every process a test's `lorafleet up` started, by an environment variable the
test sets and every child inherits (so a grandchild re-parented to init is found too)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import uuid

MARK_VARIABLE = "LORAFLEET_UP_TEST_MARK"


def marked_env() -> tuple[dict[str, str], str]:
    """An environment for `up` carrying a fresh mark, and the mark."""
    mark = uuid.uuid4().hex
    return dict(os.environ, **{MARK_VARIABLE: mark}), mark


def marked_pids(mark: str) -> set[int]:
    """Pids of live processes whose environment carries `mark` (zombies excluded)."""
    needle = f"{MARK_VARIABLE}={mark}".encode()
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours
        if needle in environ.split(b"\0") and state != "Z":
            found.add(int(entry.name))
    return found


def is_listening(address: str) -> bool:
    """Whether something accepts TCP connections on host:port."""
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0


def kill_marked(mark: str) -> None:
    """SIGKILLs whatever still carries `mark`: a failed test must not leave a fleet behind."""
    for pid in marked_pids(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
