"""A `lorafleet serve` subprocess on free loopback ports, as a user would start it."""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

BASE_MODEL_NAME = "bench-base"
_SERVING = re.compile(r"serving on (\S+)")
_METRICS = re.compile(r"metrics: (http://\S+/metrics)")
_HTTP = re.compile(r"OpenAI API: (http://\S+/v1)")


class WorkerStartError(RuntimeError):
    """The worker exited or did not come up in time; the message ends with its output."""


@dataclasses.dataclass
class WorkerProcess:
    """A running worker: its gRPC address, /metrics URL, OpenAI base URL (when asked
    for), the arguments it was started with, and its last lines of output."""

    process: subprocess.Popen
    address: str
    metrics_url: str | None
    http_url: str | None
    args: list[str]
    output: collections.deque

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL after `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve_command(model_dir: pathlib.Path, adapters: list[tuple[str, pathlib.Path]],
                  options: list[str], *, http: bool) -> list[str]:
    """The `lorafleet serve` arguments (after the program name): loopback, free ports, and
    no auth unless `options` configure keys (the benchmark is the only caller)."""
    # The benchmark's worker has the machine to itself: the dedicated-box setting.
    wait = [] if "--cpu-thread-wait" in options else ["--cpu-thread-wait", "spin"]
    args = ["serve", "--model", str(model_dir), "--model-name", BASE_MODEL_NAME,
            "--port", "0", "--metrics-port", "0", "--grace-seconds", "1", *wait, *options]
    if "--auth-keys" not in options:
        args.append("--insecure-no-auth")
    for name, path in adapters:
        args += ["--adapter", f"{name}={path}"]
    return args + (["--http-port", "0"] if http else [])


def start_worker(args: list[str], *, timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> WorkerProcess:
    """Starts `lorafleet <args>` (with `env` added to the environment) and waits until it
    prints its addresses."""
    wanted = {"address": _SERVING, "metrics": _METRICS}
    if "--http-port" in args:
        wanted["http"] = _HTTP
    return start_lorafleet(args, wanted, timeout=timeout, env=env)


def start_lorafleet(args: list[str], wanted: dict[str, re.Pattern], *, timeout: float = 600.0,
                    env: dict[str, str] | None = None) -> WorkerProcess:
    """Starts `lorafleet <args>` and waits until its output matched every pattern of
    `wanted` (group 1 of "address", "metrics", "http" fill those fields)."""
    command = [sys.executable, "-m", "lorafleet.clients.cli", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, env={**os.environ, **(env or {})})
    lines: queue.SimpleQueue = queue.SimpleQueue()
    output: collections.deque = collections.deque(maxlen=200)
    threading.Thread(target=_pump, args=(process, lines, output), daemon=True).start()
    found = _wait_for(process, lines, wanted, time.monotonic() + timeout, output)
    return WorkerProcess(process, found["address"], found.get("metrics"), found.get("http"),
                         args, output)


def _pump(process: subprocess.Popen, lines: queue.SimpleQueue, output) -> None:
    """Reads the worker's output for as long as it runs, so its pipe never fills."""
    for line in process.stdout:
        output.append(line.rstrip())
        lines.put(line)
    lines.put(None)


def _wait_for(process, lines: queue.SimpleQueue, wanted: dict, deadline: float,
              output) -> dict[str, str]:
    found: dict[str, str] = {}
    while len(found) < len(wanted):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:  # exited, or out of time
            process.kill()
            tail = "\n".join(output)
            raise WorkerStartError(f"the worker did not start (exit {process.poll()}):\n{tail}")
        for key, pattern in wanted.items():
            match = pattern.search(line)
            if match:
                found[key] = match.group(1)
    return found
