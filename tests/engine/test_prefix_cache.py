"""Prefix caching in the scheduler (pure Python, no tensors): what a request takes from
the cache, what it computes, and what never shares a block.

Block size 4 throughout; a 17-token prompt has four full blocks before its last token's.
"""

from __future__ import annotations

import collections
import random

import pytest

from lorafleet.dataplane.engine.adapter_policy import AdapterScheduling
from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.prefix_cache import PrefixCache
from lorafleet.dataplane.engine.request import Request
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerConfig

SIZE = 4
PROMPT = tuple(range(100, 117))  # 17 tokens


class AllInHost:
    """A host tier that holds every adapter (nothing to load)."""

    def has(self, key):
        return True

    def request_load(self, key):
        raise AssertionError(f"{key} is in host memory")

    def take_failures(self):
        return {}

    def trim(self, keep):
        pass


def _scheduler(num_blocks=64, scope="tenant", **limits):
    allocator = BlockAllocator(num_blocks, SIZE)
    cache = PrefixCache(allocator, scope=scope, model="tiny:float32")
    return Scheduler(SchedulerConfig(**limits), allocator, AdapterScheduling(4, AllInHost()),
                     cache)


def _request(name, prompt=PROMPT, *, adapter="digest-v1", tenant="acme", salt="", max_tokens=2):
    return Request(name, tuple(prompt), SamplingParams(max_tokens=max_tokens), arrival_time=0.0,
                   adapter=adapter, tenant=tenant, cache_salt=salt)


def _step(scheduler):
    """Plans a step, 'samples' token 7 for each sampling request, finishes the done ones."""
    plan = scheduler.schedule()
    _finish_step(scheduler, plan)
    return plan


def _finish_step(scheduler, plan):
    scheduler.update(plan, {e.request_id: 7 for e in plan.scheduled if e.is_sampling})
    for entry in plan.scheduled:
        request = scheduler.get(entry.request_id)
        if len(request.output_token_ids) >= request.params.max_tokens:
            scheduler.finish(entry.request_id)


def _serve(scheduler, request):
    """Runs one request to its end; returns its first plan entry and the request."""
    scheduler.add(request)
    first = None
    for _ in range(100):
        if not scheduler.has_unfinished():
            break
        plan = _step(scheduler)
        first = first or next(e for e in plan.scheduled if e.request_id == request.request_id)
    return first, request


def test_same_prompt_and_weights_takes_the_full_blocks_before_the_last_token():
    scheduler = _scheduler()
    first, _ = _serve(scheduler, _request("a"))
    again, request = _serve(scheduler, _request("b"))
    assert first.start_position == 0
    assert again.start_position == 16  # 4 cached blocks; the 17th token is computed
    assert again.token_ids == PROMPT[16:]
    assert again.block_table[:4] == first.block_table[:4]
    assert request.num_cached_tokens == 16


def test_a_prompt_of_whole_blocks_computes_its_last_block_itself():
    scheduler = _scheduler()
    prompt = PROMPT[:16]
    first, _ = _serve(scheduler, _request("a", prompt))
    again, _ = _serve(scheduler, _request("b", prompt))
    # The last token's block would be written (the token's KV): it is never taken.
    assert again.start_position == 12
    assert again.block_table[3] != first.block_table[3]


def test_a_longer_prompt_with_the_same_start_takes_the_shared_blocks():
    scheduler = _scheduler()
    _serve(scheduler, _request("a", PROMPT[:9]))  # two full blocks computed
    again, _ = _serve(scheduler, _request("b", PROMPT))
    assert again.start_position == 8


@pytest.mark.parametrize("change", [
    {"adapter": "digest-v2"},  # a new version of the adapter: other weights
    {"adapter": None},  # the base model
    {"tenant": "globex"},  # another tenant (scope "tenant", the default)
    {"salt": "user-42"},  # another salt
])
def test_other_weights_tenant_or_salt_never_hit(change):
    scheduler = _scheduler()
    _serve(scheduler, _request("a"))
    again, request = _serve(scheduler, _request("b", **change))
    assert again.start_position == 0
    assert request.num_cached_tokens == 0


def test_global_scope_shares_across_tenants_but_not_across_salts():
    scheduler = _scheduler(scope="global")
    _serve(scheduler, _request("a", tenant="acme"))
    assert _serve(scheduler, _request("b", tenant="globex"))[0].start_position == 16
    assert _serve(scheduler, _request("c", tenant="globex", salt="s"))[0].start_position == 0


