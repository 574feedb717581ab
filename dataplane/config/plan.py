"""`lorafleet plan`: a worker's memory budget from a checkpoint's config.json alone."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lorafleet.dataplane.config.flags import add_plan_flags, byte_count, config_values
from lorafleet.dataplane.config.sizing import MemoryPlan, PlanError, PlanRequest, plan_memory
from lorafleet.dataplane.config.worker_sizes import WorkerSizes
from lorafleet.dataplane.model.config import ModelConfig, ModelConfigError

DESCRIPTION = """\
Size a worker before starting it: weights, adapter slots (the worker preallocates
--max-loras slots of --max-lora-rank for every layer and projection), the host adapter
cache, the KV cache left for the rest and how many tokens and sequences it holds. Reads
only the checkpoint's config.json: no weights, no torch, no GPU. The figures are the ones
the worker computes at start (its start-up line is printed too); only the free GPU memory
is an estimate, since the worker measures it after the CUDA context is made."""

_MIB = 2**20


def plan_parser() -> argparse.ArgumentParser:
    """The parser of `lorafleet plan`."""
    parser = argparse.ArgumentParser(prog="lorafleet plan", description=DESCRIPTION)
    add_plan_flags(parser, ("--model", "--max-loras", "--max-lora-rank", "--max-cpu-loras"))
    parser.add_argument("--gpu-memory", type=byte_count, metavar="BYTES",
                        help="the GPU's memory, e.g. 80GiB; the KV cache gets 0.85 of what the "
                             "weights leave (default: size a CPU worker, 1 GiB of KV budget)")
    add_plan_flags(parser, ("--kv-cache-bytes", "--kv-cache-fraction", "--dtype", "--block-size"))
    parser.add_argument("--context", type=int, metavar="TOKENS",
                        help="tokens per sequence for the largest-batch figure "
                             "(default: the model's context length)")
    add_plan_flags(parser, ("--max-num-seqs", "--prefix-cache-scope", "--no-prefix-cache",
                            "--enforce-eager"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def worker_sizes(plan: MemoryPlan) -> WorkerSizes:
    """The WorkerSizes a worker built with the plan's options reports."""
    return WorkerSizes(
        max_loras=plan.max_loras, max_lora_rank=plan.max_lora_rank,
        max_cpu_loras=plan.max_cpu_loras, lora_slot_bytes=plan.lora_slot_bytes,
        num_kv_blocks=plan.num_kv_blocks, kv_block_size=plan.kv_block_size,
        kv_block_bytes=plan.kv_block_bytes, max_model_len=plan.max_model_len)


def format_table(plan: MemoryPlan) -> str:
    """The plan as a small table for people."""
    rows = [
        ("weights", plan.weights_bytes, f"{plan.architecture}, {plan.dtype}"),
        ("rotary tables", plan.rotary_bytes, f"{plan.max_model_len} positions"),
        ("adapter slot", plan.lora_slot_bytes, f"rank {plan.max_lora_rank}, 7 projections"),
        ("adapter slots", plan.lora_total_bytes, f"{plan.max_loras} slots"),
        ("KV budget", plan.kv_budget_bytes, plan.kv_budget_source + ", slots included"),
        ("decode graphs", plan.graph_bytes,
         "CUDA graphs' pool (an estimate) and a scratch block" if plan.graph_bytes
         else "none (a CPU worker, or --enforce-eager)"),
        ("KV cache", plan.num_kv_blocks * plan.kv_block_bytes,
         f"{plan.num_kv_blocks} blocks of {plan.kv_block_size} tokens"),
        ("device total", plan.device_bytes, "weights + rotary + slots + KV + graphs"),
        ("host cache", plan.host_cache_bytes,
         f"{plan.max_cpu_loras} adapters at rank {plan.max_lora_rank} (host memory)"),
    ]
    lines = [f"{'':14} {'bytes':>17} {'MiB':>11}"]
    lines += [f"{name:14} {num:>17,} {num / _MIB:>11.2f}  {note}" for name, num, note in rows]
    capped = " (capped by --max-num-seqs)" if plan.max_batch < plan.num_seqs_fit else ""
    lines.append(f"KV tokens: {plan.num_kv_tokens:,}; largest batch of {plan.context:,}-token "
                 f"sequences: {plan.max_batch:,}{capped}")
    lines.append(_prefix_cache_line(plan))
    lines.append(f"the worker will print: {worker_sizes(plan).describe()}")
    return "\n".join(lines)


def _prefix_cache_line(plan: MemoryPlan) -> str:
    """What the KV cache also holds: cached prompt prefixes in its idle blocks."""
    if plan.prefix_cache_scope is None:
        return "prefix cache: off (--no-prefix-cache)"
    shared = "within a tenant" if plan.prefix_cache_scope == "tenant" else "across tenants"
    return (f"prefix cache: idle KV blocks keep prompt prefixes, shared {shared} (up to "
            f"{plan.prefix_cache_max_blocks:,} blocks, "
            f"{plan.prefix_cache_max_blocks * plan.kv_block_size:,} tokens; no memory "
            f"of its own)")


def main(argv: list[str] | None = None) -> int:
    """`lorafleet plan`."""
    parser = plan_parser()
    args = parser.parse_args(argv)
    fields = {field.name for field in dataclasses.fields(PlanRequest)}
    request = PlanRequest(gpu_memory=args.gpu_memory, context=args.context,
                          **config_values(args, fields))
    try:
        plan = plan_memory(ModelConfig.from_dir(args.model), request)
    except (ModelConfigError, PlanError) as exc:
        print(f"lorafleet plan: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"lorafleet plan: {args.model / 'config.json'} has no {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict()) if args.json else format_table(plan))
    return 0
