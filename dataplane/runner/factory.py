"""Building a ready engine from a checkpoint directory.

Order matters: weights are placed first, then `reserve_memory` runs (the adapter cache
preallocates its device slots there and returns their bytes), then the KV cache is sized
from what is left of the budget.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import torch

from lorafleet.dataplane.config.sizing import graph_memory_bytes
from lorafleet.dataplane.engine.adapter_policy import AdapterScheduling
from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.engine import Engine
from lorafleet.dataplane.engine.prefix_cache import PrefixCache
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerConfig
from lorafleet.dataplane.lora.device import DeviceAdapters
from lorafleet.dataplane.model.attention import runs_paged_kernels
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.model.decoder import DecoderModel
from lorafleet.dataplane.runner.batch import BatchBuilder
from lorafleet.dataplane.runner.graphs import attach_decode_graphs
from lorafleet.dataplane.runner.kv_cache import (
    KVCacheBudget,
    allocate_kv_cache,
    bytes_per_block,
    count_kv_blocks,
    default_budget,
    free_device_memory,
)
from lorafleet.dataplane.runner.model_runner import ModelRunner

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    """cuda when a GPU is visible, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str | torch.dtype | None, checkpoint_dtype: str) -> torch.dtype:
    """The dtype asked for, else the checkpoint's own, else float32."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"dtype {name} is not supported; use one of {list(DTYPES)}")
        return name
    chosen = name or (checkpoint_dtype if checkpoint_dtype in DTYPES else "float32")
    if chosen not in DTYPES:
        raise ValueError(f"dtype {chosen!r} is not supported; use one of {list(DTYPES)}")
    return DTYPES[chosen]


def create_engine(
    model_dir: str | pathlib.Path, *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kv_cache: KVCacheBudget | None = None,
    block_size: int = 16,
    scheduler_config: SchedulerConfig = SchedulerConfig(),  # noqa: B008 (frozen)
    adapters: DeviceAdapters | None = None,
    reserve_memory: Callable[[DecoderModel], int] | None = None,
    prefix_cache_scope: str | None = None,
    enforce_eager: bool = False,
) -> Engine:
    """Loads a checkpoint and wires scheduler and runner into an Engine (no tokenizer:
    text is the frontend's).

    kv_cache: bytes or a fraction for the KV cache (default: `default_budget(device)`).
    adapters: the device adapter slots and their host tier (None: base model only); the
    slots are preallocated once the weights are placed, and the KV cache does without
    their bytes. reserve_memory(model) may reserve more the same way.
    prefix_cache_scope: "tenant" or "global" shares the KV of equal prompt prefixes within
    a tenant or across tenants (engine/prefix_cache.py); None (the default here; a worker
    turns it on) computes every prompt whole.
    enforce_eager: never replay decode steps from CUDA graphs. Otherwise, on CUDA with
    Triton, decode steps run from graphs captured here (runner/graphs.py): their memory
    comes out of the KV budget, and one KV block past the allocator's is their scratch.
    """
    model_dir = pathlib.Path(model_dir)
    device = torch.device(device) if device is not None else default_device()
    kv_cache = kv_cache or default_budget(device)
    config = ModelConfig.from_dir(model_dir)
    model = DecoderModel.from_dir(model_dir, device, resolve_dtype(dtype, config.torch_dtype))
    num_free = free_device_memory(device) if kv_cache.fraction is not None else None
    num_reserved = adapters.reserve(model) if adapters is not None else 0
    num_reserved += reserve_memory(model) if reserve_memory is not None else 0
    use_graphs = not enforce_eager and device.type == "cuda" and runs_paged_kernels(device)
    if use_graphs:
        num_reserved += graph_memory_bytes(
            config, max_num_seqs=scheduler_config.max_num_seqs,
            max_lora_rank=adapters.max_lora_rank if adapters is not None else 0,
            dtype_bytes=torch.empty((), dtype=model.dtype).element_size())
    block_bytes = bytes_per_block(config, block_size, model.dtype)
    num_blocks = count_kv_blocks(kv_cache, num_free, num_reserved + use_graphs * block_bytes,
                                 block_bytes)
    cache = allocate_kv_cache(config, num_blocks + use_graphs, block_size, device, model.dtype)
    builder = BatchBuilder(block_size, device, config.sliding_window)
    runner = ModelRunner(model, cache, builder, adapters)
    if use_graphs:  # block num_blocks, past the allocator's, is the graphs' scratch
        attach_decode_graphs(runner, scratch_block=num_blocks, block_size=block_size,
                             max_num_seqs=scheduler_config.max_num_seqs).capture_all()
    scheduling = AdapterScheduling(adapters.num_slots, adapters.host) if adapters else None
    allocator = BlockAllocator(num_blocks, block_size)
    prefix_cache = None if prefix_cache_scope is None else PrefixCache(
        allocator, scope=prefix_cache_scope, model=f"{model_dir.resolve()}:{model.dtype}")
    scheduler = Scheduler(scheduler_config, allocator, scheduling, prefix_cache)
    return Engine(scheduler, runner, eos_token_ids=eos_token_ids(model_dir, config),
                  vocab_size=config.vocab_size, max_model_len=config.max_position_embeddings)


def eos_token_ids(model_dir: pathlib.Path, config: ModelConfig) -> tuple[int, ...]:
    """EOS ids from config.json and generation_config.json (which may list several), and
    tokenizer_config.json's eos_token looked up in tokenizer.json: the ids a tokenizer
    would report, read without loading one (the engine loads none)."""
    ids = list(config.eos_token_ids)
    path = model_dir / "generation_config.json"
    if path.exists():
        eos = json.loads(path.read_text()).get("eos_token_id")
        for token in eos if isinstance(eos, list) else [eos]:
            if token is not None and token not in ids:
                ids.append(int(token))
    token = _tokenizer_eos_id(model_dir)
    if token is not None and token not in ids:
        ids.append(token)
    return tuple(ids)


def _tokenizer_eos_id(model_dir: pathlib.Path) -> int | None:
    """The id of tokenizer_config.json's eos_token in tokenizer.json: an added token, or
    an entry of the model's vocabulary (a dict, or a list of (piece, score) pairs)."""
    config_path, path = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    if not config_path.exists() or not path.exists():
        return None
    text = json.loads(config_path.read_text()).get("eos_token")
    text = text.get("content") if isinstance(text, dict) else text
    if not text:
        return None
    spec = json.loads(path.read_text())
    for added in spec.get("added_tokens") or ():
        if added.get("content") == text:
            return int(added["id"])
    vocab = (spec.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        return vocab.get(text)
    if isinstance(vocab, list):
        return next((i for i, entry in enumerate(vocab) if entry and entry[0] == text), None)
    return None
