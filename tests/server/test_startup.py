"""Start-up mistakes of `lorafleet serve`: one clear line and exit status 2, no traceback;
signals are handled from the first "serving on" line."""

from __future__ import annotations

import json
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

import pytest

SERVE = [sys.executable, "-m", "lorafleet.clients.cli", "serve", "--insecure-no-auth"]
COMMON = ["--device", "cpu", "--kv-cache-bytes", str(16 << 20), "--metrics-port", "-1"]


def _serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


@pytest.fixture
def held_port():
    """A loopback port another socket listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_missing_model_directory(tmp_path):
    _assert_one_line_error(_serve("--model", str(tmp_path / "nope"), *COMMON), "nope")


def test_unsupported_architecture(lora_suite, tmp_path):
    base = tmp_path / "gpt2"
    base.mkdir()
    config = json.loads((lora_suite[0] / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (base / "config.json").write_text(json.dumps(config))
    _assert_one_line_error(_serve("--model", str(base), *COMMON), "GPT2LMHeadModel")


def test_refused_adapter_is_named(lora_suite, tmp_path):
    result = _serve("--model", str(lora_suite[0]), "--adapter", f"acme/ghost={tmp_path}/x",
                    "--port", "0", *COMMON)
    _assert_one_line_error(result, "--adapter acme/ghost")


def test_busy_grpc_port_is_refused_before_the_model_loads(lora_suite, held_port):
    result = _serve("--model", str(lora_suite[0]), "--port", str(held_port), *COMMON)
    _assert_one_line_error(result, str(held_port), "in use")


def test_busy_metrics_port(lora_suite, held_port):
    result = _serve("--model", str(lora_suite[0]), "--port", "0", "--device", "cpu",
                    "--kv-cache-bytes", str(16 << 20), "--metrics-port", str(held_port))
    _assert_one_line_error(result, f"--metrics-port {held_port}")


def test_serve_without_the_worker_extra_says_which_extra(lora_suite):
    hide_torch = ("import sys; sys.modules['torch'] = None; "
                  "from lorafleet.clients.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", hide_torch, "serve", "--insecure-no-auth", "--model",
                             str(lora_suite[0]), *COMMON], capture_output=True, text=True,
                            timeout=60)
    _assert_one_line_error(result, "lorafleet[worker]")


def test_sigterm_right_after_serving_on_is_a_graceful_exit(lora_suite):
    process = subprocess.Popen([*SERVE, "--model", str(lora_suite[0]), "--port", "0", *COMMON],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if re.search(r"serving on \S+", line):
                process.send_signal(signal.SIGTERM)
                break
        threading.Thread(target=process.stdout.read, daemon=True).start()
        assert process.wait(60) == 0
    finally:
        process.kill()


def _serve_stuck_in_build(lora_suite, tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """`lorafleet serve` whose engine process hangs while building, reading weights that
    block on open (a FIFO; in life a hung mount, or a big model on slow storage), once
    its signal handlers are installed; and the ids of its child processes."""
    base = tmp_path / "base"
    shutil.copytree(lora_suite[0], base)
    for weights in base.glob("*.safetensors"):
        weights.unlink()
        os.mkfifo(weights)
    process = subprocess.Popen([*SERVE, "--model", str(base), "--port", "0", *COMMON,
                                "--engine-start-timeout", "300"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # the auth warning: signal handlers are installed
        if "AUTH IS OFF" in line:
            break
    return process, _children_after(process.pid, 1, timeout=60)


def _assert_all_end(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _is_running(pid)]):
        assert time.monotonic() < deadline, f"processes {alive} outlived the server"
        time.sleep(0.1)


def test_sigterm_while_the_engine_process_builds_stops_at_once(lora_suite, tmp_path):
    # Before, SIGTERM waited for the build to end (for ever here). Now the server kills
    # the engine process and exits 0 with one line, leaving no process behind.
    process, children = _serve_stuck_in_build(lora_suite, tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, out
        assert "stopped while the engine process was starting" in out
        _assert_all_end(children, timeout=10)
    finally:
        process.kill()


def test_an_engine_process_outlives_no_killed_server_even_while_building(lora_suite,
                                                                          tmp_path):
    # SIGKILL (the OOM killer) gives the server no chance to stop its engine process, and
    # one stuck building reads no pipe to notice: it used to stay for ever, holding the
    # device. It now sees itself adopted and exits.
    process, children = _serve_stuck_in_build(lora_suite, tmp_path)
    try:
        process.kill()
        process.wait(30)
        _assert_all_end(children, timeout=10)
    finally:
        process.kill()


def _children_after(pid: int, count: int, *, timeout: float) -> list[int]:
    """Ids of `pid`'s child processes (started from any of its threads), once there are
    `count` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [int(c) for task in pathlib.Path(f"/proc/{pid}/task").glob("*")
                    for c in _read(task / "children").split()]
        if len(children) >= count:
            return children
        time.sleep(0.1)
    raise AssertionError(f"process {pid} started no child in {timeout} s")


def _is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (an ended child nobody reaped yet)."""
    stat = _read(pathlib.Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.rpartition(")")[2].split()[0] != "Z"


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the thread ended
        return ""


def test_a_full_collection_after_start_up_skips_the_start_up_heap():
    # A worker holds ~200,000 long-lived objects once started (torch, protobuf, the model);
    # a full collection walking them all stalled every stream for 130 ms. After
    # freeze_startup_heap (the servers call it before "serving on"), it walks only what
    # was created since.
    script = ("import gc, torch, transformers\n"
              "from lorafleet.startup import freeze_startup_heap\n"
              "frozen = freeze_startup_heap()\n"
              "print(frozen, len(gc.get_objects()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True)
    frozen, scanned = map(int, result.stdout.split())
    assert frozen > 50_000
    assert scanned < 1_000
