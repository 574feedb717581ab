"""WorkerService over real gRPC: adapters loaded, replaced and evicted while traffic runs."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
import pytest

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint
from tests.support.worker_thread import WorkerThread

LONG = 40


@pytest.fixture(scope="module")
def worker(lora_suite):
    """A worker with no adapters at start."""
    worker = WorkerThread(worker_config(lora_suite[0], max_loras=2, max_cpu_loras=4))
    yield worker
    worker.stop()


def _load(worker, name, path, version=0, **fields):
    return worker.admin.LoadAdapter(wpb.LoadAdapterRequest(
        adapter=name, version=version, source_uri=str(path), **fields)).adapter


def _stream_in_background(worker, adapter, prompt, started: threading.Event):
    """Starts a long greedy stream; returns a future of (tokens, summary)."""
    def consume():
        request = pb.GenerateRequest(adapter=adapter, token_ids=pb.TokenIds(ids=prompt),
                                     sampling=pb.SamplingParams(max_tokens=LONG, temperature=0))
        tokens, summary = [], None
        for message in worker.inference.Generate(request, timeout=60):
            if message.HasField("delta"):
                tokens.extend(message.delta.token_ids)
                started.set()
            else:
                summary = message.summary
        started.set()
        return tokens, summary

    return concurrent.futures.ThreadPoolExecutor(1).submit(consume)


def test_replacing_weights_keeps_running_requests_on_their_version(
        worker, lora_suite, peft_reference):
    adapters = lora_suite[1]
    first = _load(worker, "swap/x", adapters["acme/qv8"])
    assert first.version == 1 and first.is_default and first.tier == wpb.TIER_DEVICE
    prompt = prompts(3)[2]
    started = threading.Event()
    running = _stream_in_background(worker, "swap/x", prompt, started)
    assert started.wait(30)
    second = _load(worker, "swap/x", adapters["beta/q8"], make_default=True)
    assert second.version == 2 and second.digest != first.digest
    new_tokens, new_summary = worker.generate("swap/x", prompt, max_tokens=LONG)
    old_tokens, old_summary = running.result(60)
    assert old_summary.adapter_version == "swap/x@1" and old_summary.adapter_digest == first.digest
    assert old_tokens == peft_reference.greedy("acme/qv8", prompt, LONG)
    assert new_summary.adapter_version == "swap/x@2"
    assert new_tokens == peft_reference.greedy("beta/q8", prompt, LONG)
    pinned, _ = worker.generate("swap/x@1", prompt, max_tokens=LONG)
    assert pinned == old_tokens


def test_evict_waits_for_in_flight_requests_and_then_refuses(worker, lora_suite, peft_reference):
    adapters = lora_suite[1]
    _load(worker, "evict/y", adapters["gamma/down16"])
    prompt = prompts(5)[4]
    started = threading.Event()
    running = _stream_in_background(worker, "evict/y", prompt, started)
    assert started.wait(30)
    evicted = worker.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="evict/y"))
    assert [a.version for a in evicted.adapters] == [1]
    tokens, summary = running.result(1)  # eviction returned only after the stream ended
    assert tokens == peft_reference.greedy("gamma/down16", prompt, LONG)
    with pytest.raises(grpc.RpcError) as info:
        worker.generate("evict/y", prompt)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = worker.admin.ListAdapters(wpb.ListAdaptersRequest()).adapters
    assert "evict/y" not in {a.adapter for a in listed}


def test_load_and_evict_under_traffic_never_fail_a_request(worker, lora_suite, peft_reference):
    adapters = lora_suite[1]
    names = ["acme/all16", "beta/ko16", "gamma/all64"]
    for name in names:
        _load(worker, name, adapters[name])
    jobs = [(names[i % 3], p) for i, p in enumerate(prompts(12))]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(worker.generate, name, p, max_tokens=12) for name, p in jobs]
        _load(worker, "churn/z", adapters["acme/attn64"])
        worker.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="churn/z", tier=wpb.TIER_DEVICE))
        worker.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="churn/z"))
        results = [f.result(60) for f in futures]
    for (name, prompt), (tokens, summary) in zip(jobs, results, strict=True):
        assert summary.adapter_version == f"{name}@1"
        assert tokens == peft_reference.greedy(name, prompt, 12)


def test_refused_adapters_name_the_problem_and_others_keep_serving(
        worker, lora_suite, tmp_path):
    other_base = make_checkpoint(tmp_path / "other-base", "llama-gqa", hidden_size=96)
    foreign = make_adapter(other_base, tmp_path / "foreign", r=8, alpha=8,
                           target_modules=["q_proj"])
    big = make_adapter(lora_suite[0], tmp_path / "rank128", r=128, alpha=8,
                       target_modules=["q_proj"])
    cases = [
        ("bad/foreign", foreign, grpc.StatusCode.FAILED_PRECONDITION, "expected [64, 8]"),
        ("bad/missing", tmp_path / "nothing-here", grpc.StatusCode.NOT_FOUND, "not found or not readable"),
        ("bad/big", big, grpc.StatusCode.INVALID_ARGUMENT, "rank"),
    ]
    for name, path, code, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            _load(worker, name, path)
        assert info.value.code() == code, info.value.details()
        assert needle in info.value.details().lower()
    with pytest.raises(grpc.RpcError) as info:
        worker.generate("bad/foreign", prompts(1)[0])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    verdict = worker.admin.ValidateAdapter(wpb.ValidateAdapterRequest(source_uri=str(big)))
    assert not verdict.is_valid and any("rank" in r for r in verdict.reasons)
    good = worker.admin.ValidateAdapter(
        wpb.ValidateAdapterRequest(source_uri=str(lora_suite[1]["acme/qv8"])))
    assert good.is_valid and len(good.digest) == 64 and good.rank == 8
    tokens, _ = worker.generate("acme/all16", prompts(1)[0], max_tokens=4)
    assert len(tokens) == 4


def test_versions_are_immutable(worker, lora_suite):
    adapters = lora_suite[1]
    _load(worker, "imm/a", adapters["acme/qv8"], version=3)
    again = _load(worker, "imm/a", adapters["acme/qv8"], version=3)
    assert again.version == 3
    with pytest.raises(grpc.RpcError) as info:
        _load(worker, "imm/a", adapters["beta/q8"], version=3)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_queue_beyond_its_bound_is_resource_exhausted(lora_suite):
    small = WorkerThread(worker_config(lora_suite[0], max_num_seqs=1, max_waiting=1))
    try:
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompts(1)[0]), sampling=pb.SamplingParams(
            max_tokens=1000, temperature=0, ignore_eos=True))
        calls = [small.inference.Generate(request, timeout=60) for _ in range(2)]
        deadline = time.monotonic() + 30
        while (small.status().load.num_running, small.status().load.num_waiting) != (1, 1):
            assert time.monotonic() < deadline, "the two long requests were not admitted"
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            small.generate("", prompts(1)[0], max_tokens=2)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            call.cancel()
    finally:
        small.stop()


def _tier(worker, name):
    listed = worker.admin.ListAdapters(wpb.ListAdaptersRequest()).adapters
    return next(a.tier for a in listed if a.adapter == name)


def test_a_device_eviction_that_its_caller_leaves_is_withdrawn(worker, lora_suite):
    """Evicting a running adapter from the device waits for its requests (the engine
    evicts when the last one ends); a caller whose deadline passes first evicts nothing."""
    _load(worker, "keep/z", lora_suite[1]["acme/qv8"])
    request = pb.GenerateRequest(adapter="keep/z", token_ids=pb.TokenIds(ids=prompts(1)[0]),
                                 sampling=pb.SamplingParams(max_tokens=400, temperature=0,
                                                            ignore_eos=True))
    stream = worker.inference.Generate(request, timeout=60)
    next(stream)  # running on its device slot
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        worker.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="keep/z",
                                                          tier=wpb.TIER_DEVICE), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert list(stream)[-1].summary.usage.completion_tokens == 400
    assert time.monotonic() - began > 0.5, "the stream ended too soon to tell"
    time.sleep(0.3)  # a few idle turns of the engine loop
    assert _tier(worker, "keep/z") == wpb.TIER_DEVICE  # withdrawn: nothing evicted
    worker.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="keep/z", tier=wpb.TIER_DEVICE),
                              timeout=10)  # nothing runs on it now: at once
    assert _tier(worker, "keep/z") == wpb.TIER_HOST
