"""`make gpu-check` without a GPU: the CPU dry run, its report, and the arithmetic behind it."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks.gpu_check import preflight
from benchmarks.gpu_check.__main__ import PARTS, main
from benchmarks.gpu_check.kernel_timing import DRY_SHAPE
from benchmarks.gpu_check.model_shape import (
    LLAMA_8B,
    fit_layers,
    num_adapter_bytes,
    num_kv_bytes_per_token,
    num_weight_bytes,
)
from benchmarks.gpu_check.report import MET, NOT_MET, SKIPPED, target
from benchmarks.gpu_check.serving import DRY_PLAN
from benchmarks.gpu_check.timing import lora_bytes, roofline_ms

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _main(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(exit status, printed text, report.json, report.md) of one full CPU dry run."""
    folder = tmp_path_factory.mktemp("gpu-check")
    status, printed = _main("--cpu-dry-run", "--out", str(folder))
    return status, printed, json.loads((folder / "report.json").read_text()), (folder / "report.md").read_text()


@pytest.mark.slow
def test_dry_run_runs_every_part_and_passes(dry_run):
    status, printed, report, markdown = dry_run
    assert status == 0, printed
    assert report["mode"] == "cpu dry run" and report["is_passed"]
    assert [p["name"] for p in report["parts"]] == list(PARTS)
    by_name = {p["name"]: p for p in report["parts"]}
    assert by_name["kernels"]["status"] == "passed" and by_name["parity"]["status"] == "passed"
    assert all(row["is_match"] for row in by_name["kernels"]["rows"])
    assert all(row["is_match"] for row in by_name["parity"]["rows"])
    assert {row["distinct"] for row in by_name["decode"]["rows"]} == {0, 1, 4}
    assert report["machine"]["torch"] == torch.__version__
    # The table is printed and written: every part and every target has its line.
    for text in (printed, markdown):
        assert "# gpu-check (cpu dry run)" in text
        assert all(f"| {name} |" in text for name in PARTS)
    assert "dry run passed: report in" in printed


def test_dry_run_evaluates_every_target(dry_run):
    _, _, report, markdown = dry_run
    targets = report["targets"]
    timing = [t for t in targets if t["part"] == "timings"]
    # One roofline target per measured shape: ranks x (decode, prefill) x distinct counts.
    assert len(timing) == len(DRY_SHAPE["ranks"]) * 2 * len(DRY_SHAPE["distinct"])
    assert all(t["status"] in (MET, NOT_MET) and t["value"] > 0 for t in timing)
    decode = [t for t in targets if t["part"] == "decode"]
    assert len(decode) == 1 and decode[0]["status"] in (MET, NOT_MET)
    assert decode[0]["goal"] == ">= 0.85x"
    assert all(f"| {t['status']} |" in markdown for t in targets)
    timings = next(p for p in report["parts"] if p["name"] == "timings")
    for row in timings["rows"]:
        assert row["vs_roofline"] == pytest.approx(row["add_lora_ms"] / row["roofline_ms"], rel=0.05)


@pytest.mark.slow
def test_dry_run_serves_every_cell_through_grpc_without_losing_a_token(dry_run):
    # `lorafleet serve` on CPU driven over gRPC, against the engine stepped in process.
    _, _, report, _ = dry_run
    part = next(p for p in report["parts"] if p["name"] == "serving")
    assert part["status"] == "done", part
    assert [row["distinct"] for row in part["rows"]] == [0, 1, 8, 32]
    for row in part["rows"]:
        assert row["errors"] == 0
        expected = DRY_PLAN.num_requests * DRY_PLAN.output_len
        assert row["output_tokens"] == row["expected_tokens"] == expected
        assert row["server_tok_s"] > 0 and row["engine_tok_s"] > 0
        assert row["server_vs_engine"] == pytest.approx(
            row["server_tok_s"] / row["engine_tok_s"], rel=0.01)
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
        assert 0 < row["tpot_p50_ms"] <= row["tpot_p99_ms"]
    (goal,) = [t for t in report["targets"] if t["part"] == "serving"]
    assert goal["status"] in (MET, NOT_MET) and goal["goal"] == ">= 0.9x"
    assert goal["value"] == min(row["server_vs_engine"] for row in part["rows"])


