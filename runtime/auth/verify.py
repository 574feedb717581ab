"""Checking a presented key against a store, with argon2 run once per key.

A verified key is remembered by its sha256 together with the stored hash it matched;
each request still looks its record up in the store (a dict lookup), so a revoked key
(record gone) fails at once, and argon2 runs again only for a key never seen before.
Failures are remembered too, so a wrong key with a real key id cannot make the server
hash on every request.
"""

from __future__ import annotations

import asyncio
import hashlib

from lorafleet.runtime.auth.keys import key_id_of, matches
from lorafleet.runtime.auth.principals import Principal
from lorafleet.runtime.auth.stores import KeyStore

MAX_CACHED_KEYS = 10_000


class KeyVerifier:
    """Turns a presented key into a Principal, or None when it is not a valid key."""

    def __init__(self, store: KeyStore, max_cached: int = MAX_CACHED_KEYS):
        self.store = store
        self.max_cached = max_cached
        self._verdicts: dict[bytes, tuple[str, bool]] = {}  # sha256 -> (hash, matched)
        self.num_hashes = 0  # argon2 verifications run, for tests and curiosity

    async def verify(self, key: str) -> Principal | None:
        """The key's principal, or None (malformed, unknown, revoked or wrong)."""
        key_id = key_id_of(key)
        record = self.store.record(key_id) if key_id else None
        if record is None:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        verdict = self._verdicts.get(digest)
        if verdict is None or verdict[0] != record.hash:
            self.num_hashes += 1
            verdict = (record.hash, await asyncio.to_thread(matches, record, key))
            self._remember(digest, verdict)
        return record.principal() if verdict[1] else None

    def _remember(self, digest: bytes, verdict: tuple[str, bool]) -> None:
        if len(self._verdicts) >= self.max_cached:
            self._verdicts.pop(next(iter(self._verdicts)))  # the oldest
        self._verdicts[digest] = verdict
