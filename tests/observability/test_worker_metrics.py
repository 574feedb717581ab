"""A live worker's /metrics: the GAIE model-server protocol under vLLM's names, per
adapter-version series, every series at zero from the start, rejections by status code."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from lorafleet.inference.v1 import inference_service_pb2 as ipb
from tests.observability.scrape import Scrape, scrape
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts
from tests.support.worker_thread import WorkerThread

HISTOGRAMS = ("lorafleet_queue_time_seconds", "lorafleet_time_to_first_token_seconds",
              "lorafleet_inter_token_latency_seconds", "lorafleet_time_per_output_token_seconds",
              "lorafleet_request_latency_seconds")
GAUGES = ("lorafleet_queue_depth", "lorafleet_running_sequences", "lorafleet_kv_blocks_used",
          "lorafleet_kv_blocks_cached", "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
          "vllm:gpu_cache_usage_perc")


@pytest.fixture(scope="module")
def one_slot(lora_suite):
    """A worker with ONE device slot and two adapters, so one waits while the other runs."""
    base, adapters = lora_suite
    worker = WorkerThread(worker_config(base, max_loras=1, model_name="tiny-llama"),
                          adapters=[(n, str(adapters[n])) for n in ("acme/qv8", "beta/q8")])
    yield worker
    worker.stop()


def _metrics(worker: WorkerThread) -> Scrape:
    return scrape(worker.running.metrics_port)


def _lora_info(found: Scrape) -> dict[str, str]:
    (labels,) = found.labels_of("vllm:lora_requests_info")
    return labels


def test_every_series_exists_at_zero_before_any_request(lora_suite):
    worker = WorkerThread(worker_config(lora_suite[0], model_name="tiny-llama"))
    try:
        found = _metrics(worker)
    finally:
        worker.stop()
    for reason in ("stop", "length", "cancelled", "error"):
        assert found.value("lorafleet_requests_total", adapter="base", version="",
                           finish_reason=reason) == 0
    for name in ("lorafleet_prompt_tokens_total", "lorafleet_generation_tokens_total",
                 "lorafleet_prefix_cache_queries_total", "lorafleet_prefix_cache_hits_total",
                 *(f"{h}_count" for h in HISTOGRAMS)):
        assert found.value(name, adapter="base", version="") == 0, name
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        assert found.value(name, model_name="tiny-llama") == 0, name
    for code in ("NOT_FOUND", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
                 "FAILED_PRECONDITION", "INTERNAL"):
        assert found.value("lorafleet_rejected_requests_total", code=code) == 0
    for tier in ("device", "host"):
        assert found.value("lorafleet_adapter_evictions_total", tier=tier) == 0
        assert found.value("lorafleet_adapter_load_duration_seconds_count", tier=tier) == 0
        assert found.value("lorafleet_resident_adapters", tier=tier) == 0
        for outcome in ("ok", "failed"):
            assert found.value("lorafleet_adapter_loads_total", tier=tier, outcome=outcome) == 0
    for name in GAUGES:
        assert found.value(name) == 0, name
    assert found.value("vllm:num_requests_waiting", model_name="tiny-llama") == 0
    assert found.value("vllm:cache_config_info", block_size="4",
                       num_gpu_blocks=str(worker.running.sizes.num_kv_blocks)) == 1
    info = _lora_info(found)
    assert info == {"max_lora": "4", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert abs(found.value("vllm:lora_requests_info") - time.time()) < 60


def _long_stream(worker: WorkerThread, adapter: str, max_tokens: int):
    request = ipb.GenerateRequest(adapter=adapter, token_ids=ipb.TokenIds(ids=prompts(1)[0]),
                                  sampling=ipb.SamplingParams(max_tokens=max_tokens,
                                                              temperature=0, ignore_eos=True))
    return worker.inference.Generate(request, timeout=60)


def _poll(worker: WorkerThread, check, timeout: float = 20.0) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        found = _metrics(worker)
        if check(found):
            return found
        assert time.monotonic() < deadline, found.text
        time.sleep(0.02)


def test_gaie_series_show_the_running_and_the_waiting_adapter(one_slot):
    running = _long_stream(one_slot, "acme/qv8", 900)
    next(running)  # acme/qv8 holds the only slot until it ends
    waiting = _long_stream(one_slot, "beta/q8@1", 2)
    waiting_done = threading.Thread(target=lambda: list(waiting))
    waiting_done.start()
    try:
        found = _poll(one_slot, lambda f: _lora_info(f)["waiting_lora_adapters"] != "")
        assert _lora_info(found) == {
            "max_lora": "1", "running_lora_adapters": "acme/qv8,acme/qv8@1",
            "waiting_lora_adapters": "beta/q8,beta/q8@1"}
        assert found.value("vllm:num_requests_running") == 1
        assert found.value("vllm:num_requests_waiting") == 1
        assert found.value("lorafleet_queue_depth") == 1
        usage = found.value("vllm:kv_cache_usage_perc")
        assert 0 < usage <= 1
        assert usage == found.value("vllm:gpu_cache_usage_perc")
        assert usage == pytest.approx(found.value("lorafleet_kv_blocks_used")
                                      / found.value("lorafleet_kv_blocks_total"))
    finally:
        running.cancel()
        waiting_done.join(30)
    assert not waiting_done.is_alive()

    def settled(f: Scrape) -> bool:  # both requests ended and were recorded
        return f.value("vllm:num_requests_running") == 0 and f.value(
            "lorafleet_requests_total", adapter="beta/q8", version="1",
            finish_reason="length") == 1

    found = _poll(one_slot, settled)
    assert _lora_info(found)["running_lora_adapters"] == "beta/q8,beta/q8@1"
    assert _lora_info(found)["waiting_lora_adapters"] == ""
    assert found.value("lorafleet_requests_total", adapter="acme/qv8", version="1",
                       finish_reason="cancelled") >= 1
    assert found.value("lorafleet_requests_total", adapter="beta/q8", version="1",
                       finish_reason="length") == 1
    assert found.value("lorafleet_generation_tokens_total", adapter="beta/q8", version="1") == 2
    # The waiting request queued behind the running one for its slot.
    assert found.value("lorafleet_queue_time_seconds_count", adapter="beta/q8", version="1") == 1
    assert found.value("lorafleet_queue_time_seconds_sum", adapter="beta/q8", version="1") > 0.01


def test_latency_series_per_version_after_traffic(one_slot):
    for _ in range(2):
        one_slot.generate("acme/qv8@1", prompts(2)[1], max_tokens=5)
    found = _metrics(one_slot)
    labels = dict(adapter="acme/qv8", version="1")
    assert found.value("lorafleet_time_to_first_token_seconds_count", **labels) >= 2
    # Four gaps between five tokens per request.
    assert found.value("lorafleet_inter_token_latency_seconds_count", **labels) >= 8
    assert found.value("lorafleet_time_per_output_token_seconds_count", **labels) >= 2
    for reason in ("stop", "cancelled", "error"):  # created with the version's first request
        assert found.values("lorafleet_requests_total", finish_reason=reason, **labels)


def test_rejected_requests_are_counted_by_status_code(one_slot):
    before = _metrics(one_slot)
    refusals = [("nobody/here", {}, grpc.StatusCode.NOT_FOUND),
                ("acme/qv8@7", {}, grpc.StatusCode.NOT_FOUND),
                ("Not A Name", {}, grpc.StatusCode.INVALID_ARGUMENT),
                ("acme/qv8", {"temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT)]
    for adapter, sampling, code in refusals:
        with pytest.raises(grpc.RpcError) as raised:
            one_slot.generate(adapter, prompts(1)[0], max_tokens=2, **sampling)
        assert raised.value.code() == code
    after = _metrics(one_slot)
    for code, count in (("NOT_FOUND", 2), ("INVALID_ARGUMENT", 2), ("UNAVAILABLE", 0)):
        name, labels = "lorafleet_rejected_requests_total", {"code": code}
        assert after.value(name, **labels) - before.value(name, **labels) == count, code
