"""Decode steps through the CUDA-graph runner's static buffers (dataplane/runner/graphs.py).

There is no GPU here, so every "replay" runs the captured forward pass eagerly on the same
static buffers: what these tests check is what the graphs would read — the buffer
filling, the padding rows, the bucket choice and the LoRA slots — token for token against
transformers (and peft) in float32. Replay itself is emulated on the CPU too
(graph_emulation.py: the captured step's ops and Triton launches recorded and run again
on the same tensors), with more adapters at replay than at capture and slots changing
adapters between replays; real capture is checked on a GPU by `make gpu-check`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.scheduler import ScheduledRequest
from lorafleet.dataplane.runner.graphs import GraphShape, attach_decode_graphs, batch_buckets
from tests.engine.conftest import make_prompts
from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of
from tests.engine.graph_emulation import HostDependenceError, Recording
from tests.lora.test_engine_lora import _engine, _requests, _run
from tests.support.lora_suite import prompts

ROOT = pathlib.Path(__file__).resolve().parents[2]

MAX_NUM_SEQS = 5  # buckets 1, 2, 4, 5
MAX_CONTEXT = 64
NUM_SEATS = 3  # the engines' max_num_seqs: most decode steps hold 3 rows, padded to 4


def _attach(runner, engine, *, max_context=MAX_CONTEXT):
    """Decode graphs replayed eagerly, their scratch block taken from the allocator (the
    factory allocates one past it instead)."""
    scratch = engine.allocator.try_allocate(1)[0]
    return attach_decode_graphs(runner, scratch_block=scratch,
                                block_size=engine.allocator.block_size,
                                max_num_seqs=MAX_NUM_SEQS, max_context=max_context,
                                use_graphs=False)


def test_buckets_are_powers_of_two_then_max_num_seqs():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(5) == (1, 2, 4, 5)
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    shape = GraphShape(max_num_seqs=48, block_size=16, max_context=1000)
    assert [shape.bucket_for(n) for n in (1, 3, 9, 33, 48, 49)] == [1, 4, 16, 48, 48, None]
    assert shape.max_blocks == 63
    with pytest.raises(ValueError, match="max_num_seqs"):
        batch_buckets(0)


def _entry(start, num_tokens=1, is_sampling=True):
    return ScheduledRequest(request_id="r", token_ids=(5,) * num_tokens, start_position=start,
                            block_table=(1, 2, 3, 4), adapter=None,
                            params=SamplingParams(), is_sampling=is_sampling)


@pytest.mark.slow
def test_only_decode_steps_within_the_captured_shape_replay(checkpoints):
    engine = make_engine(checkpoints("llama-gqa"), max_num_seqs=MAX_NUM_SEQS)
    graphs = _attach(engine.runner.inner, engine, max_context=16)
    assert graphs.fits([_entry(3)] * MAX_NUM_SEQS)
    assert not graphs.fits([])
    assert not graphs.fits([_entry(3)] * (MAX_NUM_SEQS + 1))  # past the largest bucket
    assert not graphs.fits([_entry(3), _entry(0, num_tokens=4)])  # a prefill chunk
    assert not graphs.fits([_entry(3, num_tokens=1, is_sampling=False)])
    assert not graphs.fits([_entry(16)])  # a context past max_context
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks - 1  # scratch


@pytest.mark.slow
@pytest.mark.parametrize("arch, overrides, limits", [
    ("llama-gqa", {}, {}),
    ("qwen2-bias", {}, {"max_num_batched_tokens": 10}),  # chunked prefill beside decodes
    ("mistral", {"sliding_window": 8}, {}),
    ("llama-gqa", {}, {"num_blocks": 20}),  # preemption: recomputed, then decoded again
], ids=["llama", "chunked-qwen2", "mistral-window", "preemption"])
def test_greedy_decodes_through_the_graph_buffers_match_transformers(
        checkpoints, hf_greedy, arch, overrides, limits):
    """Requests of 5 to 12 tokens in 3 seats end at different steps, so decode steps of
    1 to 3 rows run, 3 padded to the bucket of 4; the padding rows write only the scratch
    block, and the outputs equal transformers' token for token."""
    prompts = make_prompts()
    engine = make_engine(checkpoints(arch, **overrides), max_num_seqs=NUM_SEATS, **limits)
    graphs = _attach(engine.runner.inner, engine)
    lengths = [GREEDY.max_tokens - i for i in range(len(prompts))]
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt,
                           params=dataclasses.replace(GREEDY, max_tokens=lengths[i]))
    outputs = run_all(engine)
    reference = hf_greedy(arch, prompts, **overrides)
    for i in range(len(prompts)):
        assert tokens_of(outputs[f"r{i}"]) == reference[i][:lengths[i]], f"prompt {i} diverged"
    assert graphs.replays[(4, False)] > 0, graphs.replays  # 3 rows, padded
    assert len({bucket for bucket, _ in graphs.replays}) >= 2, graphs.replays
    assert graphs.num_rows < sum(b * n for (b, _), n in graphs.replays.items())  # padded
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks - 1
    if "num_blocks" in limits:
        assert any(plan.preempted_ids for plan in engine.runner.plans)
    if "max_num_batched_tokens" in limits:  # mixed steps ran eagerly beside replays
        assert any(len(e.token_ids) > 1 for p in engine.runner.plans for e in p.scheduled)


