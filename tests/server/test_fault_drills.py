"""Fault drills against a live worker: what a hostile or careless caller must never break.

Each test reproduces a failure found in drills on the first worker (issue 9) and checks
the worker survives it: the engine keeps stepping, pins and KV blocks are released, and
the caller gets a proper status.
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.observability.scrape import scrape
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts
from tests.support.tiny_adapters import make_adapter
from tests.support.worker_thread import WorkerThread

GENERATE = "/lorafleet.inference.v1.InferenceService/Generate"


def _long_request(adapter: str, max_tokens: int = 300) -> pb.GenerateRequest:
    return pb.GenerateRequest(adapter=adapter, token_ids=pb.TokenIds(ids=prompts(1)[0]),
                              sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0,
                                                         ignore_eos=True))


def _wait_idle(worker, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        status = worker.status()
        pins = sum(a.num_pinned_requests
                   for a in worker.admin.ListAdapters(wpb.ListAdaptersRequest()).adapters)
        if status.load.num_kv_blocks_used == 0 and status.load.num_running == 0 and pins == 0:
            return
        assert time.monotonic() < deadline, f"still busy: {status.load} pins={pins}"
        time.sleep(0.02)


def _health(worker) -> int:
    stub = health_pb2_grpc.HealthStub(worker.channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_hundreds_of_early_cancels_and_tiny_deadlines_never_stop_the_engine(served):
    def tiny_deadline(i):
        request = pb.GenerateRequest(adapter="acme/qv8" if i % 2 else "",
                                     token_ids=pb.TokenIds(ids=prompts(3)[i % 3]),
                                     sampling=pb.SamplingParams(max_tokens=5, temperature=0))
        try:
            list(served.inference.Generate(request, timeout=0.003 + (i % 5) * 0.002))
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)

    def early_cancel(i):
        call = served.inference.Generate(_long_request("acme/all16", 50), timeout=30)
        time.sleep((i % 4) * 0.001)
        call.cancel()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(tiny_deadline, range(300)))
        list(pool.map(early_cancel, range(200)))
    tokens, summary = served.generate("acme/qv8", prompts(1)[0], max_tokens=4, timeout=10)
    assert len(tokens) == 4 and summary.finish_reason == pb.FINISH_REASON_LENGTH
    _wait_idle(served)
    assert _health(served) == health_pb2.HealthCheckResponse.SERVING


def test_evict_whose_deadline_passes_leaves_the_version_serving(served):
    stream = served.inference.Generate(_long_request("beta/q8", 950), timeout=60)
    assert next(stream).HasField("delta")
    with pytest.raises(grpc.RpcError) as info:
        served.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="beta/q8"), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stream.cancel()
    tokens, summary = served.generate("beta/q8", prompts(2)[1], max_tokens=3)
    assert len(tokens) == 3 and summary.adapter_version == "beta/q8@1"
    listed = {a.adapter: a for a in served.admin.ListAdapters(wpb.ListAdaptersRequest()).adapters}
    assert listed["beta/q8"].state == wpb.LOAD_STATE_READY


def test_garbage_request_bytes_are_invalid_argument(served, caplog):
    send = served.channel.unary_stream(GENERATE)  # no serializer: raw bytes go out as they are
    for garbage in (b"\xff\xff\xff\xff", b"\x1a\x05\x0a\x03", b"\x0a" * 50):
        with pytest.raises(grpc.RpcError) as info:
            list(send(garbage, timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "GenerateRequest" in info.value.details()
    tokens, _ = served.generate("", prompts(1)[0], max_tokens=2)
    assert len(tokens) == 2


def test_huge_adapter_name_is_truncated_in_the_error(served):
    with pytest.raises(grpc.RpcError) as info:
        list(served.inference.Generate(pb.GenerateRequest(adapter="x" * 10_000, text="hi"),
                                       timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) < 400


def test_megabyte_prompt_is_refused_by_its_length_before_tokenizing(served):
    request = pb.GenerateRequest(text="word " * 200_000, sampling=pb.SamplingParams(max_tokens=2))
    with pytest.raises(grpc.RpcError) as info:
        list(served.inference.Generate(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "characters" in info.value.details()


def test_missing_source_does_not_reveal_the_server_path(served):
    secret = "/srv/secret-tenant-dir/adapter-v9"
    with pytest.raises(grpc.RpcError) as info:
        served.admin.LoadAdapter(wpb.LoadAdapterRequest(adapter="acme/ghost", source_uri=secret),
                                 timeout=30)
    assert "secret-tenant-dir" not in info.value.details()
    assert "not found or not readable" in info.value.details()


@pytest.fixture
def fresh_worker(lora_suite):
    worker = WorkerThread(worker_config(lora_suite[0], max_loras=2, max_cpu_loras=4))
    yield worker
    worker.stop()


def test_concurrent_loads_of_one_version_with_different_weights_one_wins(
        fresh_worker, lora_suite, tmp_path):
    base = lora_suite[0]
    paths = [make_adapter(base, tmp_path / f"w{i}", seed=100 + i, r=8, alpha=16,
                          target_modules=["q_proj", "v_proj"]) for i in range(2)]

    def load(path, version):
        try:
            return fresh_worker.admin.LoadAdapter(wpb.LoadAdapterRequest(
                adapter="acme/race", version=version, source_uri=str(path)), timeout=60).adapter
        except grpc.RpcError as exc:
            return exc.code()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(load, paths, [5, 5]))
    codes = [r for r in results if isinstance(r, grpc.StatusCode)]
    assert codes == [grpc.StatusCode.ALREADY_EXISTS]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        numbered = list(pool.map(load, paths, [0, 0]))
    assert sorted(r.version for r in numbered) == [6, 7]


def test_a_failed_model_step_ends_its_request_with_its_status_like_any_error(fresh_worker):
    """A model step that raises ends its requests the way a failed adapter load does:
    INTERNAL with the step's error, no summary, counted among the Generates that ended
    with an error status (issue 23 #5: it sent a summary, then aborted uncounted); the
    worker serves on."""
    runner = fresh_worker.running.worker.bridge.link.engine.runner  # the engine thread's
    execute = runner.execute

    def fail_once(plan):
        runner.execute = execute
        raise RuntimeError("injected step failure")

    def num_internal() -> float:
        found = scrape(fresh_worker.running.metrics_port)
        return found.value("lorafleet_rejected_requests_total", code="INTERNAL")

    before = num_internal()
    runner.execute = fail_once
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for message in fresh_worker.inference.Generate(_long_request("", 5), timeout=30):
            received.append(message)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "RuntimeError: injected step failure"
    assert not [m for m in received if m.HasField("summary")]
    assert num_internal() - before == 1
    tokens, summary = fresh_worker.generate("", prompts(1)[0], max_tokens=2, timeout=10)
    assert len(tokens) == 2 and summary.finish_reason == pb.FINISH_REASON_LENGTH


def test_engine_loop_death_is_reported_not_hidden(fresh_worker):
    worker = fresh_worker.running.worker
    stream = fresh_worker.inference.Generate(_long_request("", 400), timeout=30)
    assert next(stream).HasField("delta")

    class Crash(BaseException):
        """Something no step handler catches."""

    def crash(*args, **kwargs):
        raise Crash("injected")

    worker.bridge.link.engine.step = crash  # the loop's own code fails, not a step
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert _health(fresh_worker) == health_pb2.HealthCheckResponse.NOT_SERVING
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        fresh_worker.generate("", prompts(1)[0], max_tokens=2, timeout=10)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    assert time.monotonic() - started < 5
    assert fresh_worker.running.fatal.is_set()


def test_busy_port_on_the_same_host_is_refused(fresh_worker):
    port = int(fresh_worker.address.rsplit(":", 1)[1])
    from lorafleet.runtime.rpcserver import PortInUse, start_server

    with pytest.raises(PortInUse) as info:
        fresh_worker.run(start_server([], f"127.0.0.1:{port}"))
    assert str(port) in str(info.value)
