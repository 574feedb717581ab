"""Prefix caching: a request reuses the KV of leading blocks that an earlier request with
the same tokens and the same weights computed, instead of computing them again.

Keys. A full block's key is sha256 over its parent block's key and its token ids. The
first block's parent is a root over the base model, the adapter *digest* (none for the
base model), the isolation scope and the request's cache salt. So the same weights under
two names share blocks, and a new version of an adapter never sees its old version's
(vLLM keys blocks by adapter name or integer id, so a reloaded adapter serves the old
weights' prefix: vLLM issues #42125, #48352, #44250). The scope is the request's tenant by
default: a hit is faster, and a caller who can time that could learn what another tenant
sent; "global" (an operator's choice) shares across tenants. A salt separates further.

Taking. At admission, a request that holds no block takes by reference the longest run of
its leading blocks the allocator still holds, stopping before the block of its last
token: that token is always computed (its logits give the next token), and so a shared
block is never written. The rest is computed as usual; chunked prefill, preemption
(recompute, which now often hits its own freed blocks) and adapter slots are unchanged.

Caching. After each step, every block the step filled gets its key. When a request ends,
its blocks stay in the allocator with their keys, their KV intact, until their memory is
needed (blocks.py: least recently freed first, a sequence's tail before its head).
"""

from __future__ import annotations

import hashlib
import json
import struct

from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.request import Request

PREFIX_CACHE_SCOPES = ("tenant", "global")
# Bump when what a key covers changes, so no old key can match a new one.
_KEY_VERSION = "lorafleet-prefix-cache-1"


class PrefixCache:
    """Finds a request's cached leading blocks and keys the blocks it fills. `scope`:
    "tenant" (blocks are shared within a tenant) or "global" (across tenants); `model`:
    what identifies the base model's KV (name and dtype), part of every key."""

    def __init__(self, allocator: BlockAllocator, *, scope: str = "tenant",
                 model: str = "") -> None:
        if scope not in PREFIX_CACHE_SCOPES:
            raise ValueError(f"prefix cache scope must be one of {PREFIX_CACHE_SCOPES}, "
                             f"got {scope!r}")
        self.allocator = allocator
        self.scope = scope
        self.model = model

    def take_cached(self, request: Request) -> None:
        """For a request that holds no block: takes its cached leading full blocks by
        reference (never the block of its last token) and counts them as computed."""
        if request.block_table:
            return
        size = self.allocator.block_size
        blocks = []
        for index in range((request.num_tokens - 1) // size):
            block = self.allocator.find(self._key(request, index))
            if block is None:
                break
            blocks.append(block)
        for block in blocks:
            self.allocator.take(block)
        request.block_table = blocks
        request.num_computed_tokens = len(blocks) * size

    def cache_computed(self, request: Request, num_new: int) -> None:
        """Keys the blocks that the request's last `num_new` computed tokens filled."""
        size = self.allocator.block_size
        first = (request.num_computed_tokens - num_new) // size
        for index in range(first, request.num_computed_tokens // size):
            self.allocator.try_set_key(request.block_table[index], self._key(request, index))

    def _key(self, request: Request, index: int) -> bytes:
        """The key of the request's full block `index` (keys are kept on the request)."""
        keys, size = request.block_keys, self.allocator.block_size
        while len(keys) <= index:
            parent = keys[-1] if keys else self._root(request)
            start = len(keys) * size
            tokens = request.token_ids(start, start + size)
            keys.append(hashlib.sha256(parent + struct.pack(f"<{size}I", *tokens)).digest())
        return keys[index]

    def _root(self, request: Request) -> bytes:
        """What every key of the request covers besides tokens: model, weights, scope."""
        scope = request.tenant if self.scope == "tenant" else None
        adapter = None if request.adapter is None else str(request.adapter)
        fields = [_KEY_VERSION, self.model, adapter, scope, request.cache_salt]
        return hashlib.sha256(json.dumps(fields).encode()).digest()


class NoPrefixCache:
    """Prefix caching off: every request computes its whole prompt."""

    def take_cached(self, request: Request) -> None:
        """Takes nothing."""

    def cache_computed(self, request: Request, num_new: int) -> None:
        """Keys nothing."""
