"""API keys: their format, the record stored for each, and the slow hash.

A key reads `lf_<id>_<secret>`: `id` is 12 hex characters, stored in clear so a server
finds the one record to check (one argon2 verification per new key, never one per stored
key); `secret` is 32 random bytes, urlsafe base64. Only the argon2id hash of the whole
key is stored. A key is shown once, when it is made.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time

import argon2

from lorafleet.runtime.auth.principals import ROLE_NAMES, Principal, Role

KEY_PREFIX = "lf_"
_KEY_RE = re.compile(r"lf_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# OWASP's argon2id setting (19 MiB, 2 passes): about 50 ms here, paid once per key per
# server thanks to the verified-key cache.
HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class InvalidKeyRecord(ValueError):
    """A key record or key request is malformed; the message says which field."""


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """What a server stores for one key: never the key itself."""

    key_id: str
    hash: str
    role: Role
    tenant: str = ""
    can_create_versions: bool = False
    create_time: float = 0.0  # seconds since the epoch

    def principal(self) -> Principal:
        """The principal a caller holding this key becomes."""
        return Principal(self.role, self.tenant, self.key_id, self.can_create_versions)

    def to_json(self) -> str:
        """One JSON line: {"id", "hash", "role", "tenant", "can_create_versions", "created"}."""
        return json.dumps({"id": self.key_id, "hash": self.hash, "role": self.role.value,
                           "tenant": self.tenant,
                           "can_create_versions": self.can_create_versions,
                           "created": self.create_time})

    @classmethod
    def from_json(cls, text: str) -> KeyRecord:
        """Parses a line written by `to_json` (id, hash and role are required)."""
        try:
            data = json.loads(text)
            return checked_record(
                data["id"], data["hash"], data["role"], data.get("tenant", ""),
                bool(data.get("can_create_versions", False)), float(data.get("created", 0)))
        except InvalidKeyRecord:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise InvalidKeyRecord(f"not a key record ({error})") from None


def checked_record(key_id: str, hash_: str, role: str, tenant: str = "",
                   can_create_versions: bool = False, create_time: float = 0.0) -> KeyRecord:
    """A KeyRecord from loose fields; InvalidKeyRecord naming the field that is wrong."""
    if not re.fullmatch(r"[0-9a-f]{12}", key_id or ""):
        raise InvalidKeyRecord(f"id: {key_id!r} is not 12 hex characters")
    if not str(hash_).startswith("$argon2id$"):
        raise InvalidKeyRecord("hash: not an argon2id hash")
    return KeyRecord(key_id, hash_, checked_role(role, tenant), tenant,
                     can_create_versions, create_time)


def checked_role(role: str, tenant: str) -> Role:
    """The Role named `role`; a tenant role needs a tenant name, the others none."""
    if role not in ROLE_NAMES:
        raise InvalidKeyRecord(f"role: {role!r} is not one of {', '.join(ROLE_NAMES)}")
    if (role == Role.TENANT.value) != bool(tenant):
        raise InvalidKeyRecord("tenant: give a tenant name with role tenant, and only then")
    if tenant and not _TENANT_RE.fullmatch(tenant):
        raise InvalidKeyRecord(f"tenant: {tenant[:64]!r} is not a tenant name (lowercase letters, "
                        "digits and '-', at most 63)")
    return Role(role)


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key, or None for anything else."""
    match = _KEY_RE.fullmatch(key)
    return match.group(1) if match else None


def make_key(role: str, tenant: str = "", can_create_versions: bool = False
             ) -> tuple[str, KeyRecord]:
    """A new random key and its record (the key is shown once; store the record)."""
    checked_role(role, tenant)
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(key_id, HASHER.hash(key), Role(role), tenant, can_create_versions,
                       round(time.time(), 3))
    return key, record


def matches(record: KeyRecord, key: str) -> bool:
    """Whether `key` is the key `record` was made from (argon2: slow on purpose)."""
    try:
        return HASHER.verify(record.hash, key)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False
