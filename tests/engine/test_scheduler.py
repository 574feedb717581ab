"""The scheduler on its own: pure Python requests and a fake adapter gate, no tensors."""

from __future__ import annotations

import dataclasses

import pytest

from lorafleet.dataplane.engine.adapter_policy import AdapterScheduling
from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.request import Request, RequestStatus
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerConfig


class FakeHost:
    """A host tier holding the adapters in `ready`; loads are recorded, never performed."""

    def __init__(self, ready):
        self.ready = set(ready)
        self.load_requests = []

    def has(self, key):
        return key in self.ready

    def request_load(self, key):
        self.load_requests.append(key)

    def take_failures(self):
        return {}

    def trim(self, keep):
        pass


def _request(name, num_prompt=4, adapter=None, max_tokens=4):
    return Request(name, tuple(range(1, num_prompt + 1)), SamplingParams(max_tokens=max_tokens),
                   arrival_time=0.0, adapter=adapter)


def _scheduler(num_blocks=64, block_size=4, host=None, max_loras=0, **limits):
    adapters = AdapterScheduling(max_loras, host) if host is not None else None
    return Scheduler(SchedulerConfig(**limits), BlockAllocator(num_blocks, block_size), adapters)


def _step(scheduler):
    """Plans a step and pretends the model sampled token 7 for every sampling request."""
    plan = scheduler.schedule()
    scheduler.update(plan, {e.request_id: 7 for e in plan.scheduled if e.is_sampling})
    return plan


def test_unready_adapter_is_skipped_and_loaded_without_blocking_the_queue():
    gate = FakeHost(ready={"a"})
    scheduler = _scheduler(host=gate, max_loras=1)
    for request in (_request("b1", adapter="b"), _request("a1", adapter="a"),
                    _request("base"), _request("a2", adapter="a"), _request("c1", adapter="c")):
        scheduler.add(request)
    gate.ready.add("c")  # ready, but a second distinct adapter would exceed max_loras=1
    plan = scheduler.schedule()
    assert [e.request_id for e in plan.scheduled] == ["a1", "base", "a2"]
    assert gate.load_requests == ["b"]
    # The skipped requests keep their place at the head of the queue, in order.
    assert [r.request_id for r in scheduler.waiting] == ["b1", "c1"]


def test_at_most_max_loras_distinct_adapters_per_step():
    gate = FakeHost(ready={"a", "b", "c"})
    scheduler = _scheduler(host=gate, max_loras=2)
    for i, key in enumerate("abcabc"):
        scheduler.add(_request(f"r{i}", adapter=key))
    seen = set()
    while scheduler.has_unfinished():
        plan = _step(scheduler)
        adapters = {e.adapter for e in plan.scheduled}
        assert len(adapters) <= 2
        seen |= adapters
        for e in plan.scheduled:
            request = scheduler.get(e.request_id)
            if len(request.output_token_ids) >= request.params.max_tokens:
                scheduler.finish(e.request_id)
    assert seen == {"a", "b", "c"}


def test_token_budget_chunks_prefill_and_mixes_it_with_decode():
    scheduler = _scheduler(max_num_batched_tokens=6)
    scheduler.add(_request("short", num_prompt=3))
    scheduler.add(_request("long", num_prompt=20))
    plans = [_step(scheduler) for _ in range(5)]
    assert all(p.num_batched_tokens <= 6 for p in plans)
    first = {e.request_id: len(e.token_ids) for e in plans[0].scheduled}
    assert first == {"short": 3, "long": 3}
    second = {e.request_id: len(e.token_ids) for e in plans[1].scheduled}
    assert second == {"short": 1, "long": 5}  # a decode next to a prefill chunk
    long = scheduler.get("long")
    assert long.num_computed_tokens == 3 + 5 + 5 + 5 + 2
    assert long.output_token_ids == [7]


def test_preemption_frees_the_newest_request_for_recompute():
    # 6 blocks of 4 tokens; two 10-token prompts take 3 blocks each.
    scheduler = _scheduler(num_blocks=6)
    scheduler.add(_request("old", num_prompt=10, max_tokens=10))
    scheduler.add(_request("new", num_prompt=10, max_tokens=10))
    for _ in range(3):  # prefill, then two decodes: 12 computed tokens each, 6 blocks full
        assert not _step(scheduler).preempted_ids
    plan = _step(scheduler)  # "old" needs a 4th block: "new" is preempted
    assert plan.preempted_ids == ("new",)
    assert [e.request_id for e in plan.scheduled] == ["old"]
    new = scheduler.get("new")
    assert (new.status, new.num_computed_tokens, new.block_table) == (RequestStatus.WAITING, 0, [])
    assert new.output_token_ids == [7, 7, 7]  # kept: recompute replays them
    assert scheduler.waiting[0] is new


def test_abort_anytime_returns_every_block():
    allocator = BlockAllocator(32, 4)
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=8), allocator)
    for i in range(4):
        scheduler.add(_request(f"r{i}", num_prompt=9))
    _step(scheduler)
    assert allocator.num_used_blocks > 0
    for i in (2, 0, 3, 1):  # mix of running and still-waiting requests
        assert scheduler.finish(f"r{i}").status is RequestStatus.FINISHED
    assert allocator.num_free_blocks == 32
    assert not scheduler.has_unfinished()
    assert scheduler.finish("r0") is None


def test_plan_is_frozen():
    scheduler = _scheduler()
    scheduler.add(_request("r"))
    plan = scheduler.schedule()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.scheduled[0].token_ids = ()


def test_allocator_reference_counts():
    allocator = BlockAllocator(4, 16)
    blocks = allocator.try_allocate(3)
    assert allocator.try_allocate(2) is None
    allocator.share(blocks[0])
    allocator.free(blocks)
    assert allocator.num_free_blocks == 3  # blocks[0] still has a user
    allocator.free(blocks[:1])
    assert allocator.num_free_blocks == 4
    with pytest.raises(ValueError, match="freed twice"):
        allocator.free(blocks[:1])
