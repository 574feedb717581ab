"""The gateway's choices as pure functions: which version a request gets, which worker runs it.

Version: the rollout's weights, laid end to end in version order, cover [0, total). A
request with a routing key lands at sha256(adapter, key) scaled into that range, so every
gateway replica sends the same key to the same version while the weights stay put (and a
small weight change moves few keys); a request without one lands at a random point.

Worker: holders of the version, draining workers last, device tier before host tier, then
the fewest requests this gateway has outstanding there, ties broken at random so traffic
spreads. A version no worker holds goes to a live worker of its base model, which loads it
on demand: workers this gateway already loaded it on first, then the ones placement chose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Collection, Iterable, Mapping

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb

# Pick labels, also the values of the picks metric's `tier` label.
DEVICE, HOST, ON_DEMAND, BASE = "device", "host", "on_demand", "base"
PICKS = (DEVICE, HOST, ON_DEMAND, BASE)
_TIER_PICKS = {worker_pb.TIER_DEVICE: DEVICE, worker_pb.TIER_HOST: HOST}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A worker an attempt may go to: `pick` says why, `rank` orders it (smaller first)."""

    worker_id: str
    address: str
    pick: str
    rank: tuple[int, ...] = ()
    admin_address: str = ""  # its WorkerService, when apart from `address` (--admin-port)

    @property
    def needs_load(self) -> bool:
        """Whether the worker must be asked to load the version first."""
        return self.pick == ON_DEMAND


def key_point(adapter: str, routing_key: str) -> float:
    """Where a routing key lands in [0, 1): the same on every gateway replica."""
    digest = hashlib.sha256(f"{adapter}\n{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_version(route: fleet_pb.AdapterRoute, routing_key: str,
                 rng: random.Random) -> fleet_pb.VersionRoute:
    """The version a request for the bare adapter name gets, by the rollout's weights."""
    versions = sorted((v for v in route.versions if v.weight > 0), key=lambda v: v.version)
    if not versions:
        raise LookupError(f"adapter {route.adapter} routes no version")
    total = sum(v.weight for v in versions)
    point = key_point(route.adapter, routing_key) if routing_key else rng.random()
    target, cumulative = point * total, 0
    for version in versions:
        cumulative += version.weight
        if target < cumulative:
            return version
    return versions[-1]  # only reachable through float rounding at the very top


def find_version(route: fleet_pb.AdapterRoute, number: int) -> fleet_pb.VersionRoute | None:
    """The routed version `number` of an adapter, if the rollout routes it."""
    return next((v for v in route.versions if v.version == number), None)


def holder_candidates(version: fleet_pb.VersionRoute,
                      workers: Mapping[str, fleet_pb.WorkerRoute]) -> list[Candidate]:
    """Workers that hold the version, ranked by (draining, tier)."""
    candidates = []
    for endpoint in version.workers:
        pick = _TIER_PICKS.get(endpoint.tier, HOST)
        live = workers.get(endpoint.worker_id)
        is_draining = live is not None and live.is_draining
        candidates.append(Candidate(endpoint.worker_id, endpoint.address, pick,
                                    (int(is_draining), PICKS.index(pick))))
    return candidates


def load_candidates(version: fleet_pb.VersionRoute, workers: Iterable[fleet_pb.WorkerRoute],
                    loaded_here: Collection[str]) -> list[Candidate]:
    """Workers of the version's base model that may load it on demand, ranked by
    (draining, not loaded by this gateway, not placed there)."""
    placed = set(version.placed_worker_ids)
    return [
        Candidate(w.worker_id, w.address, ON_DEMAND,
                  (int(w.is_draining), int(w.worker_id not in loaded_here),
                   int(w.worker_id not in placed)), w.admin_address)
        for w in workers
    ]


def base_candidates(workers: Iterable[fleet_pb.WorkerRoute]) -> list[Candidate]:
    """Workers of a base model for a request without an adapter, draining ones last."""
    return [Candidate(w.worker_id, w.address, BASE, (int(w.is_draining),)) for w in workers]


def order(candidates: Iterable[Candidate], outstanding: Mapping[str, int],
          excluded: Collection[str], rng: random.Random) -> list[Candidate]:
    """Candidates best first: rank, then fewest outstanding requests (by address), then a
    random tie-break; workers in `excluded` (ids) are left out."""
    keyed = [(c.rank, outstanding.get(c.address, 0), rng.random(), c)
             for c in candidates if c.worker_id not in excluded]
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]
