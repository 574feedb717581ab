"""The Triton paged-attention kernels, run by Triton's CPU interpreter, against the torch path.

Each case is one step laid out by the runner's BatchBuilder: decodes at context lengths
around block and partition boundaries, prompts from position 0, chunks that start past
it, decodes and chunks mixed, GQA ratios 1 to 8 (and 3, with a head dim that is not a
power of two), sliding windows, the split (flash-decoding) decode path, a strided q, in
fp32, bf16 and fp16. Blocks are scattered over a cache full of random values.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from lorafleet.kernels.attention_batch import PagedAttentionBatch
from tests.kernels.attention_cases import (
    AttentionSpec,
    step_metadata,
    step_tensors,
    store_step_kv,
    torch_attention,
)
from tests.kernels.run_paged_attention import BATCH_FIELDS

ROOT = pathlib.Path(__file__).resolve().parents[2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# 16-bit outputs are off by up to one unit in the last place: the interpreter truncates
# fp32 to bf16 where a GPU rounds to nearest.
TOLERANCE = {"fp32": (2e-5, 2e-5), "bf16": (1e-2, 1e-2), "fp16": (2e-3, 2e-3)}
# Decodes: context 1, block_size - 1, block_size, block_size + 1, several blocks, and past
# one and two 32-key partitions.
DECODES_16 = tuple((context - 1, 1) for context in (1, 15, 16, 17, 40, 75))
DECODES_4 = tuple((context - 1, 1) for context in (1, 3, 4, 5, 13, 50))
PROMPTS = tuple((0, n) for n in (1, 2, 3, 4, 5, 8, 37))
CHUNKS = ((3, 5), (4, 4), (5, 11), (16, 20), (33, 7))
MIXED = DECODES_4 + ((0, 7), (9, 12), (20, 33))
SPECS = {
    "decode-gqa1": AttentionSpec(DECODES_16, num_heads=2, block_size=16),
    "decode-gqa2-split": AttentionSpec(DECODES_16, block_size=16, partition_size=32),
    "decode-gqa4-window-split": AttentionSpec(DECODES_16, num_heads=8, block_size=16,
                                              sliding_window=20, partition_size=32),
    "decode-gqa8": AttentionSpec(DECODES_4, num_heads=16),
    "decode-gqa3-dim24-split": AttentionSpec(DECODES_16, num_heads=6, head_dim=24,
                                             block_size=8, partition_size=32),
    "prefill-from-0": AttentionSpec(PROMPTS),
    "prefill-chunks": AttentionSpec(CHUNKS, num_heads=8),
    "mixed": AttentionSpec(MIXED),
    "mixed-window": AttentionSpec(MIXED, sliding_window=6),
    "mixed-gqa8-window-split": AttentionSpec(MIXED, num_heads=16, sliding_window=9,
                                             partition_size=32),
    "mixed-gqa3-dim24-strided-q": AttentionSpec(MIXED, num_heads=6, head_dim=24,
                                                is_q_strided=True),
}
BF16_CASES = ("decode-gqa4-window-split", "prefill-chunks", "mixed", "mixed-window")
CASE_NAMES = (tuple(f"{name}-fp32" for name in SPECS) + tuple(f"{n}-bf16" for n in BF16_CASES)
              + ("mixed-window-fp16",))


def _case(name: str) -> dict:
    spec_name, dtype_name = name.rsplit("-", 1)
    spec = SPECS[spec_name]
    meta = step_metadata(spec, "cpu")
    tensors = step_tensors(spec, DTYPES[dtype_name], "cpu")
    expected = torch_attention(tensors, meta)
    store_step_kv(tensors, meta)
    fields = {field: getattr(meta.paged, field) for field in BATCH_FIELDS}
    return {"q": tensors["q"], "k_cache": tensors["k_cache"], "v_cache": tensors["v_cache"],
            "partition_size": spec.partition_size, **fields, "expected": expected}


@pytest.fixture(scope="module")
def cases():
    """Every case with its inputs and the torch path's fp32 output."""
    return {name: _case(name) for name in CASE_NAMES}


