"""Runs the benchmarks.

    python -m benchmarks                          # every benchmark, full size
    python -m benchmarks --quick                  # every benchmark's short version (make bench)
    python -m benchmarks placement lora_decode    # these, full size
    python -m benchmarks --quick serving          # this one, short
    python -m benchmarks serving --preset thrash  # one benchmark with its own options
    python -m benchmarks serving --help           # a benchmark's options
"""

from __future__ import annotations

import importlib
import os
import sys
import time

# name -> module with `main(argv=None)`.
BENCHMARKS: dict[str, str] = {
    "engine_throughput": "benchmarks.engine_throughput",
    "placement": "benchmarks.placement",
    "lora_kernels": "benchmarks.lora_kernels",
    "adapter_load": "benchmarks.adapter_load",
    "lora_decode": "benchmarks.lora_decode",
    "serving": "benchmarks.serving",
    "noisy_neighbour": "benchmarks.noisy_neighbour",
    "cpu_matmul": "benchmarks.cpu_matmul",
    "profile_layers": "benchmarks.profile_layers",
    "vllm_compare": "benchmarks.vllm_compare",
    "soak": "benchmarks.soak",
}
# The options of each benchmark's short version (--quick), chosen so that all of them
# together take a few minutes on the 2-core dev machine.
QUICK: dict[str, list[str]] = {
    "engine_throughput": ["--concurrency", "8", "--workloads", "uniform"],
    "placement": ["--versions", "1000", "--workers", "20"],
    "lora_kernels": ["--quick"],
    "adapter_load": ["--ranks", "16", "--repeats", "1"],
    "lora_decode": ["--quick"],
    "serving": ["--quick"],
    "noisy_neighbour": ["--quick"],
    "cpu_matmul": ["--quick"],
    "profile_layers": ["--quick"],
    "vllm_compare": ["--quick", "--no-peft"],  # serving's adapters preset has peft
    "soak": ["--quick"],
}
USAGE = "usage: python -m benchmarks [--quick] [NAME ...] | NAME [OPTION ...]"


def plan(argv: list[str]) -> list[tuple[str, list[str]]] | str:
    """(benchmark, its options) to run in order, or the message for a usage mistake.

    Leading names are benchmarks; once an option follows a single name, every word from
    there on is that benchmark's. `--quick` (first, or last after several names) runs each
    named (or every) benchmark's short version."""
    is_quick = bool(argv) and argv[0] == "--quick"
    words = argv[1:] if is_quick else list(argv)
    names = []
    while words and not words[0].startswith("-"):
        names.append(words.pop(0))
    if words == ["--quick"] and len(names) != 1:  # `NAME NAME --quick` means the same
        is_quick, words = True, []
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        return f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
    if words and len(names) != 1:
        return (f"{USAGE}\noptions ({' '.join(words)}) go to exactly one named benchmark, "
                "e.g. python -m benchmarks serving --preset thrash")
    names = names or list(BENCHMARKS)
    return [(name, (QUICK[name] if is_quick else []) + words) for name in names]


def main(argv: list[str] | None = None) -> int:
    """Runs the planned benchmarks and returns an exit status (the first non-zero one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\nbenchmarks: {', '.join(BENCHMARKS)}\n{__doc__}")
        return 0
    runs = plan(argv)
    if isinstance(runs, str):
        print(runs, file=sys.stderr)
        return 2
    started = time.monotonic()
    for name, options in runs:
        print(f"\n=== {name} {' '.join(options)}".rstrip(), flush=True)
        began = time.monotonic()
        status = importlib.import_module(BENCHMARKS[name]).main(options)
        print(f"=== {name}: {time.monotonic() - began:.0f} s", flush=True)
        if status:
            return status
    if len(runs) > 1:
        print(f"\n=== {len(runs)} benchmarks in {time.monotonic() - started:.0f} s "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
