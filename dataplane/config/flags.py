"""The worker's options: one table (flag, default, help) from which `lorafleet serve` and
`worker` build their parsers, `lorafleet plan` and `up` the worker options they take, and
WorkerConfig and PlanRequest their defaults (`DEFAULTS`).

A row shows the option as `serve --help` does. `plan` sizes a worker that would run with
the option and `up` passes it to every worker it starts; each words some options its own
way (`plan=`, `up=`: the argparse keywords that differ), and in `up` an option not given
leaves the worker's own default. Options other servers share (metrics port, adapter
sources, TLS, tenant limits, log level) keep their home and take their place in the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lorafleet.dataplane.adapters.confinement import add_source_arguments
from lorafleet.dataplane.config.quotas import add_tenant_limit_arguments
from lorafleet.dataplane.engine.fairness import QUEUE_POLICIES
from lorafleet.dataplane.engine.prefix_cache import PREFIX_CACHE_SCOPES
from lorafleet.runtime.metrics_http import add_metrics_port_argument
from lorafleet.runtime.names import InvalidName, check_adapter_name
from lorafleet.runtime.startup import add_log_level_argument
from lorafleet.runtime.tls import add_server_tls_arguments

DTYPE_NAMES = ("float32", "bfloat16", "float16")
# Where the engine loop runs: its own process (serving), or a thread beside the server
# (tests, debugging; see docs/worker.md "Where the engine runs").
ENGINE_RUNS = ("process", "thread")
CPU_THREAD_WAITS = ("spin", "sleep")  # how the engine process's OpenMP threads wait
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def adapter_arg(text: str) -> tuple[str, str]:
    """--adapter NAME=PATH, the name checked as the worker will."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH (e.g. acme/support=/adapters/s), got {text!r}")
    try:
        check_adapter_name(name)
    except InvalidName as exc:  # e.g. no tenant: it would be refused on every request
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return name, path


def byte_count(text: str) -> int:
    """Bytes from `80GiB`, `80G` (10^9), `1.5TiB` or a plain integer."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected bytes such as 80GiB or 85899345920, got {text!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Flag:
    """One option: flag, default and help as `serve` shows them, its other argparse
    keywords (`spec`), and the keywords `plan` and `up` change (None: not theirs).
    `add`, for an option other servers share: the function that adds it, given (parser,
    default, help). `is_served`: False for a value a worker fixes that only `plan` varies."""

    name: str
    default: Any = None
    help: str | None = None
    spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    plan: Mapping[str, Any] | None = None
    up: Mapping[str, Any] | None = None
    add: Callable[[argparse.ArgumentParser, Any, str], None] | None = None
    is_served: bool = True

    @property
    def dest(self) -> str:
        """The attribute parsed arguments and configs call it."""
        return self.name.removeprefix("--").replace("-", "_")

    def add_to(self, parser, keywords: Mapping[str, Any] | None = None) -> None:
        """Adds the option to `parser` (or an argument group), `keywords` changed."""
        if self.add is not None:
            self.add(parser, self.default, self.help)
            return
        default = list(self.default) if isinstance(self.default, list) else self.default
        parser.add_argument(self.name, **{"default": default, "help": self.help,
                                          **self.spec, **(keywords or {})})


@dataclasses.dataclass(frozen=True)
class Shared:
    """Options with a home of their own, added where the worker's parser shows them."""

    add: Callable[[argparse.ArgumentParser], None]

    def add_to(self, parser) -> None:
        """Adds the options to `parser`."""
        self.add(parser)


