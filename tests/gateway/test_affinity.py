"""Prefix affinity, table-tested without servers: requests that start alike prefer one
worker on every gateway replica, unless it is much busier; different starts spread."""

from __future__ import annotations

import collections
import random

import grpc
import pytest

from lorafleet.dataplane.gateway.affinity import (
    MAX_EXCESS,
    PREFIX_CHARS,
    PREFIX_TOKENS,
    prefer,
    prefix_key,
)
from lorafleet.dataplane.gateway.picking import Candidate, order
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.gateway.conftest import add_adapter, generate, holders, table_shows

WORKERS = ("w-0", "w-1", "w-2", "w-3")
SYSTEM = list(range(1000, 1000 + PREFIX_TOKENS))


def _tokens(ids, salt=""):
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), cache_salt=salt)


def _candidates(workers=WORKERS, ranks=None):
    ranks = ranks or {}
    return [Candidate(w, f"{w}:1", "device", ranks.get(w, (0, 0))) for w in workers]


def _first(key, outstanding=None, workers=WORKERS, ranks=None, seed=0):
    outstanding = outstanding or {}
    ranked = order(_candidates(workers, ranks), outstanding, (), random.Random(seed))
    return prefer(ranked, key, outstanding)[0].worker_id


def test_requests_that_start_alike_go_to_one_worker_on_every_replica():
    keys = {prefix_key(_tokens(SYSTEM + [i, i + 1]), "digest-1") for i in range(50)}
    assert len(keys) == 1  # only the first PREFIX_TOKENS ids count
    (key,) = keys
    # Each seed stands for a gateway replica (its random tie-breaks): all agree.
    assert len({_first(key, seed=seed) for seed in range(20)}) == 1


def test_other_starts_weights_and_salts_are_other_keys_and_spread():
    base = prefix_key(_tokens(SYSTEM), "digest-1")
    assert prefix_key(_tokens(SYSTEM), "digest-2") != base  # a new version: other KV
    assert prefix_key(_tokens(SYSTEM, salt="s"), "digest-1") != base
    assert prefix_key(_tokens([7, *SYSTEM]), "digest-1") != base
    firsts = collections.Counter(_first(prefix_key(_tokens([i, *SYSTEM]), "digest-1"))
                                 for i in range(800))
    assert set(firsts) == set(WORKERS)
    assert all(140 <= n <= 260 for n in firsts.values()), firsts


def test_text_and_chat_prompts_are_keyed_by_their_start():
    system = "You are a support agent for acme. " * 20

    def text(body):
        return prefix_key(pb.GenerateRequest(text=body), "d")

    def chat(system_text, user):
        return prefix_key(pb.GenerateRequest(chat=pb.ChatMessages(messages=[
            pb.ChatMessage(role="system", content=system_text),
            pb.ChatMessage(role="user", content=user)])), "d")

    assert len(system) > PREFIX_CHARS
    assert text(system + "Where is my order?") == text(system + "Cancel it.")
    assert text("Hi. " + system) != text(system)
    assert chat(system, "a") == chat(system, "b")
    assert chat("Short system prompt.", "a") != chat("Short system prompt.", "b")


def test_a_much_busier_preferred_worker_gives_way_to_the_least_busy():
    key = prefix_key(_tokens(SYSTEM), "digest-1")
    preferred = _first(key)
    others = [w for w in WORKERS if w != preferred]
    busy = {f"{w}:1": 3 for w in others}
    assert _first(key, {**busy, f"{preferred}:1": 3 + MAX_EXCESS - 1}) == preferred
    gave_way = _first(key, {**busy, f"{preferred}:1": 3 + MAX_EXCESS, f"{others[0]}:1": 2})
    assert gave_way == others[0]


def test_a_worse_ranked_preferred_worker_is_not_moved_up():
    key = prefix_key(_tokens(SYSTEM), "digest-1")
    preferred = _first(key)
    draining = {preferred: (1, 0)}  # e.g. draining, or holding the version on host only
    assert _first(key, ranks=draining) != preferred


def test_a_worker_leaving_moves_only_the_keys_it_was_preferred_for():
    keys = [prefix_key(_tokens([i, *SYSTEM]), "digest-1") for i in range(300)]
    before = {key: _first(key) for key in keys}
    after = {key: _first(key, workers=WORKERS[:3]) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved and all(before[key] == "w-3" for key in moved)


@pytest.mark.slow
async def test_through_a_live_gateway_a_shared_start_stays_on_one_worker(
        stubs, serving_workers, gateways, plane):
    for worker_id in ("w-0", "w-1"):
        await serving_workers(worker_id)
    await add_adapter(stubs, "acme/support", ["/a/v1"], {1: 100}, min_replicas=2)
    gateway = await gateways(f"127.0.0.1:{plane.port}", seed=1)
    await table_shows(gateway, lambda t: holders(t, "acme/support") == {1: {"w-0", "w-1"}})
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        alike = [await generate(stub, "acme/support", prompt=[*SYSTEM, i]) for i in range(20)]
        apart = [await generate(stub, "acme/support", prompt=[i, *SYSTEM]) for i in range(40)]
    assert len({r.summary.worker_id for r in alike}) == 1
    assert {r.summary.worker_id for r in apart} == {"w-0", "w-1"}
