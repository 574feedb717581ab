"""Paged KV cache bookkeeping: a block allocator with reference counts and content keys.

Blocks are integers indexing the runner's KV tensors; this module never touches them.
Reference counts let the prefix cache (prefix_cache.py) share a block between sequences;
a block may carry a content key, and a freed block keeps it (and its KV) until the block
is handed out again, least recently freed first. Without keys this is a plain allocator.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable


class BlockAllocator:
    """Hands out fixed-size KV blocks and takes them back when their last user frees them."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Free blocks in the order they are handed out again: least recently freed first.
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(
            range(num_blocks))
        self._ref_counts = [0] * num_blocks
        self._keys: list[Hashable | None] = [None] * num_blocks
        self._by_key: dict[Hashable, int] = {}
        self._num_free_keyed = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (cached ones included: they are reused when needed)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Free blocks that keep a content key: their KV waits to be reused."""
        return self._num_free_keyed

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def try_allocate(self, num_blocks: int) -> list[int] | None:
        """`num_blocks` fresh blocks with a reference count of one, or None if too few are
        free. A reused block loses its content key: its KV is about to be overwritten."""
        if num_blocks > len(self._free):
            return None
        blocks = []
        for _ in range(num_blocks):
            block, _ = self._free.popitem(last=False)
            if self._keys[block] is not None:
                self._num_free_keyed -= 1
                del self._by_key[self._keys[block]]
                self._keys[block] = None
            self._ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def share(self, block: int) -> None:
        """Adds a user to an allocated block."""
        if self._ref_counts[block] < 1:
            raise ValueError(f"block {block} is not allocated")
        self._ref_counts[block] += 1

    def free(self, blocks: list[int]) -> None:
        """Drops one user from each of a sequence's blocks; a block with no user left
        becomes free. Freed last block first, so a sequence's tail is reused before its
        head, which other sequences are likelier to share."""
        for block in reversed(blocks):
            if self._ref_counts[block] < 1:
                raise ValueError(f"block {block} freed twice")
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free[block] = None
                if self._keys[block] is not None:
                    self._num_free_keyed += 1

    # -- content keys (prefix_cache.py) ---------------------------------------------------

    def find(self, key: Hashable) -> int | None:
        """The block that holds content `key`, held or free; None if none does."""
        return self._by_key.get(key)

    def take(self, block: int) -> None:
        """Adds a user to a block found by key, taking it off the free list if it was free."""
        if self._ref_counts[block] == 0:
            del self._free[block]
            if self._keys[block] is not None:
                self._num_free_keyed -= 1
        self._ref_counts[block] += 1

    def try_set_key(self, block: int, key: Hashable) -> bool:
        """Marks a held, fully written block as holding content `key`; False (nothing
        changes) when another block already holds that content or this one has a key."""
        if self._ref_counts[block] < 1:
            raise ValueError(f"block {block} is not allocated")
        if key in self._by_key or self._keys[block] is not None:
            return False
        self._keys[block] = key
        self._by_key[key] = block
        return True
