"""The worker's options have one home (dataplane/config/flags.py; issue 23 #4): a worker
built in code, started from `serve`, sized by `plan` or started by `up` with no option
given runs with the same values."""

from __future__ import annotations

import dataclasses
import pathlib

from lorafleet.dataplane.config.flags import FLAGS, config_values, up_flags
from lorafleet.dataplane.config.plan import plan_parser
from lorafleet.dataplane.config.sizing import PlanRequest
from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.server.cli import serve_parser, worker_config, worker_parser
from lorafleet.dataplane.up.cli import up_parser
from lorafleet.dataplane.up.fleet import worker_passthrough


def test_serve_with_no_options_runs_the_config_built_in_code():
    started = worker_config(serve_parser().parse_args(["--model", "m"]))
    in_code = WorkerConfig(pathlib.Path("m"))
    assert dataclasses.replace(started, sources=in_code.sources) == in_code


def test_every_option_reaches_the_config():
    argv = ["--model", "m", "--max-loras", "3", "--max-lora-rank", "16", "--max-cpu-loras", "5",
            "--kv-cache-fraction", "0.5", "--max-num-seqs", "7", "--max-waiting", "9",
            "--max-num-batched-tokens", "99", "--queue-policy", "fifo", "--worker-id", "w-9",
            "--engine-runs", "thread", "--cpu-thread-wait", "spin", "--no-prefix-cache",
            "--enforce-eager", "--dtype", "float16", "--device", "cpu", "--model-name", "x"]
    config = worker_config(serve_parser().parse_args(argv))
    assert (config.max_loras, config.max_lora_rank, config.max_cpu_loras) == (3, 16, 5)
    assert (config.kv_cache_fraction, config.max_num_seqs, config.max_waiting) == (0.5, 7, 9)
    assert (config.max_num_batched_tokens, config.queue_policy, config.worker_id) == (99, "fifo", "w-9")
    assert (config.engine_runs, config.cpu_thread_wait, config.prefix_cache_scope) == (
        "thread", "spin", None)
    assert (config.enforce_eager, config.dtype, config.device, config.model_name) == (
        True, "float16", "cpu", "x")


def test_plan_with_no_options_sizes_the_default_worker():
    args = plan_parser().parse_args(["--model", "m"])
    fields = {field.name for field in dataclasses.fields(PlanRequest)}
    assert PlanRequest(**config_values(args, fields)) == PlanRequest()
    worker = WorkerConfig(pathlib.Path("m"))
    assert all(getattr(PlanRequest(), name) == getattr(worker, name)
               for name in fields & {f.name for f in dataclasses.fields(WorkerConfig)})


def test_up_passes_only_the_options_given_and_each_is_a_worker_option():
    assert worker_passthrough(up_parser().parse_args([])) == []
    given = up_parser().parse_args(["--max-loras", "3", "--dtype", "float16"])
    assert worker_passthrough(given) == ["--dtype", "float16", "--max-loras", "3"]
    worker_options = {o for action in worker_parser()._actions for o in action.option_strings}
    assert {flag.name for flag in up_flags()} <= worker_options
    assert {"--kv-cache-bytes", "--max-cpu-loras", "--device"} <= {f.name for f in up_flags()}


def test_plan_takes_the_worker_flags_it_names():
    plan_options = {o for action in plan_parser()._actions for o in action.option_strings}
    assert {name for name, flag in FLAGS.items() if flag.plan is not None} <= plan_options
