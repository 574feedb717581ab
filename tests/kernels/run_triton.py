"""Runs the Triton launchers on saved cases; started by test_triton_interpreter.py.

    TRITON_INTERPRET=1 python -m tests.kernels.run_triton CASES_IN RESULTS_OUT

Triton picks interpreter or compiler when a kernel is decorated, so this runs in its own
process with the variable set before lorafleet.kernels is imported; the rest of the suite
keeps its normal environment.
"""

from __future__ import annotations

import os
import sys

import torch

BUFFER_FIELDS = ("lora_a", "lora_b", "scale", "ranks", "slice_starts", "slice_sizes")


def main(cases_path: str, results_path: str) -> None:
    """Applies each case's kernel to its y and saves {case name: y}."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    from lorafleet.kernels.batch import LoraBatch
    from lorafleet.kernels.bgmv import bgmv_triton
    from lorafleet.kernels.buffers import LoraBuffers
    from lorafleet.kernels.sgmv import sgmv_triton

    kernels = {"sgmv": sgmv_triton, "bgmv": bgmv_triton}
    results, batches = {}, {}
    for name, case in torch.load(cases_path).items():
        y = case["y"].clone()
        buffers = LoraBuffers(**{name: case[name] for name in BUFFER_FIELDS})
        # Cases with the same rows share one batch, as a step's layers and projection
        # groups do, and with it the shrink's workspace: wider and narrower groups, in
        # every dtype, one after another over what the previous call left in it.
        key = (case["kernel"], tuple(case["slots"]))
        batch = batches.setdefault(key, LoraBatch.from_slots(case["slots"]))
        kernels[case["kernel"]](y, case["x"], buffers, batch=batch)
        results[name] = y
    torch.save(results, results_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
