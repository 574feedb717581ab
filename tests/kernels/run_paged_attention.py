"""Runs the paged-attention launcher on saved cases; started by test_paged_attention.py.

    TRITON_INTERPRET=1 python -m tests.kernels.run_paged_attention CASES_IN RESULTS_OUT

Each case holds q, caches that already hold the step's keys and values, the fields of a
`PagedAttentionBatch` and a partition size. Its own process, because Triton picks
interpreter or compiler when a kernel is decorated (see run_triton.py).
"""

from __future__ import annotations

import os
import sys

import torch

BATCH_FIELDS = ("block_tables", "context_lens", "query_start_loc", "num_decodes",
                "max_query_len", "sliding_window")


def main(cases_path: str, results_path: str) -> None:
    """Runs each case and saves {case name: out}."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    from lorafleet.kernels.attention_batch import PagedAttentionBatch
    from lorafleet.kernels.paged_attention import paged_attention_triton

    results = {}
    for name, case in torch.load(cases_path).items():
        batch = PagedAttentionBatch(**{field: case[field] for field in BATCH_FIELDS})
        results[name] = paged_attention_triton(case["q"], case["k_cache"], case["v_cache"],
                                               batch=batch, partition_size=case["partition_size"])
    torch.save(results, results_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
