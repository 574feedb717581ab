"""Prefix affinity: among the workers a request may go to, prefer the one likely to hold its
prompt's prefix in its prefix cache, unless that worker is much busier.

A worker reuses the KV of a prompt prefix that it computed itself for the same adapter
weights (dataplane/engine/prefix_cache.py), so requests that share a system prompt hit
only where an earlier one ran. The gateway does not tokenize: a request's key is sha256
over the weights (the version's digest, or the base model), its cache salt and the
prompt's start — its first PREFIX_TOKENS token ids, or the first PREFIX_CHARS characters
of its text (of a chat: roles and contents in order). Each candidate scores
sha256(key, worker id) and the highest is preferred (rendezvous hashing): every gateway
replica prefers the same worker with no shared state, and a worker leaving moves only the
keys it was preferred for. The preferred worker keeps the request unless it has
MAX_EXCESS or more requests outstanding from this gateway beyond the least busy candidate
of the same rank: affinity weighed against load, as llm-d's prefix-cache scorer is
against its load scorers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping

from lorafleet.dataplane.gateway.picking import Candidate
from lorafleet.inference.v1 import inference_service_pb2 as pb

PREFIX_TOKENS = 128
PREFIX_CHARS = 512
MAX_EXCESS = 8


def prefix_key(request: pb.GenerateRequest, weights: str) -> bytes:
    """The key of the request's prompt prefix on `weights` (a digest or a base model)."""
    form = request.WhichOneof("prompt") or ""
    if form == "token_ids":
        ids = request.token_ids.ids[:PREFIX_TOKENS]
        start = struct.pack(f"<{len(ids)}I", *ids)
    elif form == "text":
        start = request.text[:PREFIX_CHARS].encode()
    else:
        start = _chat_start(request.chat.messages).encode()
    head = json.dumps([weights, request.cache_salt, form]).encode()
    return hashlib.sha256(head + b"\0" + start).digest()


def _chat_start(messages) -> str:
    """The first PREFIX_CHARS characters of the messages' roles and contents, in order."""
    parts, size = [], 0
    for message in messages:
        if size >= PREFIX_CHARS:
            break
        part = f"{message.role}\n{message.content}\n"
        parts.append(part)
        size += len(part)
    return "".join(parts)[:PREFIX_CHARS]


def prefer(ranked: list[Candidate], key: bytes,
           outstanding: Mapping[str, int]) -> list[Candidate]:
    """`ranked` with the worker `key` prefers first, when it ranks with the first and has
    fewer than MAX_EXCESS requests outstanding beyond the least busy of that rank."""
    top = [c for c in ranked if c.rank == ranked[0].rank] if ranked else []
    if len(top) < 2:
        return ranked
    chosen = max(top, key=lambda c: _score(key, c.worker_id))
    least = min(outstanding.get(c.address, 0) for c in top)
    if outstanding.get(chosen.address, 0) - least >= MAX_EXCESS:
        return ranked
    return [chosen, *(c for c in ranked if c is not chosen)]


def _score(key: bytes, worker_id: str) -> int:
    return int.from_bytes(hashlib.sha256(key + worker_id.encode()).digest()[:8], "big")
