"""AdapterService over real gRPC and a real etcd, validated by fake workers."""

from __future__ import annotations

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.controlplane.errors import NotFound
from tests.controlplane.conftest import eventually
from tests.support.fake_worker import fake_digest

READY = pb.VERSION_STATE_READY


async def _create(stubs, name="acme/support", **fields):
    adapter = pb.Adapter(name=name, base_model="tiny-llama", **fields)
    return (await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(adapter=adapter))).adapter


async def _version(stubs, uri, name="acme/support"):
    request = pb.CreateAdapterVersionRequest(adapter=name, source_uri=uri)
    return (await stubs.adapters.CreateAdapterVersion(request)).version


async def _code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


async def test_create_get_list_adapters(stubs):
    created = await _create(stubs, description="support bot", min_replicas=2)
    assert created.create_time.seconds > 0
    await _create(stubs, name="acme/billing")
    await _create(stubs, name="other/x")
    got = await stubs.adapters.GetAdapter(pb.GetAdapterRequest(name="acme/support"))
    assert got.adapter.description == "support bot" and got.adapter.min_replicas == 2
    assert not got.HasField("rollout") and list(got.versions) == []
    listed = await stubs.adapters.ListAdapters(pb.ListAdaptersRequest(tenant="acme"))
    assert [a.name for a in listed.adapters] == ["acme/billing", "acme/support"]
    everything = await stubs.adapters.ListAdapters(pb.ListAdaptersRequest())
    assert len(everything.adapters) == 3