def test_the_same_salt_shares():
    scheduler = _scheduler()
    _serve(scheduler, _request("a", salt="s1"))
    assert _serve(scheduler, _request("b", salt="s1"))[0].start_position == 16


def test_a_request_still_running_shares_its_computed_blocks():
    scheduler = _scheduler()
    scheduler.add(_request("a", max_tokens=50))
    _step(scheduler)  # a's prompt is computed; a decodes on
    scheduler.add(_request("b"))
    plan = _step(scheduler)
    entry = next(e for e in plan.scheduled if e.request_id == "b")
    a = scheduler.get("a")
    assert entry.start_position == 16
    assert entry.block_table[:4] == tuple(a.block_table[:4])
    scheduler.finish("a")
    used = scheduler.allocator.num_used_blocks
    assert used == len(scheduler.get("b").block_table)  # b keeps the shared blocks


def test_cached_tokens_cost_no_step_budget():
    scheduler = _scheduler(max_num_batched_tokens=8)
    _serve(scheduler, _request("a"))
    again, _ = _serve(scheduler, _request("b"))
    assert again.start_position == 16 and again.is_sampling  # first token in one step


def test_freed_blocks_are_evicted_least_recently_used_first_under_pressure():
    # 12 blocks; a 17-token request with 2 output tokens holds 5. Two cached prompts and a
    # third request do not fit: the third takes the older prompt's blocks, tail first.
    scheduler = _scheduler(num_blocks=12)
    old, new = PROMPT, tuple(range(300, 317))
    _serve(scheduler, _request("old", old))
    _serve(scheduler, _request("new", new))
    _serve(scheduler, _request("other", tuple(range(500, 517))))
    assert _serve(scheduler, _request("new-again", new))[0].start_position == 16
    # The older prompt lost its tail blocks; its head, likelier shared, was kept.
    assert 0 < _serve(scheduler, _request("old-again", old))[0].start_position < 16


def test_a_preempted_request_takes_its_own_blocks_back():
    scheduler = _scheduler(num_blocks=8)  # two 12 + 10 token requests do not both fit
    scheduler.add(_request("a", PROMPT[:12], max_tokens=10))
    scheduler.add(_request("b", PROMPT[::-1][:12], max_tokens=10))
    preempted, restarts = set(), []
    for _ in range(200):
        plan = _step(scheduler)
        preempted.update(plan.preempted_ids)
        restarts += [e for e in plan.scheduled if e.request_id in preempted and e.start_position
                     and len(e.token_ids) > 1]
    assert preempted
    assert restarts  # back after preemption, it recomputed only what was not cached


def test_num_cached_tokens_is_what_the_first_admission_found():
    scheduler = _scheduler()
    _serve(scheduler, _request("a"))
    _, request = _serve(scheduler, _request("b", PROMPT + (1, 2, 3, 4)))
    assert request.num_cached_tokens == 16


def test_no_block_is_written_while_shared_or_cached():
    """Random traffic over a few shared prefixes, with preemption and eviction: a block a
    step writes into is held by its request alone and holds no cached content."""
    rng = random.Random(3)
    scheduler = _scheduler(num_blocks=14, max_num_batched_tokens=24, max_num_seqs=6)
    prefixes = [tuple(rng.randrange(50, 90) for _ in range(rng.randrange(3, 14)))
                for _ in range(3)]
    requests = []
    for step in range(400):
        if step < 300 and rng.random() < 0.6:
            prompt = rng.choice(prefixes) + tuple(rng.randrange(50, 90)
                                                  for _ in range(rng.randrange(1, 9)))
            requests.append(_request(f"r{step}", prompt, tenant=rng.choice(["a", "b"]),
                                     max_tokens=rng.randrange(1, 10)))
            scheduler.add(requests[-1])
        plan = scheduler.schedule()
        holders = collections.Counter(b for r in scheduler.running for b in r.block_table)
        keyed = {scheduler.allocator.find(k) for r in requests for k in r.block_keys}
        for entry in plan.scheduled:
            start, stop = entry.start_position, entry.start_position + len(entry.token_ids)
            written = {entry.block_table[p // SIZE] for p in range(start, stop)}
            assert all(holders[b] == 1 for b in written), (step, entry)
            assert not written & keyed, (step, entry)
        _finish_step(scheduler, plan)
    assert not scheduler.has_unfinished()
    assert scheduler.allocator.num_free_blocks == 14
    assert any(r.num_preemptions for r in requests)
    assert sum(1 for r in requests if r.num_cached_tokens) > 20
