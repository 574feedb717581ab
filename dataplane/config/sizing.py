"""A worker's memory budget from a checkpoint's config.json alone (pure Python, no torch).

Reproduces, figure for figure, what a worker computes while it is built (see
dataplane/engine_process/build.py): weights first, then `max_loras` adapter slots of
`max_lora_rank` for every layer and projection (dataplane/lora/slots.py, kernels/buffers.py),
then the KV cache from what is left of its budget (dataplane/runner/kv_cache.py). Only the
free device memory is an estimate here: the worker measures it after the weights are
placed, and a CUDA context and other processes take their share of it first.
"""

from __future__ import annotations

import dataclasses

from lorafleet.dataplane.config.flags import DEFAULTS
from lorafleet.dataplane.model.config import PROJECTIONS, ModelConfig

# Bytes per element of the weight dtypes the worker serves (dataplane/runner/factory.py).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Each (layer, projection) of a slot also holds its adapter's fp32 scale and int32 rank.
_SLOT_SCALE_BYTES = 4
_SLOT_RANK_BYTES = 4
# The worker's KV budget when none is given: 0.85 of the GPU memory free after the
# weights (and whatever else was placed before it is measured), or 1 GiB on a CPU, since
# host memory is shared with everything else on the machine.
DEFAULT_GPU_FRACTION = 0.85
DEFAULT_CPU_BYTES = 1 << 30


class PlanError(ValueError):
    """The asked-for limits do not fit the memory given."""


def resolve_dtype(name: str | None, checkpoint_dtype: str) -> str:
    """The dtype the worker would serve in: the one asked for, else the checkpoint's own,
    else float32 (as dataplane/runner/factory.py `resolve_dtype`)."""
    chosen = name or (checkpoint_dtype if checkpoint_dtype in DTYPE_BYTES else "float32")
    if chosen not in DTYPE_BYTES:
        raise PlanError(f"dtype {chosen!r} is not supported; use one of {list(DTYPE_BYTES)}")
    return chosen


def weight_bytes(config: ModelConfig, dtype_bytes: int) -> int:
    """Bytes of the decoder's weights on the device (a tied head counted once)."""
    hidden, vocab = config.hidden_size, config.vocab_size
    shapes = config.projection_shapes()
    per_layer = 2 * hidden + sum(i * o for i, o in shapes.values())
    per_layer += sum(shapes[p][1] for p in _biased_projections(config))
    head = 0 if config.tie_word_embeddings else hidden * vocab
    return (vocab * hidden + hidden + head + config.num_layers * per_layer) * dtype_bytes


def _biased_projections(config: ModelConfig) -> tuple[str, ...]:
    """Projections with a bias: Llama's attention_bias covers q, k, v and o; Qwen2 biases
    q, k and v only; mlp_bias covers gate, up and down."""
    biased: tuple[str, ...] = ()
    if config.attention_bias:
        biased += ("q_proj", "k_proj", "v_proj")
        if config.model_type != "qwen2":
            biased += ("o_proj",)
    if config.mlp_bias:
        biased += ("gate_proj", "up_proj", "down_proj")
    return biased


def rotary_bytes(config: ModelConfig, dtype_bytes: int) -> int:
    """The rotary cos and sin tables, [max_position_embeddings, head_dim] each."""
    return 2 * config.max_position_embeddings * config.head_dim * dtype_bytes


def lora_slot_bytes(config: ModelConfig, max_rank: int, dtype_bytes: int) -> int:
    """Bytes of one adapter slot: A [max_rank, in] and B [out, max_rank] plus a scale and a
    rank, for every projection of every layer."""
    shapes = config.projection_shapes()
    per_layer = sum(max_rank * (shapes[p][0] + shapes[p][1]) * dtype_bytes
                    + _SLOT_SCALE_BYTES + _SLOT_RANK_BYTES for p in PROJECTIONS)
    return config.num_layers * per_layer


def host_adapter_bytes(config: ModelConfig, rank: int, dtype_bytes: int) -> int:
    """Host memory of one cached adapter of `rank` that changes every projection."""
    shapes = config.projection_shapes()
    return config.num_layers * sum(rank * (i + o) * dtype_bytes for i, o in shapes.values())


# Decode graphs (dataplane/runner/graphs.py): captured for contexts up to this many tokens,
# their attention split into partitions of this many keys (kernels/paged_attention.py).
GRAPH_MAX_CONTEXT = 8192
GRAPH_PARTITION_SIZE = 512