async def test_create_refuses_bad_names_duplicates_and_bounds(stubs):
    await _create(stubs)
    assert await _code_of(_create(stubs)) == grpc.StatusCode.ALREADY_EXISTS
    assert await _code_of(_create(stubs, name="Acme/x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code_of(_create(stubs, name="noslash")) == grpc.StatusCode.INVALID_ARGUMENT
    bad_bounds = _create(stubs, name="acme/b", min_replicas=3, max_replicas=2)
    assert await _code_of(bad_bounds) == grpc.StatusCode.INVALID_ARGUMENT
    missing = stubs.adapters.GetAdapter(pb.GetAdapterRequest(name="acme/none"))
    assert await _code_of(missing) == grpc.StatusCode.NOT_FOUND


async def test_valid_versions_ready_invalid_refused_with_reasons(stubs, make_worker):
    worker = await make_worker("w1")
    worker.invalid_sources["/adapters/bad"] = ["rank 128 exceeds max_lora_rank 16",
                                               "module 'x_proj' is not in the base model"]
    worker.missing_sources.add("file:///adapters/gone")
    await _create(stubs)
    await eventually(lambda: stubs.fleet.ListWorkers(_list_workers()))
    good = await _version(stubs, "/adapters/good")
    bad = await _version(stubs, "/adapters/bad")
    gone = await _version(stubs, "file:///adapters/gone")
    also_good = await _version(stubs, "s3://bucket/adapters/v3")
    assert (good.version, good.state, good.digest) == (1, READY, fake_digest("/adapters/good"))
    assert list(good.target_modules) == ["q_proj", "v_proj"] and good.rank == 8
    assert bad.state == pb.VERSION_STATE_REJECTED
    assert list(bad.reasons) == worker.invalid_sources["/adapters/bad"]
    assert gone.state == pb.VERSION_STATE_REJECTED and "does not exist" in gone.reasons[0]
    assert also_good.state == READY and also_good.version == 4
    listed = await stubs.adapters.ListAdapterVersions(
        pb.ListAdapterVersionsRequest(adapter="acme/support"))
    assert [v.state for v in listed.versions] == [READY, pb.VERSION_STATE_REJECTED,
                                                  pb.VERSION_STATE_REJECTED, READY]


async def test_version_refuses_empty_or_unsupported_uri(stubs):
    await _create(stubs)
    assert await _code_of(_version(stubs, "")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code_of(_version(stubs, "ftp://x/y")) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = _version(stubs, "/a", name="acme/none")
    assert await _code_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_pending_version_is_validated_when_a_worker_of_its_model_arrives(
    stubs, make_worker
):
    await make_worker("other-model", base_model="qwen-tiny")
    await _create(stubs)
    pending = await _version(stubs, "/adapters/early")
    assert pending.state == pb.VERSION_STATE_PENDING and not pending.digest
    await make_worker("w1")

    async def validated():
        got = await stubs.adapters.GetAdapter(pb.GetAdapterRequest(name="acme/support"))
        return got.versions[0].state == READY and got.versions[0]

    version = await eventually(validated)
    assert version.digest == fake_digest("/adapters/early")


async def test_rollout_validation_codes(stubs, make_worker):
    worker = await make_worker("w1")
    worker.invalid_sources["/bad"] = ["bad shapes"]
    await _create(stubs)
    await eventually(lambda: stubs.fleet.ListWorkers(_list_workers()))
    await _version(stubs, "/v1")
    await _version(stubs, "/bad")

    def update(*pairs):
        weights = [pb.VersionWeight(version=v, weight=w) for v, w in pairs]
        return stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(adapter="acme/support",
                                                                     weights=weights))

    assert await _code_of(update((9, 1))) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code_of(update((1, 1), (1, 2))) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code_of(update((1, 0))) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code_of(update((2, 1))) == grpc.StatusCode.FAILED_PRECONDITION
    rollout = (await update((1, 100))).rollout
    assert rollout.generation == 1 and [(w.version, w.weight) for w in rollout.weights] == [(1, 100)]


async def test_rollback_restores_previous_splits_in_order(stubs, make_worker):
    await make_worker("w1")
    await _create(stubs)
    await eventually(lambda: stubs.fleet.ListWorkers(_list_workers()))
    for uri in ("/v1", "/v2"):
        await _version(stubs, uri)

    async def update(*pairs):
        weights = [pb.VersionWeight(version=v, weight=w) for v, w in pairs]
        request = pb.UpdateRolloutRequest(adapter="acme/support", weights=weights)
        return (await stubs.adapters.UpdateRollout(request)).rollout

    async def rollback():
        request = pb.RollbackRolloutRequest(adapter="acme/support")
        return (await stubs.adapters.RollbackRollout(request)).rollout

    assert await _code_of(rollback()) == grpc.StatusCode.FAILED_PRECONDITION
    await update((1, 100))
    await update((1, 90), (2, 10))
    await update((2, 100))
    first = await rollback()
    assert [(w.version, w.weight) for w in first.weights] == [(1, 90), (2, 10)]
    assert first.generation == 4
    second = await rollback()
    assert [(w.version, w.weight) for w in second.weights] == [(1, 100)]
    assert await _code_of(rollback()) == grpc.StatusCode.FAILED_PRECONDITION
    missing = stubs.adapters.RollbackRollout(pb.RollbackRolloutRequest(adapter="acme/none"))
    assert await _code_of(missing) == grpc.StatusCode.NOT_FOUND


async def test_delete_of_a_routed_adapter_is_refused_until_traffic_moves(stubs, make_worker):
    await make_worker("w1")
    await _create(stubs)
    await eventually(lambda: stubs.fleet.ListWorkers(_list_workers()))
    await _version(stubs, "/v1")
    routed = [pb.VersionWeight(version=1, weight=1)]
    await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(adapter="acme/support",
                                                               weights=routed))
    delete = pb.DeleteAdapterRequest(name="acme/support")
    assert await _code_of(stubs.adapters.DeleteAdapter(delete)) == grpc.StatusCode.FAILED_PRECONDITION
    await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(adapter="acme/support"))
    await stubs.adapters.DeleteAdapter(delete)
    gone = stubs.adapters.GetAdapter(pb.GetAdapterRequest(name="acme/support"))
    assert await _code_of(gone) == grpc.StatusCode.NOT_FOUND
    # The name can be registered again, starting from version 1.
    await _create(stubs)
    assert (await _version(stubs, "/again")).version == 1


def _list_workers():
    from lorafleet.control.v1 import fleet_service_pb2

    return fleet_service_pb2.ListWorkersRequest()


async def test_a_subclass_of_a_domain_error_keeps_its_status(plane, stubs, monkeypatch):
    """An error class derived from NotFound reaches the caller as NOT_FOUND with its
    message, not as a generic failure (issue 23 #5: codes were looked up by exact type)."""

    class VersionGone(NotFound):
        """A more precise NOT_FOUND."""

    async def gone(name):
        raise VersionGone(f"adapter {name} was deleted")

    monkeypatch.setattr(plane.registry, "get_adapter", gone)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stubs.adapters.GetAdapter(pb.GetAdapterRequest(name="acme/support"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "adapter acme/support was deleted"
