"""Per-tenant limits: parsing, the bookkeeping on a fake clock, and a live worker refusing
with RESOURCE_EXHAUSTED + google.rpc.QuotaFailure on gRPC and 429 on HTTP."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lorafleet.dataplane.config.quotas import (
    QuotaExceeded,
    TenantLimits,
    TenantQuotas,
    parse_tenant_limit,
    quota_config,
)
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.runtime.auth import Principal, Role
from lorafleet.runtime.auth.principals import set_principal
from tests.server.conftest import worker_config
from tests.support.worker_thread import WorkerThread


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_tenant_limit_parsing_and_overrides_inherit_the_defaults():
    assert parse_tenant_limit("acme=requests:8,tps:200") == (
        "acme", {"max_requests": 8, "max_tokens_per_second": 200.0})
    config = quota_config(4, 50.0, ("acme=requests:8", "beta=tps:5"))
    assert config.limits_for("acme") == TenantLimits(8, 50.0)
    assert config.limits_for("beta") == TenantLimits(4, 5.0)
    assert config.limits_for("other") == TenantLimits(4, 50.0)
    for bad in ("acme", "acme=", "=requests:1", "acme=rps:3", "acme=requests:x"):
        with pytest.raises(ValueError, match="acme|requests|tps|expected"):
            parse_tenant_limit(bad)
    with pytest.raises(ValueError, match=">= 1"):
        TenantLimits(max_requests=0)


def test_concurrent_requests_are_limited_per_tenant():
    quotas = TenantQuotas(quota_config(2))
    quotas.try_admit("acme")
    quotas.try_admit("acme")
    with pytest.raises(QuotaExceeded, match="tenant acme has 2 requests in flight") as refused:
        quotas.try_admit("acme")
    assert refused.value.limit == "requests"
    quotas.try_admit("beta")  # another tenant is not affected
    quotas.release("acme")
    quotas.try_admit("acme")
    assert quotas.num_in_flight("acme") == 2


def test_tokens_per_second_refuses_until_the_bucket_refills():
    clock = Clock()
    quotas = TenantQuotas(quota_config(None, 10.0), clock)
    quotas.try_admit("acme")
    quotas.charge("acme", 30)  # a burst overdraws the bucket: 10 - 30 = -20
    with pytest.raises(QuotaExceeded, match="10 output tokens per second"):
        quotas.try_admit("acme")
    clock.now += 1.9  # -20 + 19 = -1: still empty
    with pytest.raises(QuotaExceeded):
        quotas.try_admit("acme")
    clock.now += 0.2
    quotas.try_admit("acme")


@pytest.fixture(scope="module")
def limited(lora_suite):
    """A worker where every tenant may run 1 request, and tenant beta 5 tokens/s."""
    base, adapters = lora_suite
    config = worker_config(base, quotas=quota_config(1, None, ("beta=tps:5",)))
    worker = WorkerThread(config, adapters=[(n, str(p)) for n, p in adapters.items()],
                          http_port=0)
    yield worker
    worker.stop()


def _quota_failure(error: grpc.RpcError) -> error_details_pb2.QuotaFailure:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    failure = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(failure)
    return failure


def test_a_tenant_over_its_concurrent_limit_gets_quota_failure_details(limited):
    request = ipb.GenerateRequest(adapter="acme/qv8", token_ids=ipb.TokenIds(ids=[5, 6, 7]),
                                  sampling=ipb.SamplingParams(max_tokens=400, ignore_eos=True))
    stream = limited.inference.Generate(request, timeout=60)
    next(stream)  # acme's first request is running
    with pytest.raises(grpc.RpcError) as refused:
        limited.generate("acme/all16", [5, 6, 7], max_tokens=2)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    violation = _quota_failure(refused.value).violations[0]
    assert violation.subject == "tenant:acme"
    assert "limit is 1 concurrent requests" in violation.description
    tokens, summary = limited.generate("gamma/down16", [5, 6, 7], max_tokens=2)
    assert len(tokens) == 2  # another tenant is served meanwhile
    stream.cancel()


def test_a_tenant_over_its_token_rate_gets_429_on_http(limited):
    tokens, _ = limited.generate("beta/q8", [5, 6, 7], max_tokens=30, ignore_eos=True)
    assert len(tokens) == 30  # 30 tokens against 5/s: beta is refused for ~5 s
    with pytest.raises(grpc.RpcError) as refused:
        limited.generate("beta/ko16", [5, 6, 7], max_tokens=2)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _quota_failure(refused.value).violations[0].subject == "tenant:beta"
    body = json.dumps({"model": "beta/q8", "prompt": "hello", "max_tokens": 2}).encode()
    url = f"http://127.0.0.1:{limited.running.http.port}/v1/completions"
    http = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(http, timeout=30)
    assert answer.value.code == 429
    error = json.loads(answer.value.read())["error"]
    assert error["type"] == "rate_limit_error"
    assert "tenant beta is over its limit of 5 output tokens per second" in error["message"]


def test_limits_hold_under_concurrent_callers(limited):
    """Eight callers at once for one tenant: exactly the limit's worth get through at a
    time, the rest are refused with RESOURCE_EXHAUSTED, and none is left counted."""
    codes, lock = [], threading.Lock()

    def call():
        try:
            limited.generate("gamma/all64", [5, 6, 7], max_tokens=20, ignore_eos=True)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    tokens, _ = limited.generate("gamma/all64", [5, 6, 7], max_tokens=2)
    assert len(tokens) == 2  # nothing leaked: gamma's count is back to zero


def test_a_tenant_callers_base_model_requests_count_for_that_tenant(limited):
    """With auth, the caller's tenant is whom a request counts for, adapter or not."""
    worker = limited.running.worker

    async def admit_twice_as_acme():
        set_principal(Principal(Role.TENANT, tenant="acme", key_id="k1"))
        first = worker.admit("t1", "")
        try:
            assert first.tenant == "acme"
            with pytest.raises(QuotaExceeded, match="tenant acme"):
                worker.admit("t2", "")
        finally:
            worker.release(first)
        set_principal(None)
        third = worker.admit("t3", "")
        worker.release(third)
        assert third.tenant == ""  # no principal: the base model's tenant ""

    limited.run(admit_twice_as_acme())
