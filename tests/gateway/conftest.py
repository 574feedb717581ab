"""Fixtures for gateway tests: the control-plane fixtures of tests/controlplane (real etcd,
a real replica), fake serving workers, in-process gateways, and request helpers."""

from __future__ import annotations

import dataclasses

import aetcd
import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as apb
from lorafleet.controlplane.server import ControlPlane
from lorafleet.dataplane.gateway.app import GatewayConfig, RunningGateway, start_gateway
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.controlplane.conftest import (  # noqa: F401 (plane, stubs: fixtures)
    eventually,
    fast_config,
    plane,
    stubs,
)
from tests.gateway.fakes import ServingFakeWorker

BASE_MODEL = "tiny-llama"


def etcd_client(etcd) -> aetcd.Client:
    """A raw etcd client (for what no API does: holding the leader key)."""
    host, port = etcd.endpoint.split(":")
    return aetcd.Client(host=host, port=int(port))


async def release_leader(etcd) -> None:
    """Lets go of the leader key `leaderless_plane` holds: its replica leads and places."""
    async with etcd_client(etcd) as client:
        await client.delete(etcd.key("leader"))


@pytest.fixture
async def leaderless_plane(etcd):
    """A replica that cannot lead while the test holds the leader key, so nothing is
    placed or loaded by the control plane until `release_leader(etcd)`."""
    async with etcd_client(etcd) as client:
        await client.put(etcd.key("leader"), b"held-by-the-test")
    replica = ControlPlane(fast_config(etcd))
    await replica.start()
    yield replica
    await replica.stop()


@pytest.fixture
async def serving_workers(plane):  # noqa: F811 (the imported fixture)
    """Starts fake serving workers heartbeating to `plane`; kills them after the test."""
    started = []

    async def start(worker_id: str, controlplanes=None) -> ServingFakeWorker:
        worker = ServingFakeWorker(worker_id, controlplanes or [f"127.0.0.1:{plane.port}"],
                                   base_model=BASE_MODEL)
        await worker.start()
        started.append(worker)
        await worker.registered()  # else a version created next may find no worker yet
        return worker

    yield start
    for worker in started:
        await worker.kill()


@pytest.fixture
async def gateways():
    """Starts in-process gateways on free ports (fast reconnects); stops them after."""
    started = []

    async def start(*controlplanes: str, **overrides) -> RunningGateway:
        options = dict(controlplanes=controlplanes, port=0, backoff_first_seconds=0.05,
                       backoff_cap_seconds=0.3)
        gateway = await start_gateway(GatewayConfig(**{**options, **overrides}))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop(0.5)


@dataclasses.dataclass
class Reply:
    """One Generate as the caller saw it."""

    code: grpc.StatusCode
    details: str = ""
    tokens: list = dataclasses.field(default_factory=list)
    texts: list = dataclasses.field(default_factory=list)
    summary: pb.GenerateSummary | None = None

    @property
    def version(self) -> str:
        """The adapter version the summary names."""
        return self.summary.adapter_version if self.summary else ""


async def generate(stub: pb_grpc.InferenceServiceStub, adapter: str = "", *, prompt=(1, 2, 3),
                   max_tokens: int = 2, timeout: float = 30.0, **fields) -> Reply:
    """Runs one greedy Generate to the end and returns what came back."""
    request = pb.GenerateRequest(adapter=adapter, token_ids=pb.TokenIds(ids=list(prompt)),
                                 sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0),
                                 **fields)
    reply = Reply(grpc.StatusCode.OK)
    try:
        async for message in stub.Generate(request, timeout=timeout):
            if message.HasField("delta"):
                reply.tokens.extend(message.delta.token_ids)
                reply.texts.append(message.delta.text)
            else:
                reply.summary = message.summary
    except grpc.aio.AioRpcError as error:
        reply.code, reply.details = error.code(), error.details()
    return reply


async def add_adapter(stubs, name: str, sources, weights, **adapter_fields) -> None:  # noqa: F811
    """Creates `name` with one version per source and the rollout {version: weight}."""
    await stubs.adapters.CreateAdapter(apb.CreateAdapterRequest(
        adapter=apb.Adapter(name=name, base_model=BASE_MODEL, **adapter_fields)))
    for source in sources:
        reply = await stubs.adapters.CreateAdapterVersion(apb.CreateAdapterVersionRequest(
            adapter=name, source_uri=str(source)))
        assert reply.version.state == apb.VERSION_STATE_READY, reply.version.reasons
    await set_rollout(stubs, name, weights)


async def set_rollout(stubs, name: str, weights: dict[int, int]) -> None:  # noqa: F811
    """Replaces the rollout of `name`."""
    await stubs.adapters.UpdateRollout(apb.UpdateRolloutRequest(adapter=name, weights=[
        apb.VersionWeight(version=v, weight=w) for v, w in weights.items()]))


async def table_shows(gateway: RunningGateway, check, timeout: float = 15.0):
    """Waits until `check(table)` holds for the gateway's routing table."""
    return await eventually(
        lambda: gateway.follower.table is not None and check(gateway.follower.table), timeout)


def holders(table, adapter: str) -> dict[int, set[str]]:
    """Worker ids holding each routed version of `adapter`."""
    route = table.routes.get(adapter)
    return {v.version: {w.worker_id for w in v.workers} for v in route.versions} if route else {}


def metric(gateway: RunningGateway, name: str, **labels) -> float:
    """The current value of one gateway metric sample."""
    value = gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