@pytest.mark.slow
def test_adapter_and_base_rows_through_the_graph_buffers_match_peft(lora_suite, peft_reference):
    """Base rows beside adapter rows in one padded step, eight adapters in three slots
    (adapters are swapped into slots between steps): peft's tokens exactly."""
    base, adapters = lora_suite
    parts, digests = _engine(base, adapters, max_loras=3, max_cpu_loras=8,
                             max_num_seqs=NUM_SEATS)
    engine = parts.engine
    graphs = _attach(engine.runner, engine)
    installs = []
    planned = _requests(list(adapters) + [None], digests, 18)
    tokens = _run(engine, [(rid, digest, prompt) for rid, digest, prompt, _ in planned],
                  on_step=lambda e: installs.append(e.snapshot().adapter_counts["device"]))
    for rid, _, prompt, name in planned:
        assert tokens[rid] == peft_reference.greedy(name, prompt), f"{rid} on {name}"
    assert graphs.replays[(4, True)] > 0, graphs.replays  # adapter rows, padded
    parts.close()


def _run_emulated(lora_suite, num_requests: int, *, naive: bool) -> dict:
    """tests/engine/run_graphs_emulated.py in a process of its own (the interpreter has to
    be chosen before Triton is imported): its JSON line. The step runs as on a GPU, so
    without the CPU's native kernels (a recording sees aten ops and Triton launches only)."""
    base, adapters = lora_suite
    request = {"base": str(base), "adapters": {n: str(p) for n, p in adapters.items()},
               "num_requests": num_requests, "naive": naive}
    done = subprocess.run(
        [sys.executable, "-m", "tests.engine.run_graphs_emulated", json.dumps(request)],
        cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1", "LORAFLEET_CPU_NATIVE": "off"},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mismatches(result: dict, peft_reference) -> list[str]:
    return [rid for (rid, tokens), prompt in zip(result["tokens"].items(),
                                                  prompts(len(result["tokens"])), strict=True)
            if tokens != peft_reference.greedy(result["names"][rid], prompt)]


@pytest.mark.slow
def test_replays_with_other_adapters_than_at_capture_match_peft(lora_suite, peft_reference):
    """Decode steps captured once per bucket and replayed (graphs emulated on the CPU, the
    Triton kernels interpreted): eight adapters and the base model through three slots,
    so replays hold more distinct adapters than their capture did and slots change
    adapters between replays — peft's tokens exactly."""
    result = _run_emulated(lora_suite, 18, naive=False)
    assert _mismatches(result, peft_reference) == []
    assert result["replays"] > len(result["captures"]) > 0
    assert any(result["most_at_replay"].get(key, 0) > seen
               for key, seen in result["at_capture"].items()), result
    assert result["slot_swapped_between_replays"]


@pytest.mark.slow
def test_the_emulation_catches_lora_metadata_built_outside_the_graph(lora_suite,
                                                                      peft_reference):
    """The check above can fail: a runner that hands each step a LoRA batch built on the
    host (as eager steps do) replays the capture's slots, and tokens go wrong."""
    result = _run_emulated(lora_suite, 12, naive=True)
    assert _mismatches(result, peft_reference), "the emulated graphs missed a baked batch"


def test_a_captured_step_may_not_read_values_on_the_host_and_replays_on_new_values():
    static = torch.tensor([1.0, 2.0])
    recording = Recording()
    with torch.no_grad(), recording:
        doubled = static * 2
        total = torch.zeros(2).add_(doubled)
    static.copy_(torch.tensor([5.0, 7.0]))
    recording.replay()
    assert doubled.tolist() == [10.0, 14.0] and total.tolist() == [10.0, 14.0]
    for read in (lambda: static.sum().item(), lambda: torch.tensor([3.0]) + static,
                 lambda: static.nonzero()):
        with pytest.raises(HostDependenceError), torch.no_grad(), Recording():
            read()
