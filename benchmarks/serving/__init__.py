"""The serving benchmark (`python -m benchmarks serving --help`); see docs/benchmarks.md."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Runs the serving benchmark with `argv` (see cli.py)."""
    from benchmarks.serving.cli import main as run

    return run(argv)
