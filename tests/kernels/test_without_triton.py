"""A CPU-only install (no Triton: the `worker` extra does not bring it) still serves LoRA."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]

# sys.modules[name] = None makes `import name` raise ImportError, as on an install without it.
SCRIPT = """
import sys
sys.modules["triton"] = None
sys.modules["triton.language"] = None
import torch
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora
from lorafleet.kernels.sgmv import sgmv_triton
from lorafleet.kernels.triton_support import is_triton_available
assert not is_triton_available()
buffers = LoraBuffers.allocate(num_slots=1, max_rank=4, in_features=8, out_features=8,
                               dtype=torch.float32)
buffers.write_slot(0, [(torch.ones(4, 8), torch.ones(8, 4), 0.5)])
y = torch.zeros(2, 8)
batch = LoraBatch.from_slots([0, None])
add_lora(y, torch.ones(2, 8), buffers, batch=batch)
print(y[0, 0].item(), y[1, 0].item())
try:
    sgmv_triton(y, torch.ones(2, 8), buffers, batch=batch)
except RuntimeError as error:
    print(error)
"""


def test_kernels_import_and_run_on_cpu_without_triton():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    # Row 0: 0.5 * (ones(8) @ ones(8, 4)) @ ones(4, 8) = 0.5 * 8 * 4 = 16; row 1 has no adapter.
    assert lines[0] == "16.0 0.0"
    assert lines[1] == "sgmv_triton needs Triton, which is not installed"
