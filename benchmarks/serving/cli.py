"""Serving benchmark: what a user of lorafleet meets, measured through gRPC (or OpenAI HTTP).

Starts `lorafleet serve` on a generated checkpoint with generated PEFT adapters (or drives
the worker or gateway at --addr) and sends seeded requests: open-loop Poisson arrivals
(--rate) or a closed loop (--concurrency); Zipf adapter popularity plus a base-model share;
prompt and output lengths fixed, uniform or lognormal. Reports output tokens/s, requests/s,
TTFT, TPOT and end-to-end latency at p50/p90/p99, the tier each request's adapter was in
when it was sent, adapter loads and evictions (/metrics), and client and worker CPU time.
Presets measure named scenarios (see docs/benchmarks.md). JSON lines and PNG plots go to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

from benchmarks.results import RESULTS_DIR, append_rows, describe_machine
from benchmarks.serving import (
    plots,
    scenario_adapters,
    scenario_cold,
    scenario_contention,
    scenario_load,
    scenario_prefix,
    scenario_ranks,
)
from benchmarks.serving.checkpoint import SHAPES
from benchmarks.serving.context import Context
from benchmarks.serving.references import on_thread
from benchmarks.serving.transports import TRANSPORTS
from benchmarks.serving.worker_process import WorkerStartError
from benchmarks.serving.workload import parse_lengths

SCENARIOS = {
    "load": scenario_load.run, "adapters": scenario_adapters.run, "cold": scenario_cold.run,
    "thrash": scenario_contention.run_thrash, "ranks": scenario_ranks.run,
    "noisy": scenario_contention.run_noisy, "prefix": scenario_prefix.run,
}
PRESET_HELP = """presets: adapters = throughput vs distinct adapters (0,1,8,32,128) at
concurrency 32, with the in-process engine (server/engine ratio) and transformers+peft;
cold = TTFT of an adapter at its source vs in host memory vs on device; thrash = 16 hot
adapters in 8 device slots vs 8 hot; ranks = ranks 8/16/64 in one batch vs all 16; noisy
= a quiet tenant's TTFT alone and beside another tenant's burst of 200; prefix = 8
adapters with 1,024-token system prompts and 64-token tails: TTFT with prefix caching vs
--no-prefix-cache, throughput without sharing, and the hit rate through a gateway in front
of two workers vs one worker; load = the plain run the options describe (the default).
--quick runs every preset, short."""


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks serving", description=__doc__,
                                     epilog=PRESET_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=[*SCENARIOS, "all"],
                        help="scenario to run (repeatable; default: load, or all with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="short versions (what `make bench` runs): every preset unless "
                             "--preset names some")
    _target_options(parser.add_argument_group("target"))
    _workload_options(parser.add_argument_group("workload (the load preset)"))
    _worker_options(parser.add_argument_group("started worker"))
    out = parser.add_argument_group("output")
    out.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR,
                     help="where serving.jsonl and the PNG plots go (default benchmarks/results)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def _target_options(group) -> None:
    group.add_argument("--addr", help="drive this worker or gateway (host:port) instead of "
                                      "starting a worker; the load preset only")
    group.add_argument("--metrics-url", help="with --addr: the worker's /metrics URL, for "
                                             "adapter loads and evictions")
    group.add_argument("--http-url", help="with --addr: its OpenAI base URL (http://H:P/v1)")
    group.add_argument("--base-model", help="with --addr and --http: the base model's name "
                                            "(default: asked of the worker)")
    group.add_argument("--adapter-names", nargs="+", metavar="NAME",
                       help="with --addr: adapters to use (default: the worker's; needed "
                            "through a gateway)")
    group.add_argument("--vocab", type=int, help="with --addr: prompt token ids stay below "
                                                 "this (default: asked of the worker, else 256)")
    group.add_argument("--api-key", default=os.environ.get("LORAFLEET_API_KEY"),
                       help="with --addr: sent as 'authorization: Bearer KEY' (default "
                            "$LORAFLEET_API_KEY); started workers run without auth")
    group.add_argument("--transport", choices=TRANSPORTS, default="grpc",
                       help="grpc: raw grpc.aio stubs (default); client: lorafleet "
                            "AsyncClient; http: OpenAI /v1/completions streaming")
    group.add_argument("--http", dest="transport", action="store_const", const="http",
                       help="same as --transport http")
    group.add_argument("--timeout", type=float, default=600.0, help="per-request deadline, s")
    group.add_argument("--tier-poll", type=float, default=0.1, metavar="SECONDS",
                       help="how often to read ListAdapters for the tier each request meets "
                            "(default %(default)s; 0: never, tiers unknown)")


def _workload_options(group) -> None:
    group.add_argument("--rate", type=float, nargs="+", default=[],
                       help="open loop: Poisson arrivals at each of these req/s "
                            "(default 1 2 4 8; --quick 2 4 8)")
    group.add_argument("--concurrency", type=int, nargs="+", default=[],
                       help="closed loop instead: keep this many requests in flight")
    group.add_argument("--duration", type=float,
                       help="seconds of sending per level (default 20; --quick 4)")
    group.add_argument("--num-requests", type=int, help="at most this many requests per level")
    group.add_argument("--num-adapters", type=int, default=32, help="adapters (default 32)")
    group.add_argument("--ranks", type=int, nargs="+", default=[16],
                       help="adapter ranks, assigned in turn (default 16)")
    group.add_argument("--tenant", default="bench", help="adapter name prefix (default bench)")
    group.add_argument("--zipf-alpha", type=float, default=1.0,
                       help="adapter k gets weight 1/(k+1)^alpha; 0 is uniform (default 1)")
    group.add_argument("--base-share", type=float, default=0.0,
                       help="fraction of requests for the base model alone (default 0)")
    group.add_argument("--prompt-len", type=parse_lengths, default="lognormal:128:0.6",
                       help="fixed:N, uniform:LO:HI or lognormal:MEDIAN:SIGMA "
                            "(default %(default)s)")
    group.add_argument("--output-len", type=parse_lengths, default="lognormal:64:0.5",
                       help="as --prompt-len (default %(default)s); EOS is ignored")
    group.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")


def _worker_options(group) -> None:
    group.add_argument("--model", type=pathlib.Path,
                       help="serve this checkpoint (default: generate one of --shape)")
    group.add_argument("--shape", choices=SHAPES, default="tiny",
                       help="; ".join(f"{k}: {v.describe()}" for k, v in SHAPES.items()))
    group.add_argument("--max-loras", type=int, default=8, help="load preset (default 8)")
    group.add_argument("--max-cpu-loras", type=int,
                       help="load preset (default: --num-adapters)")
    group.add_argument("--serve-args", help="more `lorafleet serve` options for every "
                                            "started worker, e.g. '--max-num-seqs 32'")
    group.add_argument("--threads", type=int,
                       help="torch CPU threads for started workers and the in-process "
                            "references (OMP_NUM_THREADS; default: torch's choice)")
    group.add_argument("--repeats", type=int, default=1,
                       help="adapters and ranks presets: runs per cell, best counts")
    group.add_argument("--no-peft", action="store_true",
                       help="adapters preset: skip the transformers + peft reference")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses and checks the options; fills the defaults that depend on --quick."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate and args.concurrency:
        parser.error("give --rate (open loop) or --concurrency (closed loop), not both")
    presets = args.preset or (["all"] if args.quick else ["load"])
    args.preset = list(SCENARIOS) if "all" in presets else list(dict.fromkeys(presets))
    if args.addr and args.preset != ["load"]:
        parser.error("presets start their own worker; --addr runs the load preset only")
    if args.transport == "http" and args.addr and not args.http_url:
        parser.error("--http with --addr needs --http-url")
    if not args.rate and not args.concurrency:
        args.rate = [2.0, 4.0, 8.0] if args.quick else [1.0, 2.0, 4.0, 8.0]
    if args.duration is None and args.num_requests is None:
        args.duration = 4.0 if args.quick else 20.0
    return args


def _run_presets(args, context: Context) -> None:
    for name in args.preset:
        print(f"\n== serving: {name} ==", flush=True)
        SCENARIOS[name](context)


def main(argv: list[str] | None = None) -> int:
    """Runs the presets; prints tables; writes JSON lines and plots. Exit status 0, or 1
    when a worker could not start."""
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lorafleet-serving-") as scratch:
        context = Context(args, pathlib.Path(scratch))
        try:
            # Every torch op of this process (checkpoints, the in-process engine, peft) on
            # one thread that is not the main one: one OpenMP team, as in the server's
            # engine process (references.on_thread says why).
            on_thread(_run_presets, args, context)
        except WorkerStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    command = sys.argv[1:] if argv is None else list(argv)
    path = append_rows("serving", context.rows, directory=args.results_dir,
                       command=command, quick=args.quick)
    print(f"\nmachine: {describe_machine()}")
    print(f"rows: {path}")
    if not args.no_plots:
        for png in plots.draw_all(context.rows, args.results_dir, context.model_label):
            print(f"plot: {png}")
    return 0
