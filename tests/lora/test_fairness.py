"""Device adapter slots as the scheduler allocates them: pins, LRU order, installs, and
no starvation of a cold adapter by steady traffic to the resident ones.

Pure Python: the real scheduler and slot allocator, a fake host tier, no tensors.
"""

from __future__ import annotations

from lorafleet.dataplane.engine.adapter_policy import AdapterScheduling
from lorafleet.dataplane.engine.adapter_slots import SlotAllocator
from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.request import Request
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerConfig
from tests.engine.test_scheduler import FakeHost

PARAMS = SamplingParams(max_tokens=4, temperature=0.0)


def _step(scheduler):
    """One step: every scheduled request computes; sampling ones get a token; finished
    requests (4 output tokens) leave."""
    plan = scheduler.schedule()
    scheduler.update(plan, {e.request_id: 7 for e in plan.scheduled if e.is_sampling})
    for entry in plan.scheduled:
        request = scheduler.get(entry.request_id)
        if request is not None and len(request.output_token_ids) >= request.params.max_tokens:
            scheduler.finish(entry.request_id)
    return plan


def _scheduler(num_slots, ready):
    return Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
                     BlockAllocator(256, 4), AdapterScheduling(num_slots, FakeHost(ready)))


def test_pinned_slots_are_never_reassigned_and_lru_goes_first():
    slots = SlotAllocator(2)
    assert slots.try_assign("a", pinned=()) == 0 and slots.try_assign("b", pinned=()) == 1
    assert slots.try_assign("c", pinned={"a", "b"}) is None  # every slot pinned
    slots.touch("a")  # b is now the least recently used
    assert slots.try_assign("c", pinned=()) == 1
    assert slots.held() == ["a", "c"] and slots.release("a") == 0 and slots.held() == ["c"]


def test_plan_carries_each_install_once_and_each_request_its_slot():
    scheduler = _scheduler(num_slots=2, ready={"a", "b"})
    for name, key in (("a1", "a"), ("b1", "b"), ("a2", "a")):
        scheduler.add(Request(name, (1, 2, 3), PARAMS, 0.0, adapter=key))
    first = _step(scheduler)
    assert sorted(first.slot_installs) == [(0, "a"), (1, "b")]
    assert {e.request_id: e.adapter_slot for e in first.scheduled} == {"a1": 0, "b1": 1, "a2": 0}
    assert _step(scheduler).slot_installs == ()  # already resident: nothing to copy


def test_cold_adapter_runs_despite_a_steady_stream_to_the_resident_one():
    scheduler = _scheduler(num_slots=1, ready={"hot", "cold"})
    scheduler.add(Request("hot-0", (1, 2, 3), PARAMS, 0.0, adapter="hot"))
    _step(scheduler)
    scheduler.add(Request("cold-0", (1, 2, 3), PARAMS, 0.0, adapter="cold"))
    cold_ran_at = None
    for step in range(1, 60):
        scheduler.add(Request(f"hot-{step}", (1, 2, 3), PARAMS, 0.0, adapter="hot"))
        plan = _step(scheduler)
        if any(e.request_id == "cold-0" for e in plan.scheduled):
            cold_ran_at = step
            assert (0, "cold") in plan.slot_installs
            break
    assert cold_ran_at is not None and cold_ran_at <= 10