def test_a_spent_budget_skips_parts_and_their_targets(tmp_path):
    status, printed = _main("--cpu-dry-run", "--budget-s", "0", "--parts", "timings", "decode",
                            "serving", "--out", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert status == 0, printed
    assert [p["status"] for p in report["parts"]] == ["skipped", "skipped", "skipped"]
    assert all("it would overrun" in p["skipped"][0] for p in report["parts"])
    # The GPU run's targets are still listed, each marked skipped rather than dropped.
    assert len(report["targets"]) == 2 * 2 * 4 + 1 + 1
    assert {t["status"] for t in report["targets"]} == {SKIPPED}


@pytest.mark.slow
def test_make_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    done = subprocess.run(["make", "-s", "gpu-check",
                           f"GPU_CHECK_ARGS=--budget-s 0 --out {tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    is_told = "no CUDA device: run it on a GPU machine; dry run" in done.stdout
    assert is_told == (not torch.cuda.is_available())
    assert (tmp_path / "report.md").exists()


def test_roofline_counts_the_bytes_a_lora_call_must_move():
    # 128 rows, hidden 4096, bf16: x read (1 MiB), y read and written (2 MiB); 32 rank-16
    # adapters' A and B (8 MiB); the fp32 intermediate written and read (16 KiB).
    num_bytes = lora_bytes(num_rows=128, in_features=4096, out_features=4096, num_distinct=32,
                           rank=16, element_size=2)
    assert num_bytes == (1 << 20) + (2 << 20) + (8 << 20) + (16 << 10)
    assert roofline_ms(3_000_000, 3e12) == pytest.approx(1e-3)


def test_8b_shape_arithmetic_matches_llama_3_8b():
    assert num_weight_bytes(LLAMA_8B, 2) == 8_030_261_248 * 2  # Llama-3-8B's parameter count
    assert num_adapter_bytes(LLAMA_8B, 16, 2) == 16 * 81920 * 32 * 2  # 84 MB at rank 16
    assert num_kv_bytes_per_token(LLAMA_8B, 2) == 128 << 10
    assert fit_layers(LLAMA_8B, 80 << 30, 5 << 30, 2) == 32  # an H100 holds all of it
    fitted = fit_layers(LLAMA_8B, 12 << 30, 1 << 30, 2)
    assert 0 < fitted < 32
    assert num_weight_bytes({**LLAMA_8B, "num_hidden_layers": fitted}, 2) + (1 << 30) <= (12 << 30) / 1.1
    assert fit_layers(LLAMA_8B, 1 << 30, 0, 2) == 0  # the embeddings alone need 2 GB


def test_targets_are_met_missed_or_skipped():
    assert target("t", 1.4, 1.5, is_upper_bound=True)["status"] == MET
    assert target("t", 1.6, 1.5, is_upper_bound=True)["status"] == NOT_MET
    assert target("t", 0.84, 0.85, is_upper_bound=False)["status"] == NOT_MET
    assert target("t", None, 0.85, is_upper_bound=False, note="no GPU")["status"] == SKIPPED


@pytest.mark.slow
def test_lorafleet_imports_from_the_checkout_where_it_is_not_installed():
    # The GPU machine's python has no lorafleet installed; the check must import it anyway.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if 'editable' not in repr(f).lower()]\n"
            "sys.path[:] = [p for p in sys.path if '__editable__' not in p]\n"
            "sys.path_importer_cache.clear()\n"
            "from benchmarks.gpu_check import preflight\n"
            "print(preflight.ensure_lorafleet_importable())\n"
            "import lorafleet.kernels.dispatch, lorafleet.inference.v1.inference_service_pb2\n"
            "print(lorafleet.kernels.dispatch.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    origin, kernels_file = done.stdout.split()
    assert origin == "checkout"
    assert pathlib.Path(kernels_file) == ROOT / "kernels" / "dispatch.py"


def test_a_child_python_imports_lorafleet_from_the_checkout():
    # The serving part's `lorafleet serve` (and its engine process) must find lorafleet in
    # the checkout where it is not installed, as the check does. -S leaves out
    # site-packages, where this venv installs it; sitecustomize, which Python imports at
    # start-up without -S, is then imported by hand.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", "/carried/wheels")
        env = {**os.environ, **preflight.checkout_env()}
    assert env["PYTHONPATH"].split(os.pathsep)[-1] == "/carried/wheels"
    code = ("import importlib.util, sitecustomize\n"
            "print(importlib.util.find_spec('lorafleet.clients.cli').origin)")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd="/", env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pathlib.Path(done.stdout.strip()) == ROOT / "clients" / "cli.py"
    # Where lorafleet is installed, as here, a child needs nothing added.
    assert preflight.ensure_lorafleet_importable() == "installed"
    assert preflight.child_env() == {}


def test_the_checkout_finder_maps_the_folders_setup_py_maps():
    tree = ast.parse((ROOT / "setup.py").read_text())
    mapped = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "COMPONENTS")
    assert mapped == preflight.COMPONENTS


def test_decode_kv_budget_is_on_top_of_the_adapter_slots(tmp_path):
    # On the H200 the 8B shape's 32 adapter slots (2.7 GB) were taken out of the 2 GiB KV
    # budget, leaving no block: the part broke. The KV cache must keep the plan's bytes.
    from benchmarks.gpu_check import decode
    from benchmarks.gpu_check.model_shape import TINY, write_config
    from lorafleet.dataplane.model.config import ModelConfig
    from lorafleet.dataplane.model.demo import write_adapter
    from lorafleet.dataplane.runner.kv_cache import bytes_per_block

    plan = {**decode.DRY_PLAN, "kv_bytes": 256 << 10}
    model_dir = write_config(tmp_path / "model", TINY)
    adapter_dirs = [write_adapter(tmp_path / f"a{i}", model_dir, rank=decode.RANK,
                                  alpha=2 * decode.RANK, target_modules="all-linear", seed=i)
                    for i in range(4)]
    assert 4 * num_adapter_bytes(TINY, decode.RANK, 4) > plan["kv_bytes"]
    holder, digests = decode._build(model_dir, adapter_dirs, torch.device("cpu"), plan)
    try:
        allocator = holder.engine.scheduler.allocator
        block_bytes = bytes_per_block(ModelConfig.from_dir(model_dir), allocator.block_size,
                                      torch.float32)
        assert allocator.num_blocks * block_bytes >= plan["kv_bytes"]
        assert len(digests) == 4
    finally:
        holder.host.close()
