"""Property-based fuzzing of live workers: every request message of InferenceService and
WorkerService, and garbage bytes on every method, with no `authorization` header, one of
junk, or a valid key (admin or tenant). Every answer is a proper status; the workers are
healthy afterwards.

Half the cases go to a worker without auth (as tests start one: every call is served,
the header ignored), half to one checking keys (a key store in memory), where junk is
UNAUTHENTICATED and a tenant key meets the tenant rules.
"""

from __future__ import annotations

import collections

import grpc
import pytest
from hypothesis import given

from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.runtime.auth import AuthInterceptor, KeyVerifier, MemoryKeyStore
from lorafleet.runtime.auth.keys import make_key
from lorafleet.runtime.auth.policy import WORKER_METHODS
from lorafleet.runtime.rpcserver import ServerSecurity
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.fuzz.calls import PROPER, call, fuzz_settings, is_serving
from tests.fuzz.messages import authorization, messages, raw_bodies
from tests.server.conftest import worker_config
from tests.support.worker_thread import WorkerThread

INFERENCE = ipb.DESCRIPTOR.services_by_name["InferenceService"]
WORKER = wpb.DESCRIPTOR.services_by_name["WorkerService"]
# Cases per method and worker (Generate does real work when its input is valid).
NUM_EXAMPLES = {"Generate": 250, "LoadAdapter": 125, "EvictAdapter": 125,
                "ListAdapters": 100, "ValidateAdapter": 125, "GetWorkerStatus": 75}
NUM_RAW = 20
ADMIN_KEY, ADMIN = make_key("admin")
TENANT_KEY, TENANT = make_key("tenant", "acme")


@pytest.fixture(scope="module", params=["open", "guarded"])
def fuzzed(lora_suite, request):
    """A worker with two adapters and a KV cache of 64 tokens, so even a valid Generate
    with the largest max_tokens is short (or refused as too long); "guarded" checks keys."""
    base, adapters = lora_suite
    security = {}
    if request.param == "guarded":
        verifier = KeyVerifier(MemoryKeyStore([ADMIN, TENANT]))
        security["security"] = ServerSecurity(
            interceptors=(AuthInterceptor(verifier, WORKER_METHODS),))
    chosen = {name: adapters[name] for name in ("acme/qv8", "beta/ko16")}
    # The budget covers the adapter slots (2,097,600 bytes here) plus 16 blocks of 4 tokens.
    worker = WorkerThread(worker_config(base, kv_cache_bytes=2_097_600 + 16 * 2048,
                                        max_num_seqs=8),
                          adapters=[(n, str(p)) for n, p in chosen.items()], **security)
    names = ("acme/qv8", "acme/qv8@1", "beta/ko16", "beta/ko16@1", "gamma/down16", "acme/new")
    worker.is_guarded = request.param == "guarded"
    worker.hints = {"adapter": names, "name": names, "text": ("hello", "x" * 100),
                    "source_uri": tuple(str(p) for p in adapters.values()),  # acme/qv8 first
                    "base_model": (base.name,), "digest": ("",)}
    yield worker
    worker.stop()


def _run(worker, method, body_strategy, num_examples):
    codes = collections.Counter()

    @fuzz_settings(num_examples)
    @given(body=body_strategy, metadata=authorization(ADMIN_KEY, TENANT_KEY))
    def one(body, metadata):
        code = call(worker.channel, method, body, metadata)
        codes[code] += 1
        assert code in PROPER, f"{method.name} answered {code} to {body!r:.500}"

    one()
    return codes


@pytest.mark.slow
@pytest.mark.parametrize("method", [*INFERENCE.methods, *WORKER.methods],
                         ids=lambda m: m.name)
def test_every_request_message_gets_a_proper_status(fuzzed, method):
    strategy = messages(method.input_type, hints=fuzzed.hints)
    codes = _run(fuzzed, method, strategy, NUM_EXAMPLES[method.name])
    assert sum(codes.values()) >= NUM_EXAMPLES[method.name]
    if fuzzed.is_guarded:  # junk refused, valid keys get past the check
        assert codes[grpc.StatusCode.UNAUTHENTICATED] > 0
        assert sum(codes.values()) > codes[grpc.StatusCode.UNAUTHENTICATED], codes


def test_garbage_bytes_on_every_method_get_a_proper_status(fuzzed):
    for method in [*INFERENCE.methods, *WORKER.methods]:
        codes = _run(fuzzed, method, raw_bodies(), NUM_RAW)
        assert sum(codes.values()) >= NUM_RAW
        assert codes[grpc.StatusCode.INVALID_ARGUMENT] > 0  # undecodable: the caller's fault


def test_worker_is_healthy_after_fuzzing(fuzzed):
    """Runs last in this module: health, and normal Generates with and without an
    adapter (loaded again: the fuzzing may have evicted it, as it may)."""
    assert is_serving(fuzzed.channel)
    admin = (("authorization", f"Bearer {ADMIN_KEY}"),)
    tenant = (("authorization", f"Bearer {TENANT_KEY}"),)
    fuzzed.admin.LoadAdapter(wpb.LoadAdapterRequest(adapter="acme/qv8",
                                                    source_uri=fuzzed.hints["source_uri"][0]),
                             timeout=30, metadata=admin)
    for adapter, prompt in (("acme/qv8", ipb.GenerateRequest(token_ids=ipb.TokenIds(ids=[5, 6]))),
                            ("", ipb.GenerateRequest(text="hello"))):
        prompt.adapter = adapter
        prompt.sampling.max_tokens, prompt.sampling.ignore_eos = 3, True
        answers = list(fuzzed.inference.Generate(prompt, timeout=30, metadata=tenant))
        assert sum(len(m.delta.token_ids) for m in answers) == 3
