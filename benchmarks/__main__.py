"""Runs every registered benchmark, or the ones named on the command line.

    python -m benchmarks                 # all
    python -m benchmarks placement       # one
"""

from __future__ import annotations

import importlib
import sys

# name -> module with `main(argv=None)`.
BENCHMARKS: dict[str, str] = {
    "engine_throughput": "benchmarks.engine_throughput",
    "placement": "benchmarks.placement",
    "lora_kernels": "benchmarks.lora_kernels",
    "adapter_load": "benchmarks.adapter_load",
    "lora_decode": "benchmarks.lora_decode",
}


def main(argv: list[str] | None = None) -> int:
    """Runs the named benchmarks (all when none are named) and returns an exit status."""
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    for name in names:
        status = importlib.import_module(BENCHMARKS[name]).main([])
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
