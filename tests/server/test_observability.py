"""What an operator sees: grpcurl through reflection, and /metrics after traffic."""

from __future__ import annotations

import json
import urllib.request

from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.support.grpcurl import run_grpcurl
from tests.support.lora_suite import prompts


def test_grpcurl_lists_describes_and_streams_generate(served):
    listed = run_grpcurl(served.address, "list")
    assert "lorafleet.inference.v1.InferenceService" in listed.stdout
    assert "lorafleet.worker.v1.WorkerService" in listed.stdout
    described = run_grpcurl(served.address, "describe", "lorafleet.inference.v1.InferenceService")
    assert "rpc Generate" in described.stdout and "stream" in described.stdout
    body = json.dumps({"adapter": "acme/qv8", "text": "Hello",
                       "sampling": {"max_tokens": 5, "temperature": 0}})
    streamed = run_grpcurl("-d", body, served.address,
                           "lorafleet.inference.v1.InferenceService/Generate")
    assert streamed.returncode == 0, streamed.stderr
    messages = [json.loads(m) for m in streamed.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert sum(len(m["delta"].get("token_ids", [])) for m in messages if "delta" in m) == 5
    assert messages[-1]["summary"]["adapter_version"] == "acme/qv8@1"
    adapters = run_grpcurl(served.address, "lorafleet.worker.v1.WorkerService/ListAdapters")
    assert '"adapter": "gamma/all64"' in adapters.stdout


SERIES = [
    'lorafleet_requests_total{adapter="acme/qv8",finish_reason="length",version="1"}',
    'lorafleet_requests_total{adapter="base",finish_reason="length",version=""}',
    'lorafleet_prompt_tokens_total{adapter="acme/qv8",version="1"}',
    'lorafleet_generation_tokens_total{adapter="acme/qv8",version="1"}',
    'lorafleet_rejected_requests_total{code="NOT_FOUND"}',
    "lorafleet_queue_time_seconds_bucket",
    "lorafleet_time_to_first_token_seconds_bucket",
    "lorafleet_inter_token_latency_seconds_bucket",
    "lorafleet_time_per_output_token_seconds_bucket",
    "lorafleet_request_latency_seconds_bucket",
    "lorafleet_queue_depth",
    "lorafleet_running_sequences",
    "lorafleet_kv_blocks_used",
    "lorafleet_kv_blocks_total",
    'lorafleet_adapter_loads_total{outcome="ok",tier="host"}',
    'lorafleet_adapter_loads_total{outcome="ok",tier="device"}',
    'lorafleet_adapter_load_duration_seconds_bucket{le="0.005",tier="host"}',
    'lorafleet_adapter_evictions_total{tier="device"}',
    'lorafleet_resident_adapters{tier="device"}',
    'lorafleet_resident_adapters{tier="host"}',
    "vllm:num_requests_waiting",
    "vllm:lora_requests_info",
]


def test_metrics_expose_every_series_after_traffic(served):
    for adapter in ("acme/qv8", "", "gamma/all64", "beta/q8", "acme/all16", "beta/ko16"):
        served.generate(adapter, prompts(2)[1], max_tokens=4)
    served.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="beta/q8", tier=wpb.TIER_DEVICE))
    url = f"http://127.0.0.1:{served.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    missing = [s for s in SERIES if s not in text]
    assert missing == []
    # seconds-scale buckets
    assert 'lorafleet_request_latency_seconds_bucket{adapter="acme/qv8",le="30.0",version="1"}' in text
