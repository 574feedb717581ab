"""The control plane checks every caller: keys, roles, tenants, revocation, audit."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from lorafleet.control.v1 import access_service_pb2 as access_pb
from lorafleet.control.v1 import adapter_service_pb2 as adapter_pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.access import AuthConfig
from lorafleet.controlplane.registry import MAX_REJECTED_KEPT
from lorafleet.controlplane.server import ControlPlane
from lorafleet.runtime.startup import StartupError
from tests.auth.conftest import auth_config, code_and_details, create_adapter
from tests.controlplane.conftest import eventually, fast_config
from tests.support.fake_worker import FakeWorker

NOT_FOUND = grpc.StatusCode.NOT_FOUND

# Every RPC a tenant key must not call, with a request that would otherwise be valid.
ADMIN_AND_FLEET_RPCS = [
    ("adapters", "CreateAdapter", adapter_pb.CreateAdapterRequest(
        adapter=adapter_pb.Adapter(name="acme/new", base_model="tiny-llama"))),
    ("adapters", "DeleteAdapter", adapter_pb.DeleteAdapterRequest(name="acme/support")),
    ("adapters", "UpdateRollout", adapter_pb.UpdateRolloutRequest(adapter="acme/support")),
    ("adapters", "RollbackRollout", adapter_pb.RollbackRolloutRequest(adapter="acme/support")),
    ("fleet", "SendHeartbeat", fleet_pb.SendHeartbeatRequest()),
    ("fleet", "ListWorkers", fleet_pb.ListWorkersRequest()),
    ("fleet", "GetPlacement", fleet_pb.GetPlacementRequest()),
    ("fleet", "DrainWorker", fleet_pb.DrainWorkerRequest(worker_id="w1")),
    ("access", "CreateKey", access_pb.CreateKeyRequest(role=access_pb.ROLE_ADMIN)),
    ("access", "ListKeys", access_pb.ListKeysRequest()),
    ("access", "RevokeKey", access_pb.RevokeKeyRequest(key_id="000000000000")),
    ("access", "VerifyKey", access_pb.VerifyKeyRequest(key="lf_x")),
    ("access", "ListAuditEntries", access_pb.ListAuditEntriesRequest()),
]


async def test_no_key_or_a_wrong_key_is_unauthenticated(connect, keys):
    wrong_secret = keys.globex[:-4] + ("AAAA" if not keys.globex.endswith("AAAA") else "BBBB")
    for key in (None, "not-a-key", wrong_secret, "lf_000000000000_" + "A" * 43):
        stubs = connect(key)
        code, _ = await code_and_details(
            stubs.call("adapters", "ListAdapters", adapter_pb.ListAdaptersRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED, key


@pytest.mark.parametrize("service,method,request_", ADMIN_AND_FLEET_RPCS,
                         ids=[m for _, m, _ in ADMIN_AND_FLEET_RPCS])
async def test_a_tenant_key_cannot_call_admin_or_fleet_rpcs(connect, keys, service, method,
                                                            request_):
    code, details = await code_and_details(connect(keys.acme).call(service, method, request_))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "tenant" in details


async def test_the_watch_of_the_routing_table_refuses_a_tenant(connect, keys):
    stream = connect(keys.acme).fleet.WatchRoutingTable(
        fleet_pb.WatchRoutingTableRequest(), metadata=connect(keys.acme).metadata)
    code, _ = await code_and_details(stream.read())
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_tenant_sees_only_its_own_adapters(connect, keys):
    admin, acme = connect(keys.admin), connect(keys.acme)
    for name in ("acme/support", "globex/chat"):
        await create_adapter(admin, name)
    listed = await acme.call("adapters", "ListAdapters", adapter_pb.ListAdaptersRequest())
    assert [a.name for a in listed.adapters] == ["acme/support"]
    other = await acme.call("adapters", "ListAdapters",
                            adapter_pb.ListAdaptersRequest(tenant="globex"))
    assert list(other.adapters) == []
    everything = await admin.call("adapters", "ListAdapters", adapter_pb.ListAdaptersRequest())
    assert [a.name for a in everything.adapters] == ["acme/support", "globex/chat"]
    own = await acme.call("adapters", "GetAdapter", adapter_pb.GetAdapterRequest(name="acme/support"))
    assert own.adapter.name == "acme/support"


@pytest.mark.parametrize("method,request_of", [
    ("GetAdapter", lambda n: adapter_pb.GetAdapterRequest(name=n)),
    ("ListAdapterVersions", lambda n: adapter_pb.ListAdapterVersionsRequest(adapter=n)),
    ("CreateAdapterVersion", lambda n: adapter_pb.CreateAdapterVersionRequest(
        adapter=n, source_uri="file:///tmp/a")),
])
async def test_another_tenants_adapter_is_not_found_exactly_like_an_absent_one(
        connect, keys, method, request_of):
    await create_adapter(connect(keys.admin), "globex/chat")
    acme = connect(keys.acme)
    hidden = await code_and_details(acme.call("adapters", method, request_of("globex/chat")))
    absent = await code_and_details(acme.call("adapters", method, request_of("globex/nope")))
    assert hidden[0] == absent[0] == NOT_FOUND
    assert hidden[1].replace("globex/chat", "globex/nope").encode() == absent[1].encode()


async def test_a_tenant_creates_versions_only_when_its_key_allows(connect, keys):
    await create_adapter(connect(keys.admin), "acme/support")
    request = adapter_pb.CreateAdapterVersionRequest(adapter="acme/support",
                                                     source_uri="file:///tmp/a")
    code, details = await code_and_details(
        connect(keys.acme_readonly).call("adapters", "CreateAdapterVersion", request))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "--can-create-versions" in details
    reply = await connect(keys.acme).call("adapters", "CreateAdapterVersion", request)
    assert reply.version.version == 1


@pytest.mark.slow
async def test_a_revoked_key_stops_working_within_one_second_on_every_replica(
        etcd, connect, keys):
    other = ControlPlane(auth_config(etcd, keys))
    await other.start()
    try:
        admin = connect(keys.admin)
        made = await admin.call("access", "CreateKey", access_pb.CreateKeyRequest(
            role=access_pb.ROLE_TENANT, tenant="initech"))
        assert made.key.startswith("lf_") and made.api_key.tenant == "initech"
        listed = await admin.call("access", "ListKeys", access_pb.ListKeysRequest())
        assert made.api_key.key_id in [k.key_id for k in listed.api_keys]
        assert made.key not in str(listed)
        elsewhere = connect(made.key, port=other.port)
        request = adapter_pb.ListAdaptersRequest()
        await _eventually_ok(elsewhere.call("adapters", "ListAdapters", request) for _ in range(20))
        await admin.call("access", "RevokeKey", access_pb.RevokeKeyRequest(
            key_id=made.api_key.key_id))
        revoked_at = time.monotonic()
        while True:
            try:
                await elsewhere.call("adapters", "ListAdapters", request)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            await asyncio.sleep(0.05)
        assert time.monotonic() - revoked_at < 1.0
    finally:
        await other.stop()


async def _eventually_ok(calls) -> None:
    for call in calls:
        try:
            await call
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise AssertionError("the new key never worked")


def _heartbeat(worker_id: str) -> fleet_pb.SendHeartbeatRequest:
    return fleet_pb.SendHeartbeatRequest(worker=fleet_pb.Worker(
        worker_id=worker_id, address="127.0.0.1:1", base_model={"name": "tiny-llama"}))


async def test_a_forged_heartbeat_is_refused_and_the_forger_never_listed(connect, keys):
    admin = connect(keys.admin)
    unauthenticated = await code_and_details(
        connect(None).call("fleet", "SendHeartbeat", _heartbeat("forger")))
    with_tenant_key = await code_and_details(
        connect(keys.acme).call("fleet", "SendHeartbeat", _heartbeat("forger")))
    assert unauthenticated[0] == grpc.StatusCode.UNAUTHENTICATED
    assert with_tenant_key[0] == grpc.StatusCode.PERMISSION_DENIED
    await connect(keys.worker).call("fleet", "SendHeartbeat", _heartbeat("honest"))
    listed = await admin.call("fleet", "ListWorkers", fleet_pb.ListWorkersRequest())
    assert [w.worker_id for w in listed.workers] == ["honest"]
    stream = admin.fleet.WatchRoutingTable(fleet_pb.WatchRoutingTableRequest(),
                                           metadata=admin.metadata)
    table = await stream.read()
    stream.cancel()
    assert [w.worker_id for w in table.workers] == ["honest"]


async def test_a_worker_id_belongs_to_the_key_that_first_registered_it(connect, keys):
    await connect(keys.worker).call("fleet", "SendHeartbeat", _heartbeat("w1"))
    code, details = await code_and_details(
        connect(keys.worker2).call("fleet", "SendHeartbeat", _heartbeat("w1")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "another key" in details
    await connect(keys.worker).call("fleet", "SendHeartbeat", _heartbeat("w1"))  # renewal


async def test_every_admin_change_is_audited_with_principal_and_result(connect, keys):
    admin = connect(keys.admin)
    await create_adapter(admin, "acme/support")
    await admin.call("adapters", "CreateAdapterVersion", adapter_pb.CreateAdapterVersionRequest(
        adapter="acme/support", source_uri="file:///tmp/a"))
    with pytest.raises(grpc.aio.AioRpcError):  # version 1 is still pending: refused
        await admin.call("adapters", "UpdateRollout", adapter_pb.UpdateRolloutRequest(
            adapter="acme/support", weights=[adapter_pb.VersionWeight(version=1, weight=1)]))
    await admin.call("adapters", "UpdateRollout",
                     adapter_pb.UpdateRolloutRequest(adapter="acme/support"))
    with pytest.raises(grpc.aio.AioRpcError):  # no earlier rollout: refused
        await admin.call("adapters", "RollbackRollout",
                         adapter_pb.RollbackRolloutRequest(adapter="acme/support"))
    await admin.call("adapters", "DeleteAdapter", adapter_pb.DeleteAdapterRequest(name="acme/support"))
    made = await admin.call("access", "CreateKey", access_pb.CreateKeyRequest(
        role=access_pb.ROLE_WORKER))
    await admin.call("access", "RevokeKey", access_pb.RevokeKeyRequest(key_id=made.api_key.key_id))
    await connect(keys.worker).call("fleet", "SendHeartbeat", _heartbeat("w1"))
    await admin.call("fleet", "DrainWorker", fleet_pb.DrainWorkerRequest(worker_id="w1"))
    reply = await admin.call("access", "ListAuditEntries", access_pb.ListAuditEntriesRequest())
    got = [(e.action, e.target, e.result.split(":")[0]) for e in reply.entries]
    assert got == [
        ("CreateAdapter", "acme/support", "ok"),
        ("CreateAdapterVersion", "acme/support", "ok"),
        ("UpdateRollout", "acme/support", "refused"),
        ("UpdateRollout", "acme/support", "ok"),
        ("RollbackRollout", "acme/support", "refused"),
        ("DeleteAdapter", "acme/support", "ok"),
        ("CreateKey", f"{made.api_key.key_id} (worker)", "ok"),
        ("RevokeKey", made.api_key.key_id, "ok"),
        ("DrainWorker", "w1", "ok"),
    ]
    assert all(e.principal.startswith("admin (key ") for e in reply.entries)
    assert all(e.time.seconds > 0 for e in reply.entries)


async def test_a_control_plane_refuses_to_send_workers_an_admin_key(etcd, keys, pki):
    """Issue 21 #2: the control plane called every worker with the admin key, which any
    worker (or anyone holding a worker key) could then replay as admin."""
    with pytest.raises(StartupError, match="admin key.*role controlplane"):
        await ControlPlane(_with_key(etcd, keys, keys.admin)).start()
    # With a TLS client certificate the control plane sends workers no key at all.
    tls = pki.component("controlplane:cp-1")
    plane = ControlPlane(_with_key(etcd, keys, keys.admin, tls=tls))
    await plane.start()
    await plane.stop()


def _with_key(etcd, keys, api_key: str, **overrides):
    auth = AuthConfig(is_on=True, keys_file=str(keys.path), api_key=api_key)
    return fast_config(etcd, auth=auth, **overrides)


async def test_a_tenant_cannot_register_another_tenants_weights(secured, connect, keys):
    """Issue 21 #4: a tenant allowed to create versions pointed source_uri at another
    tenant's folder inside a worker's adapter root and got a READY version of its weights."""
    worker = await _fake_worker(secured, connect, keys)
    try:
        admin, acme = connect(keys.admin), connect(keys.acme)
        for name in ("globex/secret", "acme/mine", "acme/copy"):
            await create_adapter(admin, name)
        theirs = "/srv/adapters/globex/secret"
        made = await admin.call("adapters", "CreateAdapterVersion",
                                adapter_pb.CreateAdapterVersionRequest(adapter="globex/secret",
                                                                       source_uri=theirs))
        assert made.version.state == adapter_pb.VERSION_STATE_READY
        stolen = await acme.call("adapters", "CreateAdapterVersion",
                                 adapter_pb.CreateAdapterVersionRequest(adapter="acme/mine",
                                                                        source_uri=theirs))
        assert stolen.version.state == adapter_pb.VERSION_STATE_REJECTED
        assert "another tenant" in stolen.version.reasons[0]
        # Its own weights are fine; an admin may still register shared weights for anyone.
        own = await acme.call("adapters", "CreateAdapterVersion",
                              adapter_pb.CreateAdapterVersionRequest(
                                  adapter="acme/mine", source_uri="/srv/adapters/acme/mine"))
        assert own.version.state == adapter_pb.VERSION_STATE_READY
        shared = await admin.call("adapters", "CreateAdapterVersion",
                                  adapter_pb.CreateAdapterVersionRequest(adapter="acme/copy",
                                                                         source_uri=theirs))
        assert shared.version.state == adapter_pb.VERSION_STATE_READY
    finally:
        await worker.kill()


async def test_refused_versions_do_not_pile_up(secured, connect, keys):
    """Issue 21 #4: every refused CreateAdapterVersion left a REJECTED version (10 refusals
    made v2..v11)."""
    worker = await _fake_worker(secured, connect, keys)
    worker.invalid_sources["/bad"] = ["rank 99 exceeds max_lora_rank 16"]
    try:
        admin = connect(keys.admin)
        await create_adapter(admin, "acme/support")
        request = adapter_pb.CreateAdapterVersionRequest(adapter="acme/support",
                                                         source_uri="/bad")
        for _ in range(10):
            reply = await admin.call("adapters", "CreateAdapterVersion", request)
            assert reply.version.state == adapter_pb.VERSION_STATE_REJECTED
        listed = await admin.call("adapters", "ListAdapterVersions",
                                  adapter_pb.ListAdapterVersionsRequest(adapter="acme/support"))
        assert len(listed.versions) <= MAX_REJECTED_KEPT + 1
    finally:
        await worker.kill()


async def _fake_worker(secured, connect, keys) -> FakeWorker:
    """A fake worker heartbeating with its worker key, once the control plane lists it."""
    worker = FakeWorker("w-0", [f"127.0.0.1:{secured.port}"], api_key=keys.worker)
    await worker.start()

    async def is_listed():
        reply = await connect(keys.admin).call("fleet", "ListWorkers",
                                               fleet_pb.ListWorkersRequest())
        return [w.worker_id for w in reply.workers] == ["w-0"]

    await eventually(is_listed)
    return worker
