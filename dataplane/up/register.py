"""Registering the adapters of `lorafleet up` through the control plane's AdapterService
(one adapter per demo adapter, plus `demo/style`: two versions at 90/10), and waiting
until every version is resident on a worker and the gateway routes it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
import urllib.request

import grpc

from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.control.v1 import adapter_service_pb2_grpc as apb_grpc
from lorafleet.control.v1 import fleet_service_pb2 as fpb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fpb_grpc
from lorafleet.runtime.auth import bearer
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

STYLE_ADAPTER = "demo/style"
STYLE_WEIGHTS = (90, 10)
# The style rollout: version 1 has the first adapter's weights, version 2 the first other
# one present, so a 90/10 split visibly changes the answer for one call in ten.
STYLE_SOURCES = (("demo/pirate",), ("demo/caps", "demo/legal", "demo/json", "demo/poet"))
PLACE_TIMEOUT = 180.0
RPC_TIMEOUT = 30.0
# Each adapter's rollout: (version, weight) pairs.
Rollouts = dict[str, list[tuple[int, int]]]


@dataclasses.dataclass(frozen=True)
class PlannedAdapter:
    """One adapter to register: its versions' sources (version N is sources[N-1]), and
    the weight of each version in its rollout."""

    name: str
    sources: tuple[str, ...]
    weights: tuple[int, ...]
    source_names: tuple[str, ...] = ()  # the demo adapters whose weights each version has

    @property
    def versions(self) -> list[str]:
        """Every version's reference, tenant/name@N."""
        return [f"{self.name}@{n}" for n in range(1, len(self.sources) + 1)]


def plan_adapters(adapters: dict[str, str], *, with_style: bool) -> list[PlannedAdapter]:
    """One single-version adapter per entry of `adapters`, plus the style rollout when
    asked for and two demo adapters for it are present."""
    plan = [PlannedAdapter(name, (path,), (100,)) for name, path in sorted(adapters.items())]
    first = next((n for n in STYLE_SOURCES[0] if n in adapters), None)
    second = next((n for n in STYLE_SOURCES[1] if n in adapters and n != first), None)
    if with_style and first and second:
        plan.append(PlannedAdapter(STYLE_ADAPTER, (adapters[first], adapters[second]),
                                   STYLE_WEIGHTS, (first, second)))
    return plan


async def base_model_of_workers(controlplane: str, num_workers: int, admin_key: str,
                                tls: TlsConfig = PLAINTEXT_TLS) -> str:
    """Waits until all `num_workers` workers are registered; returns their base model."""
    deadline = time.monotonic() + RPC_TIMEOUT
    async with tls.aio_channel(controlplane) as channel:
        fleet = fpb_grpc.FleetServiceStub(channel)
        while time.monotonic() < deadline:
            reply = await fleet.ListWorkers(fpb.ListWorkersRequest(), timeout=RPC_TIMEOUT,
                                            metadata=bearer(admin_key))
            if len(reply.workers) >= num_workers:
                return reply.workers[0].base_model.name
            await asyncio.sleep(0.2)
    raise StartupError(f"the workers did not register with the control plane within "
                       f"{RPC_TIMEOUT:.0f} s (see the worker logs)")


async def register(controlplane: str, base_model: str, plan: list[PlannedAdapter],
                   admin_key: str, tls: TlsConfig = PLAINTEXT_TLS) -> Rollouts:
    """Creates each adapter of `plan` that does not exist yet: its versions (validated by
    a worker) and its rollout. One kept from an earlier run (up keeps etcd's data) stays as
    that run left it. Returns every planned adapter's rollout, (version, weight) pairs."""
    rollouts: Rollouts = {}
    async with tls.aio_channel(controlplane) as channel:
        stub = apb_grpc.AdapterServiceStub(channel)
        for adapter in plan:
            try:
                kept = await _kept_rollout(stub, adapter.name, bearer(admin_key))
                if kept is None:
                    await _register_one(stub, base_model, adapter, bearer(admin_key))
                rollouts[adapter.name] = kept if kept is not None else list(
                    enumerate(adapter.weights, start=1))
            except grpc.aio.AioRpcError as exc:
                raise StartupError(f"registering {adapter.name}: {exc.code().name}: "
                                   f"{exc.details()}") from exc
    return rollouts


