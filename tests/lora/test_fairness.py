"""A cold adapter is not starved by steady traffic to the adapters holding every slot.

Pure Python: the real scheduler and adapter cache, fake device slots, no tensors.
"""

from __future__ import annotations

from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.request import Request
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerConfig
from lorafleet.dataplane.lora.cache import AdapterCache, AdapterSource
from tests.lora.fakes import FakeAdapter, FakeSlots


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


def test_cold_adapter_runs_despite_a_steady_stream_to_the_resident_one():
    holder: dict = {}
    cache = AdapterCache(FakeSlots(1), max_host=4, load=lambda s: FakeAdapter(s.digest),
                         running_keys=lambda: {r.adapter for r in holder["s"].running})
    for key in ("hot", "cold"):
        cache.load_host(AdapterSource(f"t/{key}@1", f"/src/{key}", key))
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
                          BlockAllocator(256, 4), cache)
    holder["s"] = scheduler
    params = SamplingParams(max_tokens=4, temperature=0.0)
    scheduler.add(Request("hot-0", (1, 2, 3), params, 0.0, adapter="hot"))
    _step(scheduler)
    scheduler.add(Request("cold-0", (1, 2, 3), params, 0.0, adapter="cold"))
    cold_ran_at = None
    for step in range(1, 60):
        scheduler.add(Request(f"hot-{step}", (1, 2, 3), params, 0.0, adapter="hot"))
        plan = _step(scheduler)
        if any(e.request_id == "cold-0" for e in plan.scheduled):
            cold_ran_at = step
            break
    assert cold_ran_at is not None and cold_ran_at <= 10
