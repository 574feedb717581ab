"""The Triton kernels compile for a real CUDA target (sm_80), checked on this CPU-only machine."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_kernel_compiles_to_a_cubin_in_every_dtype(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1", LORAFLEET_TRITON="1")
    done = subprocess.run([sys.executable, "-m", "tests.kernels.compile_cuda"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    kernels = ("_sgmv_shrink_kernel", "_sgmv_expand_kernel", "_bgmv_shrink_kernel", "_bgmv_expand_kernel",
               "_decode_kernel", "_decode_combine_kernel", "_prefill_kernel")
    assert sorted(sizes) == sorted(f"{d} {k}" for d in ("fp32", "fp16", "bf16") for k in kernels)
    assert all(size > 0 for size in sizes.values())
