"""The etcd key layout of the control plane, and typed decoding of what is stored.

Every value is a serialized protobuf message from the control-plane stubs. Keys (under
a root, `/lorafleet/` by default; docs/controlplane.md has the full table):

    adapters/<tenant>/<name>                         Adapter
    versions/<tenant>/<name>/<version:010d>          AdapterVersion (immutable once validated)
    rollouts/<tenant>/<name>                         Rollout (the one in effect)
    rollout-history/<tenant>/<name>/<gen:020d>       Rollout (superseded; rollback pops)
    workers/<worker_id>                              Worker, attached to the worker's lease
    drains/<worker_id>                               empty, attached to the worker's lease
    placement/<tenant>/<name>/<version:010d>         VersionPlacement (desired + failures)
    leader                                           id of the reconciling replica (lease)
    keys/<key id>                                    API key record, JSON (api_access.py)
    worker-keys/<worker_id>                          id of the key the worker id is bound to
    audit/<unix ns:020d>-<random>                    AuditEntry (controlplane/audit.py)

Numbers are zero-padded so etcd's byte order is numeric order.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import timestamp_pb2

from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb

DEFAULT_ROOT = "/lorafleet/"
VersionKey = tuple[str, int]

def now() -> timestamp_pb2.Timestamp:
    """The current time as a protobuf Timestamp (every stored time comes from here)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclasses.dataclass(frozen=True)
class Keys:
    """Builds every key of the schema under one root."""

    root: str = DEFAULT_ROOT

    def adapter(self, name: str) -> str:
        """Key of an adapter."""
        return f"{self.root}adapters/{name}"

    def version(self, name: str, version: int) -> str:
        """Key of one version of an adapter."""
        return f"{self.root}versions/{name}/{version:010d}"

    def versions(self, name: str) -> str:
        """Prefix of an adapter's versions."""
        return f"{self.root}versions/{name}/"

    def rollout(self, name: str) -> str:
        """Key of an adapter's current rollout."""
        return f"{self.root}rollouts/{name}"

    def history(self, name: str, generation: int | None = None) -> str:
        """Prefix of an adapter's superseded rollouts, or the key of one generation."""
        prefix = f"{self.root}rollout-history/{name}/"
        return prefix if generation is None else f"{prefix}{generation:020d}"

    def worker(self, worker_id: str) -> str:
        """Key of a live worker."""
        return f"{self.root}workers/{worker_id}"

    def drain(self, worker_id: str) -> str:
        """Key marking a worker as draining."""
        return f"{self.root}drains/{worker_id}"

    def placement(self, name: str, version: int | None = None) -> str:
        """Key of a version's placement, or the prefix of an adapter's placements."""
        prefix = f"{self.root}placement/{name}/"
        return prefix if version is None else f"{prefix}{version:010d}"

    def leader(self) -> str:
        """Key held by the reconciling control-plane replica."""
        return f"{self.root}leader"


@dataclasses.dataclass
class Snapshot:
    """Everything under the root at one etcd revision, decoded."""

    revision: int = 0
    adapters: dict[str, adapter_pb.Adapter] = dataclasses.field(default_factory=dict)
    versions: dict[VersionKey, adapter_pb.AdapterVersion] = dataclasses.field(default_factory=dict)
    rollouts: dict[str, adapter_pb.Rollout] = dataclasses.field(default_factory=dict)
    workers: dict[str, fleet_pb.Worker] = dataclasses.field(default_factory=dict)
    placements: dict[VersionKey, fleet_pb.VersionPlacement] = dataclasses.field(
        default_factory=dict
    )
    leader: str | None = None

    def routed_weights(self) -> dict[VersionKey, int]:
        """Versions with traffic (weight > 0 in their adapter's rollout) and their weight."""
        routed = {}
        for name, rollout in self.rollouts.items():
            for share in rollout.weights:
                if share.weight > 0 and (name, share.version) in self.versions:
                    routed[(name, share.version)] = share.weight
        return routed


def decode_into(snapshot: Snapshot, root: str, items: dict[str, bytes]) -> Snapshot:
    """Fills `snapshot` from raw key -> value pairs under `root`; unknown keys are ignored."""
    drains = set()
    for key, value in items.items():
        kind, _, rest = key[len(root):].partition("/")
        if kind == "adapters":
            snapshot.adapters[rest] = adapter_pb.Adapter.FromString(value)
        elif kind == "versions":
            message = adapter_pb.AdapterVersion.FromString(value)
            snapshot.versions[(message.adapter, message.version)] = message
        elif kind == "rollouts":
            snapshot.rollouts[rest] = adapter_pb.Rollout.FromString(value)
        elif kind == "workers":
            snapshot.workers[rest] = fleet_pb.Worker.FromString(value)
        elif kind == "drains":
            drains.add(rest)
        elif kind == "placement":
            message = fleet_pb.VersionPlacement.FromString(value)
            snapshot.placements[(message.adapter, message.version)] = message
        elif kind == "leader":
            snapshot.leader = value.decode()
    for worker_id in drains & set(snapshot.workers):
        snapshot.workers[worker_id].is_draining = True
    return snapshot
