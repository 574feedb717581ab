"""`lorafleet serve` with its engine in its own process, as an operator sees it: a start-up
error in the engine process is one line; Ctrl-C (SIGINT to the process group) drains the
streams before both processes exit; a killed engine process makes the server exit 1 (for its
supervisor); a killed server leaves no engine process behind, also while the engine
process is still building, and SIGTERM then stops both at once."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.support.lora_suite import prompts

pytestmark = pytest.mark.slow

SERVE = [sys.executable, "-m", "lorafleet.clients.cli", "serve", "--insecure-no-auth",
         "--device", "cpu", "--metrics-port", "-1", "--port", "0"]


def _start(base: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """serve in a session of its own (so a signal to its group reaches nobody else)."""
    process = subprocess.Popen([*SERVE, "--model", str(base), "--kv-cache-bytes",
                                str(16 << 20), "--grace-seconds", "20"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    for line in process.stdout:
        match = re.search(r"serving on (\S+)", line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, match.group(1)
    raise AssertionError(f"serve exited early with {process.wait()}")


def _engine_pid(pid: int, timeout: float = 0.0) -> int:
    """The engine process: the server's spawned child (multiprocessing's resource
    tracker is the other one), waiting up to `timeout` seconds for it to start."""
    deadline = time.monotonic() + timeout
    while True:
        children = [child for task in pathlib.Path(f"/proc/{pid}/task").iterdir()
                    for child in _read(task / "children").split()]
        engines = [int(child) for child in children
                   if b"spawn_main" in _read_bytes(pathlib.Path(f"/proc/{child}/cmdline"))]
        if engines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(engines) == 1, children
    return engines[0]


def _read(path: pathlib.Path) -> str:
    return _read_bytes(path).decode()


def _read_bytes(path: pathlib.Path) -> bytes:
    """The file's bytes; none when its thread or process has ended meanwhile."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _is_gone(pid: int) -> bool:
    """Exited (a zombie waiting for its reaper counts as exited)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_start_up_error_in_the_engine_process_is_one_line(lora_suite):
    result = subprocess.run([*SERVE, "--model", str(lora_suite[0]), "--kv-cache-bytes",
                             "1000"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "KV budget of 1000 bytes" in errors[0], result.stderr


def test_ctrl_c_drains_the_streams_then_both_processes_exit(lora_suite):
    process, address = _start(lora_suite[0])
    try:
        engine = _engine_pid(process.pid)
        with grpc.insecure_channel(address) as channel:
            stream = pb_grpc.InferenceServiceStub(channel).Generate(pb.GenerateRequest(
                token_ids=pb.TokenIds(ids=prompts(1)[0]),
                sampling=pb.SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)),
                timeout=60)
            assert next(stream).HasField("delta")
            os.killpg(process.pid, signal.SIGINT)
            rest = list(stream)
        assert rest[-1].summary.finish_reason == pb.FINISH_REASON_LENGTH
        assert rest[-1].summary.usage.completion_tokens == 200
        assert process.wait(30) == 0
        assert _wait_gone(engine, 10)
    finally:
        process.kill()


def test_a_killed_server_leaves_no_engine_process(lora_suite):
    process, _ = _start(lora_suite[0])
    try:
        engine = _engine_pid(process.pid)
        process.kill()
        process.wait(10)
        assert _wait_gone(engine, 10), "the engine process outlived its server"
    finally:
        process.kill()


def test_a_killed_engine_process_makes_the_server_exit_1(lora_suite):
    process, _ = _start(lora_suite[0])
    try:
        os.kill(_engine_pid(process.pid), signal.SIGKILL)
        assert process.wait(30) == 1
    finally:
        process.kill()


def _start_stuck_in_build(base: pathlib.Path, tmp_path: pathlib.Path) -> tuple[subprocess.Popen, int]:
    """serve whose engine process hangs while building, reading weights that block on open
    (a FIFO; in life a hung mount, or a big model on slow storage), once its signal
    handlers are installed; and the engine process's id."""
    stuck = tmp_path / "base"
    shutil.copytree(base, stuck)
    for weights in stuck.glob("*.safetensors"):
        weights.unlink()
        os.mkfifo(weights)
    process = subprocess.Popen([*SERVE, "--model", str(stuck), "--kv-cache-bytes",
                                str(16 << 20), "--engine-start-timeout", "300"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    for line in process.stdout:  # the auth warning: signal handlers are installed
        if "AUTH IS OFF" in line:
            break
    return process, _engine_pid(process.pid, timeout=60)


def test_sigterm_while_the_engine_process_builds_stops_at_once(lora_suite, tmp_path):
    # Before, SIGTERM waited for the build to end (for ever here). Now the server kills
    # the engine process and exits 0 with one line.
    process, engine = _start_stuck_in_build(lora_suite[0], tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, out
        assert "stopped while the engine process was starting" in out
        assert _wait_gone(engine, 10), "the engine process outlived its server"
    finally:
        process.kill()


def test_a_server_killed_while_the_engine_process_builds_leaves_no_engine(lora_suite,
                                                                         tmp_path):
    # SIGKILL (the OOM killer) gives the server no chance to stop its engine process, and
    # one stuck building reads no pipe to notice: it used to stay for ever, holding the
    # device. The kernel now kills it with its server (PR_SET_PDEATHSIG while it builds).
    process, engine = _start_stuck_in_build(lora_suite[0], tmp_path)
    try:
        process.kill()
        process.wait(30)
        assert _wait_gone(engine, 10), "the engine process outlived its server"
    finally:
        process.kill()
