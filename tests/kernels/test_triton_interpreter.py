"""The Triton SGMV/BGMV kernels, run by Triton's CPU interpreter, against the fp32 reference.

The interpreter is slow, so shapes are tiny; they still cross every mask: in/out features
that are not multiples of the blocks, segments longer than one 16-row tile, three slices
of different widths with different ranks per slice, slices an adapter leaves alone, ranks
below max_rank with NaN padding (never read), an empty slot, and rows without an adapter.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tests.kernels.cases import filled_buffers, reference_lora, request_slots, token_slots

ROOT = pathlib.Path(__file__).resolve().parents[2]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": (1e-5, 1e-5), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 2e-2)}
# Per slot, the rank of each of three slices (q|k|v-like, columns 40 + 20 + 12); 0: the
# adapter leaves that slice alone. Slot 3 is empty. "one"-slice cases use the first slice.
RANKS = [(4, 0, 4), (16, 16, 16), (8, 2, 0), (0, 0, 0)]
SLICE_SIZES = (40, 20, 12)
MAX_RANK = 16
BUFFER_FIELDS = ("lora_a", "lora_b", "scale", "ranks", "slice_starts", "slice_sizes")


def _slots(kernel: str) -> list[int | None]:
    if kernel == "bgmv":  # one row per request, distinct adapters
        return [2, None, 0, 3, 1, None]
    per_request = request_slots("skewed", 5, len(RANKS), seed=1)
    return token_slots(per_request, [3, 20, 1, 7, 5])


def _case(kernel: str, dtype_name: str, slicing: str = "three") -> dict:
    dtype = DTYPES[dtype_name]
    if slicing == "one":
        ranks, sizes = [slot_ranks[0] for slot_ranks in RANKS], sum(SLICE_SIZES)
    else:
        ranks, sizes = RANKS, SLICE_SIZES
    buffers = filled_buffers(ranks, MAX_RANK, 80, sizes, dtype, seed=2)
    for slot in range(buffers.num_slots):  # padding the kernels must never read
        for index, columns in enumerate(buffers.slice_columns):
            rank = int(buffers.ranks[slot, index])
            buffers.slice_a(slot, index)[rank:] = float("nan")
            buffers.lora_b[slot, rank:, columns] = float("nan")
    slots = _slots(kernel)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(len(slots), 80, generator=gen).to(dtype)
    y = torch.randn(len(slots), sum(SLICE_SIZES), generator=gen).to(dtype)
    fields = {name: getattr(buffers, name) for name in BUFFER_FIELDS}
    return {"kernel": kernel, "slots": slots, "x": x, "y": y, **fields,
            "expected": reference_lora(y, x, buffers, slots)}


CASE_NAMES = (tuple(f"{k}-{d}" for k in ("sgmv", "bgmv") for d in DTYPES)
              + ("sgmv-fp32-one", "bgmv-fp32-one"))


@pytest.fixture(scope="module")
def cases():
    """Every (kernel, dtype) case with its inputs and fp32 expected output."""
    return {name: _case(*name.split("-")) for name in CASE_NAMES}


@pytest.fixture(scope="module")
def triton_results(cases, tmp_path_factory):
    """Every case run once through the Triton launchers in an interpreter subprocess."""
    folder = tmp_path_factory.mktemp("triton")
    cases_path, results_path = folder / "cases.pt", folder / "results.pt"
    torch.save({name: {k: v for k, v in case.items() if k != "expected"}
                for name, case in cases.items()}, cases_path)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.kernels.run_triton", str(cases_path), str(results_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(results_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_triton_kernel_matches_fp32_reference(cases, triton_results, name):
    case, y = cases[name], triton_results[name]
    atol, rtol = TOLERANCE[name.split("-")[1]]
    assert y.dtype == case["y"].dtype
    torch.testing.assert_close(y.float(), case["expected"], atol=atol, rtol=rtol)
    untouched = [row for row, slot in enumerate(case["slots"])
                 if slot is None or not any(RANKS[slot])]
    assert untouched, "the case should include rows that get nothing added"
    assert torch.equal(y[untouched], case["y"][untouched])
    if name.endswith("-one"):
        return
    # Columns of a slice the row's adapter leaves alone are untouched too (slot 0: k).
    row = case["slots"].index(0)
    k_columns = slice(SLICE_SIZES[0], SLICE_SIZES[0] + SLICE_SIZES[1])
    assert torch.equal(y[row, k_columns], case["y"][row, k_columns])


def test_cases_cover_both_kernel_kinds():
    from lorafleet.kernels.batch import LoraBatch

    sgmv, bgmv = LoraBatch.from_slots(_slots("sgmv")), LoraBatch.from_slots(_slots("bgmv"))
    assert bgmv.is_bgmv and not sgmv.is_bgmv
    assert sgmv.max_segment_length > 16, "SGMV case should span several row tiles"
