"""Start-up mistakes of `lorafleet serve`: one clear line and exit status 2, no traceback;
signals are handled from the first "serving on" line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

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


@pytest.mark.slow
def test_missing_model_directory(tmp_path):
    _assert_one_line_error(_serve("--model", str(tmp_path / "nope"), *COMMON), "nope")


@pytest.mark.slow
def test_unsupported_architecture(lora_suite, tmp_path):
    base = tmp_path / "gpt2"
    base.mkdir()
    config = json.loads((lora_suite[0] / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (base / "config.json").write_text(json.dumps(config))
    _assert_one_line_error(_serve("--model", str(base), *COMMON), "GPT2LMHeadModel")


@pytest.mark.slow
def test_refused_adapter_is_named(lora_suite, tmp_path):
    result = _serve("--model", str(lora_suite[0]), "--adapter", f"acme/ghost={tmp_path}/x",
                    "--port", "0", *COMMON)
    _assert_one_line_error(result, "--adapter acme/ghost")


@pytest.mark.slow
def test_busy_grpc_port_is_refused_before_the_model_loads(lora_suite, held_port):
    result = _serve("--model", str(lora_suite[0]), "--port", str(held_port), *COMMON)
    _assert_one_line_error(result, str(held_port), "in use")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_full_collection_after_start_up_skips_the_start_up_heap():
    # A worker holds ~200,000 long-lived objects once started (torch, protobuf, the model);
    # a full collection walking them all stalled every stream for 130 ms. After
    # freeze_startup_heap (the servers call it before "serving on"), it walks only what
    # was created since.
    script = ("import gc, torch, transformers\n"
              "from lorafleet.runtime.startup import freeze_startup_heap\n"
              "frozen = freeze_startup_heap()\n"
              "print(frozen, len(gc.get_objects()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True)
    frozen, scanned = map(int, result.stdout.split())
    assert frozen > 50_000
    assert scanned < 1_000


def _unloadable_model(lora_suite, tmp_path) -> str:
    """A checkpoint whose weights never open (FIFOs nobody writes): any check that comes
    only after the model loads is never reached."""
    base = tmp_path / "hangs"
    shutil.copytree(lora_suite[0], base)
    for weights in base.glob("*.safetensors"):
        weights.unlink()
        os.mkfifo(weights)
    return str(base)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--http-port", "--metrics-port", "--admin-port"])
def test_a_busy_port_is_refused_before_the_model_loads(lora_suite, tmp_path, held_port, option):
    """Issue 22 #5: a busy --http-port or --metrics-port was reported only after the model
    loaded (31-51 s), the HTTP one with a traceback."""
    args = ["--model", _unloadable_model(lora_suite, tmp_path), "--port", "0", "--device",
            "cpu", "--kv-cache-bytes", str(16 << 20), "--metrics-port", "-1",
            "--engine-start-timeout", "60", option, str(held_port)]
    _assert_one_line_error(_serve(*args, timeout=40), f"{option} {held_port}")


@pytest.mark.slow
def test_adapter_mistakes_are_refused_before_the_model_loads(lora_suite, tmp_path):
    """Issue 22 #5: a mistyped --adapter path said "outside the directories this worker may
    read" after the model loaded; a name without a tenant was accepted, then refused on
    every request."""
    model = _unloadable_model(lora_suite, tmp_path)
    common = ["--model", model, "--port", "0", *COMMON, "--engine-start-timeout", "60"]
    missing = _serve(*common, "--adapter", f"acme/x={tmp_path}/typo", timeout=40)
    _assert_one_line_error(missing, f"--adapter acme/x={tmp_path}/typo", "not found")
    no_tenant = _serve(*common, "--adapter", f"pirate={lora_suite[1]['acme/qv8']}", timeout=40)
    assert no_tenant.returncode == 2 and "pirate" in no_tenant.stderr
    assert "Traceback" not in no_tenant.stderr