def graph_memory_bytes(config: ModelConfig, *, max_num_seqs: int, max_lora_rank: int,
                       dtype_bytes: int, max_context: int = GRAPH_MAX_CONTEXT) -> int:
    """Device memory the decode graphs keep (an estimate, taken from the KV budget): the
    memory pool every bucket's graph shares holds the largest bucket's forward pass —
    a layer's activations, the logits (16-bit and fp32), the attention's per-partition
    partials and LoRA's shrunk rows — doubled for the allocator's rounding."""
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    activations = (4 * config.hidden_size + 2 * q + 2 * kv
                   + 3 * config.intermediate_size) * dtype_bytes
    logits = config.vocab_size * (dtype_bytes + 4)
    partitions = -(-min(max_context, config.max_position_embeddings) // GRAPH_PARTITION_SIZE)
    partials = config.num_heads * partitions * (config.head_dim + 2) * 4
    shrunk = 3 * max_lora_rank * 4
    return 2 * max_num_seqs * (activations + logits + partials + shrunk)


def kv_block_bytes(config: ModelConfig, block_size: int, dtype_bytes: int) -> int:
    """Bytes of keys and values of `block_size` tokens across all layers."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * block_size * dtype_bytes


def kv_budget_bytes(num_bytes: int | None, fraction: float | None, num_free: int | None) -> int:
    """The bytes a KV budget gives: exactly `num_bytes`, else `fraction` of `num_free`
    (the device memory free once the weights are placed)."""
    return num_bytes if num_bytes is not None else int(fraction * num_free)


def num_kv_blocks(budget: int, num_reserved: int, block_bytes: int) -> int:
    """KV blocks in `budget` bytes once `num_reserved` of it went to other device buffers
    (adapter slots, decode graphs); below 1 when none fits."""
    return (budget - num_reserved) // block_bytes


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """The worker options a plan is made for (the names and defaults of the worker's
    flags, flags.py)."""

    max_loras: int = DEFAULTS["max_loras"]
    max_lora_rank: int = DEFAULTS["max_lora_rank"]
    max_cpu_loras: int = DEFAULTS["max_cpu_loras"]
    dtype: str | None = DEFAULTS["dtype"]
    block_size: int = DEFAULTS["block_size"]
    kv_cache_bytes: int | None = DEFAULTS["kv_cache_bytes"]
    kv_cache_fraction: float | None = DEFAULTS["kv_cache_fraction"]
    gpu_memory: int | None = None  # None: a CPU worker
    context: int | None = None  # None: the model's max_position_embeddings
    max_num_seqs: int = DEFAULTS["max_num_seqs"]
    prefix_cache_scope: str | None = DEFAULTS["prefix_cache_scope"]  # None: --no-prefix-cache
    # A GPU worker replays decode graphs unless this is set.
    enforce_eager: bool = DEFAULTS["enforce_eager"]

    @property
    def has_graphs(self) -> bool:
        """Whether the worker keeps decode graphs: on a GPU, without --enforce-eager."""
        return self.gpu_memory is not None and not self.enforce_eager


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Every figure of a plan; the names of the worker's own (WorkerSizes) where they meet."""

    architecture: str
    dtype: str
    weights_bytes: int
    rotary_bytes: int
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    lora_slot_bytes: int
    lora_total_bytes: int
    host_adapter_bytes: int
    host_cache_bytes: int
    kv_budget_bytes: int
    kv_budget_source: str
    num_kv_blocks: int
    kv_block_size: int
    kv_block_bytes: int
    num_kv_tokens: int
    max_model_len: int
    context: int
    num_seqs_fit: int
    max_batch: int
    prefix_cache_scope: str | None  # who shares cached prefixes; None: off
    prefix_cache_max_blocks: int  # KV blocks that may hold cached prefixes when idle
    graph_bytes: int = 0  # the decode graphs' memory pool, and their scratch KV block

    @property
    def device_bytes(self) -> int:
        """Device memory of weights, rotary tables, adapter slots and KV cache together."""
        return (self.weights_bytes + self.rotary_bytes + self.lora_total_bytes
                + self.num_kv_blocks * self.kv_block_bytes + self.graph_bytes)

    def to_dict(self) -> dict:
        """The plan as plain JSON-ready values."""
        return {**dataclasses.asdict(self), "device_bytes": self.device_bytes}


def plan_memory(config: ModelConfig, request: PlanRequest) -> MemoryPlan:
    """The worker's memory figures for `config` under `request`; raises PlanError when the
    limits do not fit."""
    _check_request(request)
    dtype = resolve_dtype(request.dtype, config.torch_dtype)
    size = DTYPE_BYTES[dtype]
    weights, rotary = weight_bytes(config, size), rotary_bytes(config, size)
    slot = lora_slot_bytes(config, request.max_lora_rank, size)
    block = kv_block_bytes(config, request.block_size, size)
    budget, source = _kv_budget(request, weights + rotary)
    graphs = 0
    if request.has_graphs:  # their pool, and a scratch block past the allocator's
        graphs = graph_memory_bytes(config, max_num_seqs=request.max_num_seqs,
                                    max_lora_rank=request.max_lora_rank, dtype_bytes=size)
        graphs += block
    num_blocks = num_kv_blocks(budget, slot * request.max_loras + graphs, block)
    if num_blocks < 1:
        raise PlanError(f"KV budget of {budget} bytes minus {slot * request.max_loras} bytes "
                        f"of adapter slots and {graphs} of decode graphs holds no block of "
                        f"{block} bytes")
    context = request.context or config.max_position_embeddings
    if context > config.max_position_embeddings:
        raise PlanError(f"context {context} is beyond the model's "
                        f"{config.max_position_embeddings} tokens")
    num_seqs_fit = num_blocks // -(-context // request.block_size)
    host_adapter = host_adapter_bytes(config, request.max_lora_rank, size)
    return MemoryPlan(
        architecture=config.architecture, dtype=dtype, weights_bytes=weights,
        rotary_bytes=rotary, max_loras=request.max_loras, max_lora_rank=request.max_lora_rank,
        max_cpu_loras=request.max_cpu_loras, lora_slot_bytes=slot,
        lora_total_bytes=slot * request.max_loras, host_adapter_bytes=host_adapter,
        host_cache_bytes=host_adapter * request.max_cpu_loras, kv_budget_bytes=budget,
        kv_budget_source=source, num_kv_blocks=num_blocks, kv_block_size=request.block_size,
        kv_block_bytes=block, num_kv_tokens=num_blocks * request.block_size,
        max_model_len=config.max_position_embeddings, context=context,
        num_seqs_fit=num_seqs_fit, max_batch=min(num_seqs_fit, request.max_num_seqs),
        prefix_cache_scope=request.prefix_cache_scope,
        prefix_cache_max_blocks=num_blocks if request.prefix_cache_scope else 0,
        graph_bytes=graphs)


def _check_request(request: PlanRequest) -> None:
    for name in ("max_loras", "max_lora_rank", "block_size", "max_num_seqs"):
        if getattr(request, name) < 1:
            raise PlanError(f"{name} must be at least 1, got {getattr(request, name)}")
    if request.max_cpu_loras < 0:
        raise PlanError(f"max_cpu_loras must not be negative, got {request.max_cpu_loras}")
    if request.context is not None and request.context < 1:
        raise PlanError(f"context must be at least 1 token, got {request.context}")


def _kv_budget(request: PlanRequest, num_device_bytes: int) -> tuple[int, str]:
    """Bytes for KV cache and adapter slots together, and where the figure comes from
    (the worker's order: bytes, else a fraction, else its device's default)."""
    if request.kv_cache_bytes is not None:
        if request.kv_cache_bytes <= 0:
            raise PlanError(f"kv_cache_bytes must be positive, got {request.kv_cache_bytes}")
        return request.kv_cache_bytes, "--kv-cache-bytes"
    if request.gpu_memory is None:
        if request.kv_cache_fraction is not None:
            raise PlanError("a KV cache fraction needs --gpu-memory (the device's memory)")
        return DEFAULT_CPU_BYTES, "the CPU default (1 GiB)"
    fraction = request.kv_cache_fraction or DEFAULT_GPU_FRACTION
    if not 0.0 < fraction <= 1.0:
        raise PlanError(f"kv_cache_fraction must be in (0, 1], got {fraction}")
    num_free = request.gpu_memory - num_device_bytes
    if num_free <= 0:
        raise PlanError(f"weights and rotary tables ({num_device_bytes} bytes) do not fit in "
                        f"{request.gpu_memory} bytes of GPU memory")
    return (kv_budget_bytes(None, fraction, num_free),
            f"{fraction:g} of the GPU memory free after the weights")
