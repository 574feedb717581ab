"""The API keys of one `lorafleet up` session: an admin key, a key for tenant `demo`
(whose adapters up registers), and the controlplane, worker and gateway keys the
children run with.

Their records go to DATA_DIR/keys.jsonl (readable by this user only), which the control
plane reads with --auth-keys; the children get their own key in $LORAFLEET_API_KEY, not
on the command line, so `ps` does not show it. New keys every session.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from lorafleet.runtime.auth import make_key
from lorafleet.runtime.auth.startup import API_KEY_ENV

DEMO_TENANT = "demo"


@dataclasses.dataclass(frozen=True)
class UpKeys:
    """The session's keys and the file of their records."""

    admin: str
    demo: str
    controlplane: str
    worker: str
    gateway: str
    path: pathlib.Path

    @staticmethod
    def env(key: str) -> dict[str, str]:
        """The environment that hands `key` to a child."""
        return {API_KEY_ENV: key}


def make_up_keys(data_dir: pathlib.Path) -> UpKeys:
    """Makes the keys and writes their records to DATA_DIR/keys.jsonl (mode 0600)."""
    made = {"admin": make_key("admin"),
            "demo": make_key("tenant", DEMO_TENANT, can_create_versions=True),
            "controlplane": make_key("controlplane"), "worker": make_key("worker"),
            "gateway": make_key("gateway")}
    path = data_dir / "keys.jsonl"
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.writelines(record.to_json() + "\n" for _, record in made.values())
    return UpKeys(**{name: key for name, (key, _) in made.items()}, path=path)
