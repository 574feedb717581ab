"""The format checks import no torch, so torch-free code (engine core) can use them."""

from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "lorafleet.dataplane.adapters",
    "lorafleet.dataplane.adapters.structure",
    "lorafleet.dataplane.adapters.sources",
    "lorafleet.dataplane.adapters.report",
]


def test_structure_checks_run_without_torch(plain_adapter, base_dir):
    code = "\n".join(
        [
            "import sys, pathlib",
            *(f"import {name}" for name in PURE_MODULES),
            "from lorafleet.dataplane.adapters.structure import plan_adapter",
            "from lorafleet.dataplane.model.config import ModelConfig",
            f"config = ModelConfig.from_dir({str(base_dir)!r})",
            f"plan, _, problems = plan_adapter(pathlib.Path({str(plain_adapter)!r}), config,"
            " max_lora_rank=8)",
            "assert problems == [] and plan.target_modules == ('q_proj', 'v_proj'), problems",
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
