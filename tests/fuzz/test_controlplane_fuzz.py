"""Property-based fuzzing of live control planes on a real etcd: every request message
of AdapterService, FleetService and AccessService, and garbage bytes on every method,
with no `authorization` header, one of junk, or a valid key (admin or tenant). Every
answer is a proper status; the control plane is healthy afterwards.

Half the cases go to a replica without auth (as tests start one: the header is ignored),
half to one checking keys (bootstrapped from a key file), where junk is UNAUTHENTICATED.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given

from lorafleet.control.v1 import access_service_pb2 as apb
from lorafleet.control.v1 import adapter_service_pb2 as cpb
from lorafleet.control.v1 import fleet_service_pb2 as fpb
from lorafleet.controlplane.access import AuthConfig
from lorafleet.controlplane.server import ControlPlane
from lorafleet.runtime.auth import make_key
from tests.controlplane.conftest import fast_config
from tests.fuzz.calls import PROPER, LoopThread, call, fuzz_settings, is_serving
from tests.fuzz.messages import authorization, messages, raw_bodies
from tests.support.etcd import EtcdRoot, next_test_root

SERVICES = [cpb.DESCRIPTOR.services_by_name["AdapterService"],
            fpb.DESCRIPTOR.services_by_name["FleetService"],
            apb.DESCRIPTOR.services_by_name["AccessService"]]
METHODS = [m for service in SERVICES for m in service.methods]
NUM_EXAMPLES = 80  # per method (18) and replica (2)
NUM_RAW = 10
ADMIN_KEY, ADMIN = make_key("admin")
TENANT_KEY, TENANT = make_key("tenant", "acme", can_create_versions=True)
CONTROLPLANE_KEY, CONTROLPLANE = make_key("controlplane")
NAMES = ("acme/support", "acme/support@1", "beta/chat", "acme/new", "acme/support@2")
HINTS = {"name": NAMES, "adapter": NAMES, "worker_id": ("127.0.0.1:1", "w-1"),
         "address": ("127.0.0.1:1",), "base_model": ("base",), "tenant": ("acme", "beta"),
         "source_uri": ("/nonexistent/adapter", "file:///nonexistent"), "role": ("admin",)}


@pytest.fixture(scope="module", params=["open", "guarded"])
def plane(shared_etcd, request):
    """A control-plane replica (leader once elected) on a key root of its own and its own
    event loop; "guarded" checks keys."""
    etcd = EtcdRoot(shared_etcd, next_test_root(), is_own=False)
    loop = LoopThread()
    auth = {}
    if request.param == "guarded":
        keys = request.getfixturevalue("tmp_path_factory").mktemp("fuzz-keys") / "keys.jsonl"
        keys.write_text("".join(f"{r.to_json()}\n" for r in (ADMIN, TENANT, CONTROLPLANE)))
        auth["auth"] = AuthConfig(is_on=True, keys_file=str(keys), api_key=CONTROLPLANE_KEY)
    replica = ControlPlane(fast_config(etcd, **auth))
    port = loop.run(replica.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    channel.is_guarded = bool(auth)
    yield channel
    channel.close()
    loop.run(replica.stop())
    loop.close()


def _run(channel, method, strategy, num_examples):
    codes = []
    # The routing table is an endless stream: its first message (or status) is the answer.
    max_messages = 1 if method.server_streaming else None

    @fuzz_settings(num_examples)
    @given(body=strategy, metadata=authorization(ADMIN_KEY, TENANT_KEY))
    def one(body, metadata):
        code = call(channel, method, body, metadata, timeout=15, max_messages=max_messages)
        codes.append(code)
        assert code in PROPER, f"{method.name} answered {code} to {body!r:.500}"

    one()
    return codes


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}."
                                                          f"{m.name}")
def test_every_request_message_gets_a_proper_status(plane, method):
    codes = _run(plane, method, messages(method.input_type, hints=HINTS), NUM_EXAMPLES)
    assert len(codes) >= NUM_EXAMPLES
    if plane.is_guarded:  # junk refused, valid keys get past the check
        assert grpc.StatusCode.UNAUTHENTICATED in codes
        assert set(codes) != {grpc.StatusCode.UNAUTHENTICATED}


@pytest.mark.slow
def test_garbage_bytes_on_every_method_get_a_proper_status(plane):
    for method in METHODS:
        codes = _run(plane, method, raw_bodies(), NUM_RAW)
        assert len(codes) >= NUM_RAW
        assert grpc.StatusCode.INVALID_ARGUMENT in codes  # undecodable: the caller's fault


def test_control_plane_is_healthy_after_fuzzing(plane):
    """Runs last in this module: health, and an ordinary admin call round trip."""
    assert is_serving(plane)
    stub_call = plane.unary_unary(
        "/lorafleet.control.v1.AdapterService/ListAdapters",
        request_serializer=cpb.ListAdaptersRequest.SerializeToString,
        response_deserializer=cpb.ListAdaptersResponse.FromString)
    answer = stub_call(cpb.ListAdaptersRequest(), timeout=10,
                       metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
    assert isinstance(answer, cpb.ListAdaptersResponse)
