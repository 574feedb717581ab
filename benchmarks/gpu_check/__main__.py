"""make gpu-check: the CUDA path proven on one GPU, with a JSON and markdown report.

    python -m benchmarks.gpu_check                 # on a CUDA machine: every part
    python -m benchmarks.gpu_check --cpu-dry-run   # anywhere: every part, tiny, on CPU
    python -m benchmarks.gpu_check --parts timings decode --budget-s 300

Parts in order, each under its own time cap and the whole run's budget (a step that would
overrun is skipped and the report says so): kernels (compiled Triton against the fp32
reference), attention (the paged-attention kernels against the torch path, and decode
attention's time against reading the KV cache once), parity (engine greedy decoding on
the GPU against transformers), timings (SGMV/BGMV against the HBM roofline and a
per-adapter loop), decode (Llama-8B-shaped model, 0/1/8/32 distinct adapters), graphs
(decode steps from CUDA graphs: every bucket and adapters loaded after capture, token for
token; a step's time replayed against eager), serving (`lorafleet serve` on the device
driven over gRPC, 32 in flight, 0/1/8/32 distinct adapters: tokens/s against the same
requests in the engine in process, TTFT and TPOT). The report goes to $OUT when set, else
benchmarks/results/gpu/ (report.json, report.md); the table is also printed. Without a
CUDA device it prints one line saying so, runs the dry run, and exits 0 when that passes.
Exit status: 0 when every part passed or finished (targets missed are findings, not
failures), 1 when a check failed or a part broke, 2 when packages are missing.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import pathlib
import platform
import sys
import time
import traceback

from benchmarks.gpu_check import preflight

# name -> module with CAP_S and run(device, clock, *, is_dry_run) -> dict.
PARTS = {"kernels": "benchmarks.gpu_check.kernel_tests",
         "attention": "benchmarks.gpu_check.attention", "parity": "benchmarks.gpu_check.parity",
         "timings": "benchmarks.gpu_check.kernel_timing", "decode": "benchmarks.gpu_check.decode",
         "graphs": "benchmarks.gpu_check.graphs", "serving": "benchmarks.gpu_check.serving"}
DEFAULT_BUDGET_S = 450.0  # 7.5 minutes: the check must end inside 8 on one H100
MIN_PART_S = 10.0


def _parse(argv):
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=doc[0],
                                     epilog="\n\n".join(doc[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every part at tiny shapes on CPU, even where CUDA is present")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS),
                        help="the parts to run (default: all, in the order listed)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole run may take (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--out", type=pathlib.Path,
                        help="report folder (default: $OUT, else benchmarks/results/gpu/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the check (or the dry run), writes and prints the report; returns the status."""
    args = _parse(argv)
    origin = preflight.ensure_lorafleet_importable()
    missing = preflight.missing_packages()
    if missing:
        print(f"gpu-check: missing Python packages: {', '.join(missing)}; {preflight.CARRY_HINT}")
        return 2
    import torch

    from benchmarks.gpu_check.report import Report, report_dir, write_report

    problem = preflight.cuda_problem()
    is_dry_run = args.cpu_dry_run or not torch.cuda.is_available()
    if is_dry_run and not args.cpu_dry_run:
        print(f"gpu-check: {problem or 'no CUDA device: run it on a GPU machine'}; "
              "dry run: every part at tiny shapes on CPU instead", flush=True)
    device = torch.device("cpu" if is_dry_run else "cuda")
    report = Report(mode="cpu dry run" if is_dry_run else "cuda",
                    machine=_machine(torch, device, origin))
    deadline = time.monotonic() + args.budget_s
    for name in args.parts:
        report.parts.append(run_part(name, device, is_dry_run, deadline))
    json_path, md_path = write_report(report, args.out or report_dir())
    print(report.to_markdown())
    verdict = "passed" if report.is_passed() else "FAILED"
    lead = "no CUDA device: run it on a GPU machine; dry run" if is_dry_run and not args.cpu_dry_run \
        else report.mode
    print(f"gpu-check: {lead} {verdict}: report in {md_path} and {json_path}")
    return 0 if report.is_passed() else 1


def run_part(name: str, device, is_dry_run: bool, run_deadline: float) -> dict:
    """Runs one part under its cap; a part that raises is reported as broken, not fatal."""
    from benchmarks.gpu_check.report import PartClock

    try:
        module = importlib.import_module(PARTS[name])
    except ModuleNotFoundError as error:  # one preflight.NEEDED does not list yet
        return {"name": name, "status": "broken", "seconds": 0.0, "skipped": [], "targets": [],
                "notes": [f"missing module {error.name}: {preflight.CARRY_HINT}"]}
    clock = PartClock(module.CAP_S, run_deadline)
    print(f"gpu-check: {name} (cap {module.CAP_S:.0f} s)", flush=True)
    if not clock.can_start(MIN_PART_S):
        clock.skip(f"part {name}")
        result = {"status": "skipped"}
    else:
        try:
            result = module.run(device, clock, is_dry_run=is_dry_run)
        except Exception as error:  # noqa: BLE001 (one broken part must not hide the others)
            result = {"status": "broken", "notes": [f"{type(error).__name__}: {error}"[:300]],
                      "traceback": traceback.format_exc()[-4000:]}
    _release_memory(device)
    result.setdefault("targets", [])
    if result["status"] in ("skipped", "broken") and hasattr(module, "unmeasured_targets"):
        result["targets"] = module.unmeasured_targets(f"part {result['status']}")
    return {"name": name, "seconds": round(clock.elapsed(), 1), "cap_s": module.CAP_S,
            "skipped": clock.skipped, "notes": [], **result}


def _machine(torch, device, origin: str) -> dict:
    from benchmarks.results import machine_info

    info = machine_info()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu_model"]
    triton = importlib.import_module("triton").__version__ if _has("triton") else None
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton, "python": platform.python_version(), "commit": info["commit"],
            "host": info["hostname"], "lorafleet": origin}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _release_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
