"""Sizing and allocating the paged KV cache from a memory budget.

The budget is measured after the model weights are placed; memory reserved for other
device buffers (the adapter cache's slots) is subtracted before the blocks are counted.
The arithmetic is dataplane/config/sizing.py's, the same `lorafleet plan` does; this module
measures the device and allocates.
"""

from __future__ import annotations

import dataclasses
import pathlib

import torch

from lorafleet.dataplane.config.sizing import (
    DEFAULT_CPU_BYTES,
    DEFAULT_GPU_FRACTION,
    kv_block_bytes,
    kv_budget_bytes,
    num_kv_blocks,
)
from lorafleet.dataplane.model.config import ModelConfig


class KVCacheSizeError(ValueError):
    """The budget does not leave room for even one KV block."""


@dataclasses.dataclass(frozen=True)
class KVCacheBudget:
    """Memory for the KV cache: exactly `num_bytes`, or `fraction` of the device memory
    free once the weights are placed. Reserved buffers come out of either."""

    num_bytes: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.num_bytes is None) == (self.fraction is None):
            raise ValueError("KVCacheBudget takes exactly one of num_bytes, fraction")
        if self.num_bytes is not None and self.num_bytes <= 0:
            raise ValueError(f"num_bytes must be positive, got {self.num_bytes}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


def default_budget(device: torch.device) -> KVCacheBudget:
    """The KV cache budget used when none is given, for `device`."""
    if device.type == "cuda":
        return KVCacheBudget(fraction=DEFAULT_GPU_FRACTION)
    return KVCacheBudget(num_bytes=DEFAULT_CPU_BYTES)


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values of `block_size` tokens across all layers."""
    return kv_block_bytes(config, block_size, torch.empty((), dtype=dtype).element_size())


def free_device_memory(device: torch.device) -> int:
    """Bytes free on `device` now (for cpu: MemAvailable of the host)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read free host memory from /proc/meminfo")


def count_kv_blocks(
    budget: KVCacheBudget, num_free_bytes: int | None, num_reserved_bytes: int, block_bytes: int
) -> int:
    """Blocks that fit in the budget minus the reserved bytes; `num_free_bytes` is the free
    device memory measured after the weights were placed (used with a fraction only)."""
    available = kv_budget_bytes(budget.num_bytes, budget.fraction, num_free_bytes)
    num_blocks = num_kv_blocks(available, num_reserved_bytes, block_bytes)
    if num_blocks < 1:
        raise KVCacheSizeError(
            f"KV budget of {available} bytes minus {num_reserved_bytes} reserved bytes "
            f"holds no block of {block_bytes} bytes"
        )
    return num_blocks


def allocate_kv_cache(
    config: ModelConfig, num_blocks: int, block_size: int, device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[num_layers, 2, num_blocks, block_size, kv_heads, head_dim], zeroed so padded
    reads hold finite numbers that attention masks away."""
    shape = (config.num_layers, 2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return torch.zeros(shape, device=device, dtype=dtype)