@pytest.fixture(scope="module")
def triton_results(cases, tmp_path_factory):
    """Every case run once through the Triton launcher in an interpreter subprocess."""
    folder = tmp_path_factory.mktemp("paged-attention")
    cases_path, results_path = folder / "cases.pt", folder / "results.pt"
    torch.save({name: {k: v for k, v in case.items() if k != "expected"}
                for name, case in cases.items()}, cases_path)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.kernels.run_paged_attention", str(cases_path),
         str(results_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(results_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_triton_kernels_match_the_torch_path(cases, triton_results, name):
    case, out = cases[name], triton_results[name]
    atol, rtol = TOLERANCE[name.rsplit("-", 1)[1]]
    assert out.dtype == case["q"].dtype and out.shape == case["q"].shape
    torch.testing.assert_close(out.float(), case["expected"], atol=atol, rtol=rtol)


def test_cases_cross_what_they_claim():
    decode = step_metadata(SPECS["decode-gqa2-split"], "cpu").paged
    assert decode.num_prefills == 0 and decode.num_decodes == len(DECODES_16)
    # The longest decode spans three 32-key partitions, so the combine runs.
    assert decode.block_tables.shape[1] * 16 > 2 * 32
    chunks = step_metadata(SPECS["prefill-chunks"], "cpu").paged
    assert chunks.num_decodes == 0 and min(start for start, _ in CHUNKS) > 0
    mixed = step_metadata(SPECS["mixed"], "cpu").paged
    assert mixed.num_decodes == len(DECODES_4) and mixed.num_prefills == 3
    # Every sequence's blocks are scattered: no table is a run of consecutive blocks.
    for table, context in zip(mixed.block_tables.tolist(), mixed.context_lens.tolist(),
                              strict=True):
        used = table[:-(-context // 4)]
        assert len(used) == 1 or used != list(range(used[0], used[0] + len(used)))
    # The windows are narrower than the contexts: they change what a query sees.
    spec = SPECS["mixed-window"]
    tensors = step_tensors(spec, torch.float32, "cpu")
    windowed = torch_attention(tensors, step_metadata(spec, "cpu"))
    full = torch_attention(tensors, step_metadata(SPECS["mixed"], "cpu"))
    assert not torch.allclose(windowed, full)


def test_the_builder_describes_a_step_as_flat_tensors():
    # Plan order: a chunk (start 5, 3 new), a decode at position 9, a prompt of 2 tokens.
    spec = AttentionSpec(((5, 3), (9, 1), (0, 2)), block_size=4)
    paged = step_metadata(spec, "cpu").paged
    # Decodes come first; contexts count this step's tokens.
    assert paged.context_lens.tolist() == [10, 8, 2]
    assert paged.query_start_loc.tolist() == [0, 1, 4, 6]
    assert (paged.num_decodes, paged.num_prefills, paged.max_query_len) == (1, 2, 3)
    assert paged.block_tables.shape == (3, 3)  # the longest context needs 3 blocks of 4
    assert paged.block_tables[2, 1:].tolist() == [0, 0]  # padding past a table's blocks
    assert all(t.dtype == torch.int32 for t in (paged.block_tables, paged.context_lens,
                                                paged.query_start_loc))


def test_cpu_steps_build_only_the_torch_description():
    spec = AttentionSpec(MIXED)
    default = step_metadata(spec, "cpu", is_paged=None)
    assert default.paged is None
    assert default.decodes and default.prefills
    both = step_metadata(spec, "cpu", is_paged=True)
    assert both.paged is not None and both.decodes and both.prefills


def test_from_sequences_refuses_queries_past_the_context():
    with pytest.raises(ValueError, match="3 queries for 2 tokens"):
        PagedAttentionBatch.from_sequences([[0]], [2], [3])


# sys.modules[name] = None makes `import name` raise ImportError, as on an install without it.
NO_TRITON_SCRIPT = """
import sys
sys.modules["triton"] = None
sys.modules["triton.language"] = None
import torch
from lorafleet.kernels.paged_attention import paged_attention_triton
from lorafleet.kernels.triton_support import is_triton_available
from tests.kernels.attention_cases import AttentionSpec, step_metadata, step_tensors, torch_attention
assert not is_triton_available()
spec = AttentionSpec(((0, 5), (3, 1)))
tensors = step_tensors(spec, torch.float32, "cpu")
out = torch_attention(tensors, step_metadata(spec, "cpu"))
print(tuple(out.shape), bool(out.isfinite().all()))
try:
    paged_attention_triton(tensors["q"], tensors["k_cache"], tensors["v_cache"],
                           batch=step_metadata(spec, "cpu").paged)
except RuntimeError as error:
    print(error)
"""


@pytest.mark.slow
def test_attention_imports_and_runs_on_cpu_without_triton():
    done = subprocess.run([sys.executable, "-c", NO_TRITON_SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines == ["(6, 4, 16) True",
                     "paged_attention_triton needs Triton, which is not installed"]
