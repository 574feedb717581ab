"""A fake serving worker in its own process, so a test can freeze it (SIGSTOP) like a
hung machine: its port still accepts connections, nothing answers, heartbeats stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

_CHILD = """
import asyncio, sys
from tests.gateway.fakes import ServingFakeWorker

async def main():
    worker = ServingFakeWorker(sys.argv[1], [sys.argv[2]], base_model=sys.argv[3])
    print(await worker.start(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class WorkerProcess:
    """One ServingFakeWorker in a subprocess; `freeze()` stops it, `kill()` ends it."""

    def __init__(self, process: asyncio.subprocess.Process, address: str):
        self.process = process
        self.address = address

    @classmethod
    async def start(cls, worker_id: str, controlplane: str, base_model: str) -> WorkerProcess:
        """Starts the worker; returns once it serves (its address printed)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, worker_id, controlplane, base_model,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            cwd=os.getcwd())
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        return cls(process, line.decode().strip())

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, never answered."""
        self.process.send_signal(signal.SIGSTOP)

    async def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
