"""The gpu-check's attention part without a GPU: its dry run and its byte arithmetic."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.gpu_check.__main__ import main
from benchmarks.gpu_check.attention import SPECS_8B, kv_bytes
from benchmarks.gpu_check.report import MET, NOT_MET, SKIPPED

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp_path, *argv: str) -> tuple[int, dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["--cpu-dry-run", "--parts", "attention", "--out", str(tmp_path), *argv])
    return status, json.loads((tmp_path / "report.json").read_text())


@pytest.mark.slow
def test_dry_run_checks_every_case_and_times_decode(tmp_path):
    status, report = _run(tmp_path)
    assert status == 0
    (part,) = report["parts"]
    assert part["status"] == "passed"
    checks = [row for row in part["rows"] if "is_match" in row]
    assert len(checks) >= 15 and all(row["is_match"] for row in checks)
    timings = [row for row in part["rows"] if row["case"].startswith("decode timing")]
    assert timings and all(row["called_ms"] > 0 and row["kv_read_ms"] > 0 for row in timings)
    (goal,) = report["targets"]
    assert goal["status"] in (MET, NOT_MET) and goal["goal"] == "<= 1.5x"


def test_a_spent_budget_still_lists_the_attention_target(tmp_path):
    status, report = _run(tmp_path, "--budget-s", "0")
    assert status == 0
    assert [t["status"] for t in report["targets"]] == [SKIPPED]


def test_decode_reads_every_cached_key_and_value_once():
    # 32 sequences at contexts 1,024, 1,056, ..., 2,016: 48,640 tokens, each with keys and
    # values of 8 KV heads x 128 dims in bf16 (4 KiB a token): 199 MB, ~60 us at 3.35 TB/s.
    spec = SPECS_8B["8b-decode"]
    assert sum(start + 1 for start, _ in spec.seqs) == 48_640
    assert kv_bytes(spec, 2) == 48_640 * 4096


# The kernel rows, as on CUDA, with the kernels run by Triton's interpreter on CPU.
TIMING_SCRIPT = """
import json, time, torch
from benchmarks.gpu_check.attention import time_decode
from benchmarks.gpu_check.report import PartClock
rows, goal, note = time_decode(torch.device("cpu"), PartClock(120, time.monotonic() + 120), True)
print(json.dumps({"rows": rows, "target": goal}))
"""


@pytest.mark.slow
def test_decode_timings_time_the_kernels_at_every_partition_size():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", TIMING_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    labels = [row["case"].removeprefix("decode timing: ") for row in result["rows"]]
    assert labels == ["kernels, partition 256", "kernels, partition 512",
                      "kernels, partition 1024", "kernels, unsplit", "paged_attention, torch"]
    assert all(row["called_ms"] > 0 for row in result["rows"])
    assert result["target"]["note"] == "decode timing: kernels, partition 512"
