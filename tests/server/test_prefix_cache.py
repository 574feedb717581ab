"""Prefix caching through a real worker's gRPC API: adapter versions by digest (vLLM's bug
as a test), the same weights under two names, tenants, salts, status and metrics.

Every prompt here has 41 tokens: ten full blocks of 4 before its last token's block, so a
hit reports 40 cached tokens. Each test uses prompts of its own, so none depends on
what another left in the cache.
"""

from __future__ import annotations

import time

import grpc
import pytest

from lorafleet.dataplane.server.cli import serve_parser, worker_config
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.observability.scrape import scrape
from tests.server.conftest import worker_config as small_config
from tests.support.worker_thread import WorkerThread

CACHED = 40


def _prompt(seed: int) -> list[int]:
    return [10 + (seed * 53 + j * 37) % 340 for j in range(41)]


@pytest.fixture(scope="module")
def worker(lora_suite):
    """Prefix caching as it comes (tenant scope); acme/support@1 has acme/qv8's weights."""
    base, adapters = lora_suite
    worker = WorkerThread(small_config(base, model_name="tiny-llama"),
                          adapters=[("acme/support", str(adapters["acme/qv8"]))])
    yield worker
    worker.stop()


def _load(worker, name, path, **fields):
    return worker.admin.LoadAdapter(wpb.LoadAdapterRequest(
        adapter=name, source_uri=str(path), **fields)).adapter


def test_a_new_version_never_serves_the_old_versions_prefix(worker, lora_suite, peft_reference):
    adapters, prompt = lora_suite[1], _prompt(1)
    v1_tokens = peft_reference.greedy("acme/qv8", prompt)
    tokens, summary = worker.generate("acme/support", prompt)
    assert (tokens, summary.adapter_version) == (v1_tokens, "acme/support@1")
    tokens, summary = worker.generate("acme/support", prompt)
    assert (tokens, summary.usage.cached_tokens) == (v1_tokens, CACHED)  # v1 reuses its own
    # Publish v2 of the same name (new weights, new digest), as vLLM users reload adapters.
    v2 = _load(worker, "acme/support", adapters["acme/all16"], make_default=True)
    tokens, summary = worker.generate("acme/support", prompt)
    assert summary.adapter_version == "acme/support@2"
    assert summary.adapter_digest == v2.digest
    assert summary.usage.cached_tokens == 0  # no block of v1's
    assert tokens == peft_reference.greedy("acme/all16", prompt) != v1_tokens
    tokens, summary = worker.generate("acme/support", prompt)
    assert (tokens[0], summary.usage.cached_tokens) == (peft_reference.greedy(
        "acme/all16", prompt)[0], CACHED)
    tokens, summary = worker.generate("acme/support@1", prompt)  # v1, pinned: its own blocks
    assert (tokens, summary.usage.cached_tokens) == (v1_tokens, CACHED)


def test_the_same_weights_under_two_names_share_within_a_tenant(worker, lora_suite,
                                                                 peft_reference):
    adapters, prompt = lora_suite[1], _prompt(2)
    _load(worker, "acme/support-copy", adapters["acme/qv8"])
    _load(worker, "globex/support", adapters["acme/qv8"])  # the same digest, another tenant
    worker.generate("acme/support@1", prompt)
    tokens, summary = worker.generate("acme/support-copy", prompt)
    assert summary.usage.cached_tokens == CACHED
    assert tokens == peft_reference.greedy("acme/qv8", prompt)
    # Another tenant gets no hit (it could time one to learn what acme sent).
    tokens, summary = worker.generate("globex/support", prompt)
    assert summary.usage.cached_tokens == 0
    assert tokens == peft_reference.greedy("acme/qv8", prompt)


def test_a_salt_shares_only_with_the_same_salt(worker):
    prompt = _prompt(3)
    worker.generate("acme/support@1", prompt, cache_salt="user-1")
    assert worker.generate("acme/support@1", prompt, cache_salt="user-1")[1].usage.cached_tokens \
        == CACHED
    assert worker.generate("acme/support@1", prompt, cache_salt="user-2")[1].usage.cached_tokens \
        == 0
    assert worker.generate("acme/support@1", prompt)[1].usage.cached_tokens == 0


def test_a_salt_over_256_characters_is_invalid_argument(worker):
    with pytest.raises(grpc.RpcError) as caught:
        worker.generate("acme/support@1", _prompt(4), cache_salt="s" * 257)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("cache_salt:")


def test_hits_show_in_status_and_metrics(worker):
    prompt = _prompt(5)
    before = scrape(worker.running.metrics_port)
    worker.generate("acme/support@1", prompt)
    worker.generate("acme/support@1", prompt)
    labels = {"adapter": "acme/support", "version": "1"}

    def grew(name, **labels):
        # A labelled counter exists once first counted: before this test's requests it may
        # not (when no earlier test of this module ran on this pytest worker), which is 0.
        return sum(after.values(name, **labels)) - sum(before.values(name, **labels))

    # A request is counted as its stream closes, which may be just after the caller has
    # its last message: scrape until the second one shows (bounded).
    deadline = time.monotonic() + 5
    while True:
        after = scrape(worker.running.metrics_port)
        if grew("lorafleet_prefix_cache_queries_total", **labels) >= 2 * len(prompt) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert grew("lorafleet_prefix_cache_queries_total", **labels) == 2 * len(prompt)
    assert grew("lorafleet_prefix_cache_hits_total", **labels) == CACHED
    assert grew("vllm:prefix_cache_queries_total", model_name="tiny-llama") == 2 * len(prompt)
    assert grew("vllm:prefix_cache_hits_total", model_name="tiny-llama") == CACHED
    load = worker.status().load
    assert load.num_kv_blocks_used == 0
    assert load.num_kv_blocks_cached >= CACHED // 4
    assert after.value("lorafleet_kv_blocks_cached") >= CACHED // 4


@pytest.mark.slow
def test_global_scope_shares_across_tenants(lora_suite):
    base, adapters = lora_suite
    worker = WorkerThread(small_config(base, prefix_cache_scope="global"),
                          adapters=[("acme/support", str(adapters["acme/qv8"])),
                                    ("globex/support", str(adapters["acme/qv8"]))])
    try:
        prompt = _prompt(6)
        worker.generate("acme/support", prompt)
        assert worker.generate("globex/support", prompt)[1].usage.cached_tokens == CACHED
        assert worker.generate("globex/support", prompt, cache_salt="x")[1] \
            .usage.cached_tokens == 0
    finally:
        worker.stop()


@pytest.mark.parametrize("argv,scope", [
    ([], "tenant"), (["--prefix-cache-scope", "global"], "global"),
    (["--no-prefix-cache"], None), (["--no-prefix-cache", "--prefix-cache-scope", "global"], None),
])
def test_serve_options_choose_the_scope(argv, scope, tmp_path):
    args = serve_parser().parse_args(["--model", str(tmp_path), *argv])
    assert worker_config(args).prefix_cache_scope == scope
