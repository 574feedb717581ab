"""`lorafleet plan`: a worker's memory budget from a checkpoint's config.json alone."""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

from lorafleet.dataplane.model.config import ModelConfig, ModelConfigError
from lorafleet.dataplane.server.sizes import WorkerSizes
from lorafleet.dataplane.sizing import MemoryPlan, PlanError, PlanRequest, plan_memory

DESCRIPTION = """\
Size a worker before starting it: weights, adapter slots (the worker preallocates
--max-loras slots of --max-lora-rank for every layer and projection), the host adapter
cache, the KV cache left for the rest and how many tokens and sequences it holds. Reads
only the checkpoint's config.json: no weights, no torch, no GPU. The figures are the ones
the worker computes at start (its start-up line is printed too); only the free GPU memory
is an estimate, since the worker measures it after the CUDA context is made."""

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_MIB = 2**20


def byte_count(text: str) -> int:
    """Bytes from `80GiB`, `80G` (10^9), `1.5TiB` or a plain integer."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected bytes such as 80GiB or 85899345920, got {text!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def plan_parser() -> argparse.ArgumentParser:
    """The parser of `lorafleet plan`."""
    parser = argparse.ArgumentParser(prog="lorafleet plan", description=DESCRIPTION)
    parser.add_argument("--model", type=pathlib.Path, required=True,
                        help="checkpoint directory (only its config.json is read)")
    parser.add_argument("--max-loras", type=int, default=8,
                        help="device adapter slots, as the worker's option (default %(default)s)")
    parser.add_argument("--max-lora-rank", type=int, default=64,
                        help="rank every slot is sized for (default %(default)s)")
    parser.add_argument("--max-cpu-loras", type=int, default=32,
                        help="adapters kept in host memory (default %(default)s)")
    parser.add_argument("--gpu-memory", type=byte_count, metavar="BYTES",
                        help="the GPU's memory, e.g. 80GiB; the KV cache gets 0.85 of what the "
                             "weights leave (default: size a CPU worker, 1 GiB of KV budget)")
    parser.add_argument("--kv-cache-bytes", type=byte_count, metavar="BYTES",
                        help="the worker's --kv-cache-bytes: KV cache and adapter slots together")
    parser.add_argument("--kv-cache-fraction", type=float, metavar="F",
                        help="the worker's --kv-cache-fraction (needs --gpu-memory)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weight dtype (default: the checkpoint's)")
    parser.add_argument("--block-size", type=int, default=16,
                        help="tokens per KV block (default %(default)s, the worker's)")
    parser.add_argument("--context", type=int, metavar="TOKENS",
                        help="tokens per sequence for the largest-batch figure "
                             "(default: the model's context length)")
    parser.add_argument("--max-num-seqs", type=int, default=64,
                        help="the worker's sequences per step, which caps the batch "
                             "(default %(default)s)")
    parser.add_argument("--prefix-cache-scope", choices=["tenant", "global"], default="tenant",
                        help="the worker's option: who shares cached prompt prefixes "
                             "(default %(default)s)")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="the worker's option: no prefix caching")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="the worker runs with --enforce-eager: no decode graphs (with "
                             "--gpu-memory, their memory is otherwise planned)")
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
    request = PlanRequest(
        max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras, dtype=args.dtype, block_size=args.block_size,
        kv_cache_bytes=args.kv_cache_bytes, kv_cache_fraction=args.kv_cache_fraction,
        gpu_memory=args.gpu_memory, context=args.context, max_num_seqs=args.max_num_seqs,
        prefix_cache_scope=None if args.no_prefix_cache else args.prefix_cache_scope,
        enforce_eager=args.enforce_eager)
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