async def _kept_rollout(stub, name: str, metadata) -> list[tuple[int, int]] | None:
    """The rollout of `name` when the adapter exists already, else None."""
    try:
        found = await stub.GetAdapter(apb.GetAdapterRequest(name=name), timeout=RPC_TIMEOUT,
                                      metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return [(w.version, w.weight) for w in found.rollout.weights]


async def _register_one(stub, base_model: str, adapter: PlannedAdapter, metadata) -> None:
    await stub.CreateAdapter(apb.CreateAdapterRequest(
        adapter=apb.Adapter(name=adapter.name, base_model=base_model)), timeout=RPC_TIMEOUT,
        metadata=metadata)
    for source in adapter.sources:
        reply = await stub.CreateAdapterVersion(apb.CreateAdapterVersionRequest(
            adapter=adapter.name, source_uri=source), timeout=RPC_TIMEOUT, metadata=metadata)
        if reply.version.state != apb.VERSION_STATE_READY:
            state = apb.VersionState.Name(reply.version.state)
            raise StartupError(f"{adapter.name}@{reply.version.version} from {source} is "
                               f"{state}: {'; '.join(reply.version.reasons) or 'no reason given'}")
    weights = [apb.VersionWeight(version=n, weight=w)
               for n, w in enumerate(adapter.weights, start=1)]
    await stub.UpdateRollout(apb.UpdateRolloutRequest(adapter=adapter.name, weights=weights),
                             timeout=RPC_TIMEOUT, metadata=metadata)


async def wait_placed(controlplane: str, rollouts: Rollouts, admin_key: str,
                      tls: TlsConfig = PLAINTEXT_TLS) -> dict[str, list[str]]:
    """Waits until a worker holds every routed version; returns version -> resident
    workers."""
    wanted = {f"{name}@{version}" for name, shares in rollouts.items()
              for version, weight in shares if weight > 0}
    deadline = time.monotonic() + PLACE_TIMEOUT
    async with tls.aio_channel(controlplane) as channel:
        fleet = fpb_grpc.FleetServiceStub(channel)
        while True:
            reply = await fleet.GetPlacement(fpb.GetPlacementRequest(), timeout=RPC_TIMEOUT,
                                             metadata=bearer(admin_key))
            resident = {f"{p.adapter}@{p.version}": list(p.resident_worker_ids)
                        for p in reply.placements if p.resident_worker_ids}
            failures = [f"{p.adapter}@{p.version} on {w}: {why}"
                        for p in reply.placements for w, why in p.failures.items()]
            if wanted <= resident.keys():
                return {ref: resident[ref] for ref in sorted(wanted)}
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - resident.keys()))
                raise StartupError(f"not placed within {PLACE_TIMEOUT:.0f} s: {missing}"
                                   + (f" (failures: {'; '.join(failures)})" if failures else ""))
            await asyncio.sleep(0.3)


async def wait_routed(http_url: str, names: list[str], admin_key: str,
                      timeout: float = RPC_TIMEOUT, tls: TlsConfig = PLAINTEXT_TLS) -> None:
    """Waits until the gateway's /v1/models lists every adapter in `names` (over HTTPS
    trusting `tls`'s CA when it has one)."""
    deadline = time.monotonic() + timeout
    context = (ssl.create_default_context(cadata=tls.root_certificates.decode())
               if tls.root_certificates else None)
    while True:
        listed = await asyncio.to_thread(_model_ids, f"{http_url}/models", admin_key, context)
        if set(names) <= listed:
            return
        if time.monotonic() > deadline:
            raise StartupError(f"the gateway does not route {', '.join(sorted(set(names) - listed))} "
                               f"after {timeout:.0f} s (see its log)")
        await asyncio.sleep(0.2)


def _model_ids(url: str, key: str, context: ssl.SSLContext | None = None) -> set[str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as reply:
            return {card["id"] for card in json.load(reply).get("data", [])}
    except (OSError, ValueError):
        return set()
