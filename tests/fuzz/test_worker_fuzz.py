"""Property-based fuzzing of a live worker: every request message of InferenceService and
WorkerService, and garbage bytes on every method, with and without an `authorization`
header of junk. Every answer is a proper status; the worker is healthy afterwards.

Auth is not part of the worker yet, so every call is served unauthenticated; the junk
header must not change that (nor crash anything) — once auth lands, UNAUTHENTICATED is
one more proper answer.
"""

from __future__ import annotations

import collections

import grpc
import pytest
from hypothesis import given

from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.fuzz.calls import PROPER, call, fuzz_settings, is_serving
from tests.fuzz.messages import authorization, messages, raw_bodies
from tests.server.conftest import worker_config
from tests.support.worker_thread import WorkerThread

INFERENCE = ipb.DESCRIPTOR.services_by_name["InferenceService"]
WORKER = wpb.DESCRIPTOR.services_by_name["WorkerService"]
# Cases per method (Generate is the one that does real work when its input is valid).
NUM_EXAMPLES = {"Generate": 500, "LoadAdapter": 250, "EvictAdapter": 250,
                "ListAdapters": 200, "ValidateAdapter": 250, "GetWorkerStatus": 150}
NUM_RAW = 40


@pytest.fixture(scope="module")
def fuzzed(lora_suite):
    """A worker with two adapters and a KV cache of 64 tokens, so even a valid Generate
    with the largest max_tokens is short (or refused as too long)."""
    base, adapters = lora_suite
    chosen = {name: adapters[name] for name in ("acme/qv8", "beta/ko16")}
    # The budget covers the adapter slots (2,097,600 bytes here) plus 16 blocks of 4 tokens.
    worker = WorkerThread(worker_config(base, kv_cache_bytes=2_097_600 + 16 * 2048,
                                        max_num_seqs=8),
                          adapters=[(n, str(p)) for n, p in chosen.items()])
    names = ("acme/qv8", "acme/qv8@1", "beta/ko16", "beta/ko16@1", "gamma/down16", "acme/new")
    worker.hints = {"adapter": names, "name": names, "text": ("hello", "x" * 100),
                    "source_uri": tuple(str(p) for p in adapters.values()),  # acme/qv8 first
                    "base_model": (base.name,), "digest": ("",)}
    yield worker
    worker.stop()


def _run(worker, method, body_strategy, num_examples):
    codes = collections.Counter()

    @fuzz_settings(num_examples)
    @given(body=body_strategy, metadata=authorization())
    def one(body, metadata):
        code = call(worker.channel, method, body, metadata)
        codes[code] += 1
        assert code in PROPER, f"{method.name} answered {code} to {body!r:.500}"

    one()
    return codes


@pytest.mark.parametrize("method", [*INFERENCE.methods, *WORKER.methods],
                         ids=lambda m: m.name)
def test_every_request_message_gets_a_proper_status(fuzzed, method):
    strategy = messages(method.input_type, hints=fuzzed.hints)
    codes = _run(fuzzed, method, strategy, NUM_EXAMPLES[method.name])
    assert sum(codes.values()) >= NUM_EXAMPLES[method.name]


def test_garbage_bytes_on_every_method_get_a_proper_status(fuzzed):
    for method in [*INFERENCE.methods, *WORKER.methods]:
        codes = _run(fuzzed, method, raw_bodies(), NUM_RAW)
        assert sum(codes.values()) >= NUM_RAW
        assert codes[grpc.StatusCode.INVALID_ARGUMENT] > 0  # undecodable: the caller's fault


def test_worker_is_healthy_after_fuzzing(fuzzed):
    """Runs last in this module: health, and normal Generates with and without an
    adapter (loaded again: the fuzzing may have evicted it, as it may)."""
    assert is_serving(fuzzed.channel)
    fuzzed.admin.LoadAdapter(wpb.LoadAdapterRequest(adapter="acme/qv8",
                                                    source_uri=fuzzed.hints["source_uri"][0]),
                             timeout=30)
    tokens, summary = fuzzed.generate("acme/qv8", [5, 6, 7], max_tokens=4, ignore_eos=True)
    assert len(tokens) == 4 and summary.adapter_version.startswith("acme/qv8@")
    tokens, _ = fuzzed.generate("", "hello", max_tokens=3, ignore_eos=True)
    assert len(tokens) == 3
