"""`lorafleet up` as a user runs it: the whole fleet as child processes, the commands it
prints work as printed, and nothing it started outlives it (after SIGTERM, and after a
start-up that fails)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from openai import OpenAI

from lorafleet.dataplane.up.children import STOP_GRACE_SECONDS
from tests.up.processes import is_listening, kill_marked, marked_env, marked_pids

UP = [sys.executable, "-m", "lorafleet.clients.cli", "up"]
FREE_PORTS = ["--controlplane-port", "0", "--gateway-port", "0", "--http-port", "0"]
# Plaintext here (TLS is up's default, tested as pasted in tests/tls/test_up_tls.py).
SMALL = ["--random-model", "--workers", "1", "--kv-cache-bytes", str(64 << 20), "--no-tls",
         *FREE_PORTS]
READY_LINE = "lorafleet is up"


class Up:
    """A running `lorafleet up`, its output collected line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], mark: str):
        self.mark = mark
        self.data_dir = pathlib.Path(argv[argv.index("--data-dir") + 1])
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        """Waits until a printed line contains `text`."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no {text!r} from lorafleet up; stdout:\n" + "\n".join(self.lines)
                            + "\nstderr:\n" + self.process.stderr.read())
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (so `up` stops its children), SIGKILL only if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(4 * STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def printed(self, pattern: str) -> list[str]:
        """Every printed line matching `pattern` (stripped)."""
        return [line.strip() for line in self.lines if re.search(pattern, line)]


@pytest.fixture
def marked():
    """(environment, mark) for an `up`; whatever carries the mark is killed afterwards."""
    env, mark = marked_env()
    yield env, mark
    kill_marked(mark)


@pytest.fixture
def up(tmp_path, marked):
    """`lorafleet up` on the random model with one worker, which may also read adapters
    under tmp_path/mine; stopped if a test leaves it."""
    env, mark = marked
    (tmp_path / "mine").mkdir()
    running = Up([*UP, *SMALL, "--data-dir", str(tmp_path / "data"),
                  "--adapter-root", str(tmp_path / "mine")], env, mark)
    yield running
    running.stop()


def _paste(command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs a printed command line through the shell, as a user pasting it would."""
    return subprocess.run(command, shell=True, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
def test_up_serves_through_the_gateway_and_leaves_nothing_after_sigterm(up):
    up.wait_for(READY_LINE, timeout=150)
    started = marked_pids(up.mark)
    # etcd, the control plane, a worker and a gateway, each its own process.
    assert len(started) >= 4
    # They share this machine's cores: the worker's engine threads sleep when idle.
    commands = [pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                for pid in started if pathlib.Path(f"/proc/{pid}/cmdline").exists()]
    workers = [c for c in commands if b"worker" in c and b"--model" in c]
    assert workers and all(c[c.index(b"--cpu-thread-wait") + 1] == b"sleep" for c in workers)
    addresses = [m.group(1) for line in up.lines
                 if (m := re.search(r" ready on (\S+) \(pid", line))]
    assert len(addresses) == 4 and all(is_listening(a) for a in addresses)

    # Issue 22 #8: every part's /metrics is printed, the control plane's included.
    urls = [line.split()[-1] for line in up.lines if line.strip().endswith("/metrics")]
    assert len(urls) == 3  # control plane, gateway, one worker
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert b"# HELP lorafleet_" in reply.read()

    pirate = _paste(up.printed(r"generate .*--adapter demo/pirate ")[0])
    assert pirate.returncode == 0, pirate.stderr
    assert pirate.stdout.strip() and "adapter demo/pirate@1" in pirate.stderr
    base = _paste(up.printed(r"generate --addr \S+ --chat ")[0])
    assert base.returncode == 0, base.stderr
    assert base.stdout.strip() and "adapter base;" in base.stderr
    grpcurl = _paste(up.printed(r"grpcurl -plaintext -d ")[0])
    assert grpcurl.returncode == 0 and '"adapter_version": "demo/pirate@1"' in grpcurl.stdout

    base_url = re.search(r'base_url="([^"]+)"', "\n".join(up.lines)).group(1)
    start = next(i for i, line in enumerate(up.lines) if "from openai import OpenAI" in line)
    snippet = "\n".join(up.lines[start:start + 5])  # pasted as printed (issue 22 #7)
    sdk = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                         timeout=60, check=False)
    assert sdk.returncode == 0 and sdk.stdout.strip(), sdk.stderr
    demo_key = re.search(r'api_key="([^"]+)"', "\n".join(up.lines)).group(1)
    assert demo_key.startswith("lf_") and any(demo_key in line for line in up.printed("demo"))
    client = OpenAI(base_url=base_url, api_key=demo_key, max_retries=0)
    model_ids = [card.id for card in client.models.list().data]
    assert model_ids[0] == "random-demo" and "demo/style" in model_ids
    reply = client.chat.completions.create(
        model="random-demo", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "What is the opposite of hot?"}])
    assert reply.usage.completion_tokens == 8 and reply.choices[0].message.content

    rollout = _paste(up.printed(r"adapter rollout demo/style 1=50 2=50")[0])
    assert rollout.returncode == 0 and "50" in rollout.stdout, rollout.stderr

    # Issue 22 #4: a version from your own folder (up --adapter-root), named relative to
    # the shell's directory; the same weights as an existing version say so.
    pirate_dir = up.data_dir / "random-model" / "adapters" / "demo__pirate"
    shutil.copytree(pirate_dir, up.data_dir.parent / "mine" / "my-copy")
    mine = up.printed(r"adapter rollout demo/style 1=50 2=50")[0].replace(
        "adapter rollout demo/style 1=50 2=50", "adapter version demo/pirate ./my-copy"
    ).replace(".venv/bin/lorafleet", str(pathlib.Path(sys.executable).parent / "lorafleet"))
    added = subprocess.run(mine, shell=True, capture_output=True, text=True, timeout=60,
                           cwd=up.data_dir.parent / "mine", check=False)
    assert added.returncode == 0 and "READY" in added.stdout, added.stderr
    assert "the same weights as @1" in added.stderr

    stopping = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=4 * STOP_GRACE_SECONDS) == 0
    # Every part stopped on its SIGTERM: none needed the SIGKILL that follows the grace.
    assert time.monotonic() - stopping < STOP_GRACE_SECONDS
    assert marked_pids(up.mark) == set()
    assert not any(is_listening(a) for a in addresses)
    assert not is_listening(base_url.split("//")[1].split("/")[0])


