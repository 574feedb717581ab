"""The proxied stream: status codes for requests the gateway cannot route, base-model
requests, metadata, and the caller's deadline and cancel reaching the worker."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lorafleet.dataplane.gateway.upstream import WorkerChannels
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.controlplane.conftest import eventually
from tests.gateway.conftest import add_adapter, generate, holders, metric, table_shows

CODE = grpc.StatusCode


async def _fleet(plane, stubs, serving_workers, gateways):
    worker = await serving_workers("w-0")
    await add_adapter(stubs, "acme/a", ["/a/v1"], {1: 1})
    gateway = await gateways(f"127.0.0.1:{plane.port}")
    await table_shows(gateway, lambda t: holders(t, "acme/a") == {1: {"w-0"}})
    return worker, gateway


async def test_unroutable_requests_get_a_clear_status(plane, stubs, serving_workers, gateways):
    worker, gateway = await _fleet(plane, stubs, serving_workers, gateways)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        cases = {
            "acme/missing": (CODE.NOT_FOUND, "acme/missing"),
            "acme/a@7": (CODE.NOT_FOUND, "routed versions: 1"),
            "Not A Name": (CODE.INVALID_ARGUMENT, "adapter"),
        }
        for adapter, (code, words) in cases.items():
            reply = await generate(stub, adapter)
            assert (reply.code, words in reply.details) == (code, True), (adapter, reply)
        assert worker.received == []  # refused at the gateway
        reply = await generate(stub, "acme/a@1")
    assert (reply.code, reply.version) == (CODE.OK, "acme/a@1")
    assert metric(gateway, "lorafleet_gateway_requests_total", code="NOT_FOUND") == 2
    assert metric(gateway, "lorafleet_gateway_requests_total", code="INVALID_ARGUMENT") == 1


async def test_base_model_requests_and_authorization_reach_a_worker(plane, stubs,
                                                                    serving_workers, gateways):
    worker, gateway = await _fleet(plane, stubs, serving_workers, gateways)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), request_id="base-1")
        messages = [m async for m in stub.Generate(
            request, metadata=(("authorization", "Bearer k1"), ("x-other", "no")), timeout=10)]
    assert messages[-1].summary.request_id == "base-1"
    assert (messages[-1].summary.worker_id, messages[-1].summary.adapter_version) == ("w-0", "")
    adapter, metadata = worker.received[-1]
    assert (adapter, metadata.get("authorization"), "x-other" in metadata) == ("", "Bearer k1",
                                                                                False)
    assert metric(gateway, "lorafleet_gateway_picks_total", tier="base") == 1


@pytest.mark.slow
async def test_deadline_and_cancel_end_the_workers_stream(plane, stubs, serving_workers,
                                                          gateways):
    worker, gateway = await _fleet(plane, stubs, serving_workers, gateways)
    worker.slow_delay = 0.2
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        reply = await generate(stub, "acme/a", max_tokens=50, request_id="slow-d", timeout=0.7)
        assert reply.code == CODE.DEADLINE_EXCEEDED and 0 < len(reply.tokens) < 50
        await eventually(lambda: worker.num_running == 0, timeout=3)
        call = stub.Generate(pb.GenerateRequest(adapter="acme/a", request_id="slow-c",
                                                token_ids=pb.TokenIds(ids=[1]),
                                                sampling=pb.SamplingParams(max_tokens=50)))
        await call.read()
        assert worker.num_running == 1
        call.cancel()
        await eventually(lambda: worker.num_running == 0, timeout=3)
    await eventually(lambda: metric(gateway, "lorafleet_gateway_outstanding_requests") == 0)
    assert gateway.channels.outstanding == {}
    assert metric(gateway, "lorafleet_gateway_requests_total", code="CANCELLED") == 1
    assert metric(gateway, "lorafleet_gateway_requests_total", code="DEADLINE_EXCEEDED") == 1


async def test_a_worker_failing_mid_stream_ends_the_callers_stream_with_its_status(
        plane, stubs, serving_workers, gateways):
    worker, gateway = await _fleet(plane, stubs, serving_workers, gateways)
    worker.slow_delay = 0.1
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        streaming = asyncio.create_task(generate(stub, "acme/a", max_tokens=100,
                                                 request_id="slow-k"))
        await eventually(lambda: worker.num_running == 1)
        await asyncio.sleep(0.3)
        await worker.kill()
        reply = await asyncio.wait_for(streaming, 10)
    assert reply.tokens and reply.summary is None
    assert reply.code == CODE.UNAVAILABLE and reply.details
    assert metric(gateway, "lorafleet_gateway_retries_total") == 0  # tokens were sent


async def test_channels_are_reused_and_closed_once_their_worker_left_and_is_idle():
    channels = WorkerChannels()
    channels.inference("w0:1")
    channels.health("w0:1")
    channels.health("w1:1")
    assert channels.open_addresses() == {"w0:1", "w1:1"}  # one per address, both services
    channels.acquire("w0:1")
    channels.retain({"w2:1"})  # w0 and w1 left the table
    assert channels.open_addresses() == {"w0:1"}  # w0 still runs a request of ours
    channels.release("w0:1")
    assert channels.open_addresses() == set()
    await channels.close()


async def test_a_workers_quota_failure_details_reach_the_caller(plane, stubs, serving_workers,
                                                                gateways):
    worker, gateway = await _fleet(plane, stubs, serving_workers, gateways)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.GenerateRequest(adapter="acme/a", request_id="quota-1",
                                     token_ids=pb.TokenIds(ids=[1]))
        try:
            async for _ in stub.Generate(request, timeout=10):
                pass
        except grpc.aio.AioRpcError as error:
            status = rpc_status.from_call(error)
    assert status.code == CODE.RESOURCE_EXHAUSTED.value[0]
    (detail,) = status.details
    failure = error_details_pb2.QuotaFailure()
    assert detail.Unpack(failure) and failure.violations[0].subject == "tenant:acme"
    assert len(worker.received) == 1  # a refusal is an answer: not retried elsewhere