WORKER_FLAGS: tuple[Flag | Shared, ...] = (
    Flag("--model", None,
         "Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)",
         dict(type=pathlib.Path, required=True),
         plan=dict(help="checkpoint directory (only its config.json is read)")),
    Flag("--model-name", None, "name reported for the base model (default: the directory name)"),
    Flag("--adapter", [], "load a PEFT adapter at start as tenant/name (repeatable)",
         dict(type=adapter_arg, action="append", metavar="NAME=PATH")),
    Flag("--host", "127.0.0.1", "address to bind (default %(default)s)"),
    Flag("--port", 50051, "gRPC port; 0 picks a free one (default %(default)s)", dict(type=int)),
    Flag("--metrics-port", 9400, "vLLM-compatible series, per-adapter metrics",
         add=add_metrics_port_argument),
    Flag("--admin-port", None,
         "serve WorkerService (load/evict/validate/list adapters, status) on this port alone, "
         "so the gRPC port exposes only inference; 0 picks a free one (default: "
         "WorkerService on the gRPC port)", dict(type=int, metavar="N")),
    Flag("--http-port", None,
         "also serve OpenAI-compatible HTTP (/v1/completions, /v1/chat/completions, "
         "/v1/models) on this port; 0 picks a free one (default: off; see docs/openai.md)",
         dict(type=int)),
    Flag("--device", None, "cpu or cuda[:N] (default: cuda when available)", up={}),
    Flag("--dtype", None, "weight dtype (default: the checkpoint's)",
         dict(choices=list(DTYPE_NAMES)), plan={}, up={}),
    Flag("--max-loras", 8,
         "device adapter slots = distinct adapters per step (default %(default)s)",
         dict(type=int),
         plan=dict(help="device adapter slots, as the worker's option (default %(default)s)"),
         up=dict(type=positive_int, help="device adapter slots per worker")),
    Flag("--max-lora-rank", 64,
         "largest adapter rank accepted; slots are sized for it (default %(default)s)",
         dict(type=int), plan=dict(help="rank every slot is sized for (default %(default)s)")),
    Flag("--max-cpu-loras", 32, "adapters kept in host memory (default %(default)s)",
         dict(type=int), plan={},
         up=dict(type=positive_int, help="adapters kept in host memory")),
    Flag("--kv-cache-bytes", None,
         "KV cache size in bytes, adapter slots included (default: 0.85 of free GPU memory; "
         "1 GiB on a CPU)", dict(type=int),
         plan=dict(type=byte_count, metavar="BYTES",
                   help="the worker's --kv-cache-bytes: KV cache and adapter slots together"),
         up=dict(type=positive_int, help="KV cache size in bytes")),
    Flag("--kv-cache-fraction", None,
         "instead of --kv-cache-bytes: this fraction of the device memory free after the "
         "weights, less the adapter slots", dict(type=float),
         plan=dict(metavar="F", help="the worker's --kv-cache-fraction (needs --gpu-memory)")),
    Flag("--max-num-seqs", 64, "sequences per step (default %(default)s)", dict(type=int),
         plan=dict(help="the worker's sequences per step, which caps the batch "
                        "(default %(default)s)")),
    Flag("--max-num-batched-tokens", 2048,
         "tokens per step, prefill chunks included (default %(default)s)", dict(type=int)),
    Flag("--prefix-cache-scope", "tenant",
         "who shares cached prompt KV (prefix caching): 'tenant', only requests of the same "
         "tenant, since a cache hit answers faster and a caller could time that to learn "
         "another tenant's prompt; 'global', every request (more hits when tenants share "
         "system prompts). Always only the same base model and adapter weights (by digest) "
         "and the same cache_salt (default %(default)s)",
         dict(choices=list(PREFIX_CACHE_SCOPES)),
         plan=dict(help="the worker's option: who shares cached prompt prefixes "
                        "(default %(default)s)")),
    Flag("--no-prefix-cache", False,
         "compute every prompt whole: no KV reuse between requests (default: equal prompt "
         "prefixes reuse their KV blocks)", dict(action="store_true"),
         plan=dict(help="the worker's option: no prefix caching")),
    Flag("--enforce-eager", False,
         "on a GPU, run decode steps kernel by kernel instead of replaying CUDA graphs "
         "(default: graphs, captured at start for 1, 2, 4, ... --max-num-seqs sequences; they "
         "keep a little memory, taken from the KV budget). No effect on a CPU",
         dict(action="store_true"),
         plan=dict(help="the worker runs with --enforce-eager: no decode graphs (with "
                        "--gpu-memory, their memory is otherwise planned)")),
    Flag("--max-waiting", 256,
         "queued requests beyond which Generate answers RESOURCE_EXHAUSTED "
         "(default %(default)s)",
         dict(type=int)),
    Flag("--worker-id", "",
         "stable id of this worker (default: HOST:PORT, the host name and the bound gRPC "
         "port, unique per worker on a machine)"),
    Flag("--otlp-endpoint", None,
         "export a tracing span per request to this OTLP/gRPC collector (needs the otlp extra)",
         dict(metavar="HOST:PORT")),
    Flag("--engine-runs", "process",
         "where the engine loop runs: 'process', its own process, so the server's Python "
         "never competes with it for the GIL; 'thread', a thread of the server's process, for "
         "debugging (slower under load; see docs/worker.md) (default %(default)s)",
         dict(choices=list(ENGINE_RUNS))),
    Flag("--cpu-thread-wait", "sleep",
         "how the engine process's CPU threads wait between ops: 'sleep' at once (right for a "
         "machine that does anything else: spinning threads take CPU from it, and a 20-token "
         "answer took 27-43 s spinning against 3-5 s sleeping at load 8-11), or 'spin' "
         "briefly before sleeping (OpenMP's default: 15-35%% more tokens/s when the worker "
         "has its cores to itself); an OMP_WAIT_POLICY you set wins (default %(default)s)",
         dict(choices=list(CPU_THREAD_WAITS))),
    Flag("--engine-start-timeout", 600.0,
         "how long the engine process may take to load the model and start; past it, it is "
         "stopped and the server exits with one line and status 2 (raise it for a large "
         "model on slow storage) (default %(default)s)", dict(type=float, metavar="SECONDS")),
    Flag("--grace-seconds", 30.0,
         "on SIGTERM, how long in-flight streams may finish (default %(default)s)",
         dict(type=float)),
    Shared(add_source_arguments),
    Shared(add_server_tls_arguments),
    Flag("--queue-policy", "fair",
         "which waiting request runs next: fair share between tenants (virtual token "
         "counters) or fifo (default %(default)s)", dict(choices=QUEUE_POLICIES)),
    Shared(lambda parser: add_tenant_limit_arguments(parser, "on this worker")),
    Shared(add_log_level_argument),
    Flag("--block-size", 16, None, dict(type=int), is_served=False,
         plan=dict(help="tokens per KV block (default %(default)s, the worker's)")),
)
FLAGS = {row.name: row for row in WORKER_FLAGS if isinstance(row, Flag)}
DEFAULTS: Mapping[str, Any] = {flag.dest: flag.default for flag in FLAGS.values()}


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    """Every option of `lorafleet serve` and `worker`, in the order --help shows them."""
    for row in WORKER_FLAGS:
        if isinstance(row, Shared) or row.is_served:
            row.add_to(parser)


def add_plan_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """The named worker options as `lorafleet plan` shows them."""
    for name in names:
        FLAGS[name].add_to(parser, FLAGS[name].plan)


def up_flags() -> list[Flag]:
    """The worker options `lorafleet up` passes to every worker, in table order."""
    return [flag for flag in FLAGS.values() if flag.up is not None]


def add_up_flags(parser) -> None:
    """The worker options as `lorafleet up` shows them: not given, the worker's default."""
    for flag in up_flags():
        flag.add_to(parser, {"default": None, **flag.up})


def config_values(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The parsed value of every option that is one of `fields` (a config's), with
    --no-prefix-cache folded into prefix_cache_scope (None: off)."""
    values = {name: getattr(args, name) for name in fields
              if name in DEFAULTS and hasattr(args, name)}
    if "prefix_cache_scope" in values and args.no_prefix_cache:
        values["prefix_cache_scope"] = None
    return values