@pytest.mark.slow
def test_ctrl_c_during_start_up_stops_what_was_started(up):
    up.wait_for("control plane ready", timeout=60)
    assert marked_pids(up.mark)
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=4 * STOP_GRACE_SECONDS) == 0
    assert up.lines[-1] == "stopped" and marked_pids(up.mark) == set()


def test_a_busy_gateway_port_is_one_line_and_starts_nothing(tmp_path, marked):
    env, mark = marked
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [*UP, *SMALL, "--gateway-port", str(port), "--data-dir", str(tmp_path)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                              check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("lorafleet up: error: --gateway-port ")
    assert f"127.0.0.1:{port}" in done.stderr
    assert "ready" not in done.stdout and marked_pids(mark) == set()


@pytest.mark.slow
def test_a_worker_that_dies_at_start_stops_what_was_started(tmp_path, marked):
    env, mark = marked
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    argv = [*UP, *FREE_PORTS, "--workers", "1", "--model", str(empty),
            "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode != 0
    # etcd and the control plane had started; the worker's end is shown, then one line.
    assert "control plane ready" in done.stdout and "stopped" in done.stdout
    assert "worker-0 exited with status" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lorafleet up: error: worker-0 did not start")
    assert str(tmp_path / "data" / "logs" / "worker-0.log") in last
    assert marked_pids(mark) == set()


def _pid_of(mark: str, worker_id: str) -> int:
    """The pid of the running `lorafleet worker --worker-id worker_id` of this `up`."""
    for pid in marked_pids(mark):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-id" in argv and argv[argv.index(b"--worker-id") + 1] == worker_id.encode():
            return pid
    raise AssertionError(f"no {worker_id} running")


@pytest.mark.slow
def test_a_dead_part_is_started_again_and_the_rest_keep_serving(tmp_path, marked):
    """Issue 22 #1: kill -9 of worker-0 stopped the whole fleet, the healthy worker-1 with
    its streams, the control plane and etcd."""
    env, mark = marked
    two = [*UP, *SMALL[:-len(FREE_PORTS)], *FREE_PORTS]
    two[two.index("--workers") + 1] = "2"
    up = Up([*two, "--data-dir", str(tmp_path / "data")], env, mark)
    try:
        up.wait_for(READY_LINE, timeout=180)
        first = _pid_of(mark, "worker-0")
        os.kill(first, signal.SIGKILL)
        up.wait_for("worker-0 exited with status -9", timeout=30)
        up.wait_for("worker-0 started again", timeout=30)
        assert up.process.poll() is None  # up, etcd, the control plane, the gateway go on
        assert _pid_of(mark, "worker-0") != first
        base = _paste(up.printed(r"generate --addr \S+ --chat ")[0])
        assert base.returncode == 0 and base.stdout.strip(), base.stderr
        log = tmp_path / "data" / "logs" / "worker-0.log"
        deadline = time.monotonic() + 60
        while log.read_text().count("serving on") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.read_text().count("serving on") == 2  # one log, both runs
    finally:
        up.stop()


@pytest.mark.slow
def test_the_data_dir_keeps_what_a_run_registered_and_fresh_forgets_it(tmp_path, marked):
    """Issue 22 #1: etcd started empty on each `up`, so every key, version and rollout
    made in a session was gone."""
    env, mark = marked
    data = ["--data-dir", str(tmp_path / "data")]
    first = Up([*UP, *SMALL, *data], env, mark)
    try:
        first.wait_for(READY_LINE, timeout=180)
        rollout = _paste(first.printed(r"adapter rollout demo/style 1=50 2=50")[0])
        assert rollout.returncode == 0, rollout.stderr
    finally:
        first.stop()
    again = Up([*UP, *SMALL, *data], env, mark)
    try:
        again.wait_for(READY_LINE, timeout=180)
        assert again.printed(r"demo/style@1 +50% of demo/style")
    finally:
        again.stop()
    fresh = Up([*UP, *SMALL, *data, "--fresh"], env, mark)
    try:
        fresh.wait_for(READY_LINE, timeout=180)
        assert fresh.printed(r"demo/style@1 +90% of demo/style")
    finally:
        fresh.stop()
