"""Tenant limits at the gateway hold across the fleet: a tenant cannot get N times its
limit by being spread over N workers (each worker only counts what it serves)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lorafleet.dataplane.config.quotas import TenantLimits, quota_config
from lorafleet.dataplane.gateway.cli import build_parser, config_from_args
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.gateway.conftest import add_adapter, generate, holders, table_shows

CODE = grpc.StatusCode


async def _two_workers_behind_a_gateway(plane, stubs, serving_workers, gateways, quotas):
    workers = [await serving_workers("w-0"), await serving_workers("w-1")]
    for worker in workers:
        worker.slow_delay = 0.1
    await add_adapter(stubs, "acme/a", ["/a/v1"], {1: 1}, min_replicas=2)
    await add_adapter(stubs, "beta/b", ["/b/v1"], {1: 1})
    gateway = await gateways(f"127.0.0.1:{plane.port}", quotas=quotas)
    await table_shows(gateway, lambda t: holders(t, "acme/a") == {1: {"w-0", "w-1"}}
                      and holders(t, "beta/b"))
    return workers, gateway


def _quota_violation(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    failure = error_details_pb2.QuotaFailure()
    rpc_status.from_call(error).details[0].Unpack(failure)
    return failure


async def test_a_tenant_spread_over_two_workers_gets_its_limit_once(
        plane, stubs, serving_workers, gateways):
    """The attack: tenant acme, limited to 2 requests in flight, holds 2 long streams —
    one per worker, so each worker sees only 1 — and asks for a third. The gateway
    counts all of them: the third is refused there (no worker sees it), with the
    QuotaFailure details a worker would send; another tenant is not affected, and acme
    gets its seat back as soon as a stream ends."""
    workers, gateway = await _two_workers_behind_a_gateway(
        plane, stubs, serving_workers, gateways, quota_config(max_requests=2))
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        long_ones = [asyncio.create_task(generate(stub, "acme/a", max_tokens=20,
                                                  request_id=f"slow-{i}")) for i in range(2)]
        await asyncio.sleep(0.5)
        assert sum(w.num_running for w in workers) == 2
        received = sum(len(w.received) for w in workers)
        call = stub.Generate(pb.GenerateRequest(adapter="acme/a", token_ids=pb.TokenIds(ids=[1]),
                                                request_id="third"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
        assert refused.value.code() == CODE.RESOURCE_EXHAUSTED
        assert "tenant acme has 2 requests in flight" in refused.value.details()
        violation = _quota_violation(refused.value).violations[0]
        assert violation.subject == "tenant:acme"
        assert sum(len(w.received) for w in workers) == received  # no worker saw it
        assert (await generate(stub, "beta/b")).code == CODE.OK
        assert [r.code for r in await asyncio.gather(*long_ones)] == [CODE.OK, CODE.OK]
        assert (await generate(stub, "acme/a")).code == CODE.OK


async def test_a_tenant_over_its_token_rate_is_refused_across_the_fleet(
        plane, stubs, serving_workers, gateways):
    """10 tokens/s for acme at the gateway: 16 tokens streamed (from whichever workers)
    empty the bucket, and acme's next request is refused until it refills."""
    _, gateway = await _two_workers_behind_a_gateway(
        plane, stubs, serving_workers, gateways, quota_config(max_tokens_per_second=10))
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        first = await generate(stub, "acme/a", max_tokens=16)
        assert (first.code, len(first.tokens)) == (CODE.OK, 16)
        refused = await generate(stub, "acme/a")
        assert refused.code == CODE.RESOURCE_EXHAUSTED
        assert "10 output tokens per second" in refused.details
        assert (await generate(stub, "beta/b")).code == CODE.OK
        await asyncio.sleep(1.0)  # 10 tokens back: the bucket is above zero again
        assert (await generate(stub, "acme/a")).code == CODE.OK


def test_gateway_options_set_each_gateways_share_of_the_limits():
    args = build_parser().parse_args([
        "--controlplane", "127.0.0.1:1", "--insecure-no-auth", "--tenant-max-requests", "5",
        "--tenant-max-tokens-per-second", "300", "--tenant-limit", "acme=requests:1",
        "--gateway-replicas", "2"])
    quotas = config_from_args(args).quotas
    assert quotas.limits_for("beta") == TenantLimits(max_requests=2, max_tokens_per_second=150)
    assert quotas.limits_for("acme") == TenantLimits(max_requests=1, max_tokens_per_second=150)
    unlimited = config_from_args(build_parser().parse_args(
        ["--controlplane", "127.0.0.1:1", "--insecure-no-auth"])).quotas
    assert unlimited.limits_for("acme") == TenantLimits()  # unlimited by default
