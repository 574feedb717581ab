"""Where benchmarks put their numbers: one JSON line per result row, in
benchmarks/results/<benchmark>.jsonl, stamped with the time and the machine."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def append_rows(benchmark: str, rows: list[dict], *, directory: pathlib.Path | None = None,
                **common) -> pathlib.Path:
    """Appends `rows` (each merged with `common`) to the benchmark's JSON-lines file, in
    `directory` (default benchmarks/results/)."""
    path = (directory or RESULTS_DIR) / f"{benchmark}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = {"benchmark": benchmark, "time": stamp, "machine": platform.machine(),
              "cpu": platform.processor(), "machine_info": machine_info()}
    with path.open("a") as out:
        for row in rows:
            out.write(json.dumps({**header, **common, **row}) + "\n")
    return path


@functools.cache
def machine_info() -> dict:
    """Where the numbers came from: host name, CPU model and cores, the git commit (with
    '+dirty' for uncommitted changes), and the torch and Python versions."""
    return {"hostname": socket.gethostname(), "cpu_model": _cpu_model(),
            "num_cores": os.cpu_count(), "commit": _commit(),
            "torch": _version("torch"), "python": platform.python_version()}


def describe_machine() -> str:
    """One line for a table's caption."""
    info = machine_info()
    return (f"{info['cpu_model']}, {info['num_cores']} cores, torch {info['torch']}, "
            f"Python {info['python']}, commit {info['commit']}, host {info['hostname']}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
