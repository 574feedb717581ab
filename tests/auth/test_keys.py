"""Keys, key stores and the verifier without servers: format, one argon2 run per key,
revocation through a key file, failing closed, and who may vouch for a tenant."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from lorafleet.runtime.auth import (
    FileKeyStore,
    KeyRecord,
    KeyVerifier,
    MemoryKeyStore,
    Role,
    make_key,
)
from lorafleet.runtime.auth.interceptor import TENANT_HEADER, vouched_for
from lorafleet.runtime.auth.keys import InvalidKeyRecord, key_id_of


def test_a_key_is_random_and_only_its_hash_is_stored():
    key, record = make_key("tenant", "acme", can_create_versions=True)
    other, _ = make_key("tenant", "acme")
    assert key != other and key_id_of(key) == record.key_id
    assert key not in record.to_json() and record.hash.startswith("$argon2id$")
    assert KeyRecord.from_json(record.to_json()) == record
    with pytest.raises(InvalidKeyRecord, match="tenant"):
        make_key("tenant")
    with pytest.raises(InvalidKeyRecord, match="role"):
        make_key("root")


async def test_argon2_runs_once_per_key_not_once_per_request():
    key, record = make_key("admin")
    verifier = KeyVerifier(MemoryKeyStore([record]))
    for _ in range(50):
        assert (await verifier.verify(key)).role is Role.ADMIN
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for _ in range(50):
        assert await verifier.verify(wrong) is None
    assert verifier.num_hashes == 2  # one per distinct key presented, right or wrong


async def test_a_revoked_key_fails_at_once_even_when_cached():
    key, record = make_key("worker")
    store = MemoryKeyStore([record])
    verifier = KeyVerifier(store)
    assert await verifier.verify(key) is not None
    store.remove(record.key_id)
    assert await verifier.verify(key) is None


async def test_deleting_a_line_of_the_key_file_revokes_within_a_second(tmp_path):
    (key_a, record_a), (key_b, record_b) = make_key("admin"), make_key("gateway")
    path = tmp_path / "keys.jsonl"
    path.write_text(f"# comment\n{record_a.to_json()}\n\n{record_b.to_json()}\n")
    verifier = KeyVerifier(FileKeyStore(path))
    assert await verifier.verify(key_a) and await verifier.verify(key_b)
    path.write_text(record_b.to_json() + "\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # mtime surely changes
    deadline = time.monotonic() + 1.0
    while await verifier.verify(key_a) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await verifier.verify(key_b) is not None


async def test_a_broken_key_file_refuses_every_key_until_fixed(tmp_path):
    key, record = make_key("admin")
    path = tmp_path / "keys.jsonl"
    path.write_text(record.to_json() + "\n")
    store = FileKeyStore(path)
    path.write_text("not json\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    await asyncio.sleep(0.3)
    assert await KeyVerifier(store).verify(key) is None


def test_only_a_gateway_or_an_admin_may_vouch_for_a_tenant():
    metadata = ((TENANT_HEADER, "globex"),)
    for role in (Role.GATEWAY, Role.ADMIN):
        vouched = vouched_for(make_key(role.value)[1].principal(), metadata)
        assert (vouched.role, vouched.tenant) == (Role.TENANT, "globex")
        assert not vouched.can_create_versions and vouched.via.role is role
    tenant = make_key("tenant", "acme")[1].principal()
    assert vouched_for(tenant, metadata) == tenant
    worker = make_key("worker")[1].principal()
    assert vouched_for(worker, metadata) == worker
