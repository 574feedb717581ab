"""Paged KV cache bookkeeping: a block allocator with reference counts.

Blocks are integers indexing the runner's KV tensors; this module never touches them.
Reference counts let a later prefix cache share a block between sequences.
"""

from __future__ import annotations

import collections


class BlockAllocator:
    """Hands out fixed-size KV blocks and takes them back when their last user frees them."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = collections.deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self._free)

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def try_allocate(self, num_blocks: int) -> list[int] | None:
        """`num_blocks` fresh blocks with a reference count of one, or None if too few are free."""
        if num_blocks > len(self._free):
            return None
        blocks = [self._free.popleft() for _ in range(num_blocks)]
        for block in blocks:
            self._ref_counts[block] = 1
        return blocks

    def share(self, block: int) -> None:
        """Adds a user to an allocated block."""
        if self._ref_counts[block] < 1:
            raise ValueError(f"block {block} is not allocated")
        self._ref_counts[block] += 1

    def free(self, blocks: list[int]) -> None:
        """Drops one user from each block; a block with no user left becomes free."""
        for block in blocks:
            if self._ref_counts[block] < 1:
                raise ValueError(f"block {block} freed twice")
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free.append(block)
