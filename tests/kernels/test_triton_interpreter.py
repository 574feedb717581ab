"""The Triton SGMV/BGMV kernels, run by Triton's CPU interpreter, against the fp32 reference.

The interpreter is slow, so shapes are tiny; they still cross every mask: in/out features
that are not multiples of the blocks, segments longer than one 16-row tile, ranks below
max_rank with NaN padding (never read), an empty slot, and rows without an adapter.
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
RANKS = [4, 16, 8, 0]  # slot 3 is empty
MAX_RANK = 16


def _slots(kernel: str) -> list[int | None]:
    if kernel == "bgmv":  # one row per request, distinct adapters
        return [2, None, 0, 3, 1, None]
    per_request = request_slots("skewed", 5, len(RANKS), seed=1)
    return token_slots(per_request, [3, 20, 1, 7, 5])


def _case(kernel: str, dtype_name: str) -> dict:
    dtype = DTYPES[dtype_name]
    buffers = filled_buffers(RANKS, MAX_RANK, 80, 72, dtype, seed=2)
    for slot, rank in enumerate(RANKS):
        buffers.lora_a[slot, rank:] = float("nan")
        buffers.lora_b[slot, :, rank:] = float("nan")
    slots = _slots(kernel)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(len(slots), 80, generator=gen).to(dtype)
    y = torch.randn(len(slots), 72, generator=gen).to(dtype)
    return {"kernel": kernel, "slots": slots, "x": x, "y": y, "lora_a": buffers.lora_a,
            "lora_b": buffers.lora_b, "scale": buffers.scale, "ranks": buffers.ranks,
            "expected": reference_lora(y, x, buffers, slots)}


CASE_NAMES = tuple(f"{k}-{d}" for k in ("sgmv", "bgmv") for d in DTYPES)


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


@pytest.mark.parametrize("name", CASE_NAMES)
def test_triton_kernel_matches_fp32_reference(cases, triton_results, name):
    case, y = cases[name], triton_results[name]
    atol, rtol = TOLERANCE[name.split("-")[1]]
    assert y.dtype == case["y"].dtype
    torch.testing.assert_close(y.float(), case["expected"], atol=atol, rtol=rtol)
    untouched = [row for row, slot in enumerate(case["slots"]) if slot is None or RANKS[slot] == 0]
    assert untouched, "the case should include rows that get nothing added"
    assert torch.equal(y[untouched], case["y"][untouched])


def test_cases_cover_both_kernel_kinds():
    from lorafleet.kernels import LoraBatch

    sgmv, bgmv = LoraBatch.from_slots(_slots("sgmv")), LoraBatch.from_slots(_slots("bgmv"))
    assert bgmv.is_bgmv and not sgmv.is_bgmv
    assert sgmv.max_segment_length > 16, "SGMV case should span several row tiles"
