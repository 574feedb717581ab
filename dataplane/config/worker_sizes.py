"""Every size derived while a worker is built, in one frozen object.

Filled in memory order (weights, then adapter slots, then the KV cache from what is
left), printed at start, reported by GetWorkerStatus and the heartbeat.
"""

from __future__ import annotations

import dataclasses

_MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class WorkerSizes:
    """Limits and memory of one built worker."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    lora_slot_bytes: int
    num_kv_blocks: int
    kv_block_size: int
    kv_block_bytes: int
    max_model_len: int

    @property
    def lora_total_bytes(self) -> int:
        """Bytes of all adapter slots."""
        return self.lora_slot_bytes * self.max_loras

    @property
    def num_kv_tokens(self) -> int:
        """Tokens the KV cache holds across all sequences."""
        return self.num_kv_blocks * self.kv_block_size

    def describe(self) -> str:
        """One line for people."""
        return (f"adapter slots: {self.lora_slot_bytes / _MIB:.2f} MiB each, "
                f"{self.lora_total_bytes / _MIB:.2f} MiB in all; KV cache: "
                f"{self.num_kv_blocks} blocks of {self.kv_block_bytes / _MIB:.3f} MiB "
                f"({self.num_kv_tokens} tokens)")
