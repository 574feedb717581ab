"""Fixtures for auth tests: a key file with one key per role, and a control plane that
checks keys (auth on, as the command line starts it)."""

from __future__ import annotations

import dataclasses
import pathlib

import grpc
import pytest

from lorafleet.control.v1 import access_service_pb2_grpc as access_grpc
from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.control.v1 import adapter_service_pb2_grpc as adapter_grpc
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.controlplane.access import AuthConfig
from lorafleet.controlplane.server import ControlPlane
from lorafleet.runtime.auth import bearer, make_key
from tests.controlplane.conftest import fast_config


@dataclasses.dataclass(frozen=True)
class Keys:
    """One key per principal, and the file of their records."""

    admin: str
    acme: str  # tenant acme, may create versions
    acme_readonly: str  # tenant acme, may not create versions
    globex: str
    worker: str
    worker2: str
    gateway: str
    controlplane: str
    path: pathlib.Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    """Keys of every role, their records written to a key file."""
    made = {
        "admin": make_key("admin"),
        "acme": make_key("tenant", "acme", can_create_versions=True),
        "acme_readonly": make_key("tenant", "acme"),
        "globex": make_key("tenant", "globex"),
        "worker": make_key("worker"),
        "worker2": make_key("worker"),
        "gateway": make_key("gateway"),
        "controlplane": make_key("controlplane"),
    }
    path = tmp_path_factory.mktemp("keys") / "keys.jsonl"
    path.write_text("".join(record.to_json() + "\n" for _, record in made.values()))
    return Keys(**{name: key for name, (key, _) in made.items()}, path=path)


class Stubs:
    """The control plane's three services on one channel, calling with `key`."""

    def __init__(self, address: str, key: str | None):
        self.channel = grpc.aio.insecure_channel(address)
        self.metadata = bearer(key)
        self.adapters = adapter_grpc.AdapterServiceStub(self.channel)
        self.fleet = fleet_grpc.FleetServiceStub(self.channel)
        self.access = access_grpc.AccessServiceStub(self.channel)

    async def call(self, service: str, method: str, request, **kwargs):
        """Calls `service.method` with this key."""
        return await getattr(getattr(self, service), method)(
            request, metadata=self.metadata, **kwargs)


def auth_config(etcd, keys: Keys, **overrides):
    """A replica config with test timings and auth on (bootstrap file = `keys.path`)."""
    auth = AuthConfig(is_on=True, keys_file=str(keys.path), api_key=keys.controlplane)
    return fast_config(etcd, auth=auth, **overrides)


@pytest.fixture
async def secured(etcd, keys):
    """A replica that checks keys."""
    replica = ControlPlane(auth_config(etcd, keys))
    await replica.start()
    yield replica
    await replica.stop()


@pytest.fixture
async def connect(secured):
    """connect(key) -> Stubs on the secured replica; channels closed after the test."""
    opened = []

    def make(key: str | None, port: int | None = None) -> Stubs:
        stubs = Stubs(f"127.0.0.1:{port or secured.port}", key)
        opened.append(stubs)
        return stubs

    yield make
    for stubs in opened:
        await stubs.channel.close()


async def create_adapter(admin: Stubs, name: str) -> None:
    """Registers `name` for the tiny base model, as the admin."""
    await admin.call("adapters", "CreateAdapter", adapter_pb.CreateAdapterRequest(
        adapter=adapter_pb.Adapter(name=name, base_model="tiny-llama")))


async def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    """The status a refused call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details()
