"""Greedy decoding matches transformers token for token, however the batch is cut."""

from __future__ import annotations

import pytest

from tests.engine.conftest import make_prompts
from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of

ARCHS = ("llama-gqa", "qwen2-bias", "llama-tied")


def _submit_all(engine, prompts):
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params=GREEDY)


def _assert_matches(engine, prompts, reference):
    outputs = run_all(engine)
    for i in range(len(prompts)):
        assert tokens_of(outputs[f"r{i}"]) == reference[i], f"prompt {i} diverged"
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_concurrent_prompts_match_transformers(arch, checkpoints, hf_greedy):
    prompts = make_prompts()
    engine = make_engine(checkpoints(arch))
    _submit_all(engine, prompts)
    _assert_matches(engine, prompts, hf_greedy(arch, prompts))
    # All eight ran together: some step decoded several sequences at once.
    assert max(len(plan.scheduled) for plan in engine.runner.plans) == len(prompts)


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_keeps_outputs_identical(arch, checkpoints, hf_greedy):
    prompts = make_prompts()
    # 16 blocks of 4 tokens: the longest request (44 + 12 tokens) fits alone, not all 8.
    engine = make_engine(checkpoints(arch), num_blocks=16)
    _submit_all(engine, prompts)
    _assert_matches(engine, prompts, hf_greedy(arch, prompts))
    assert any(plan.preempted_ids for plan in engine.runner.plans)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_keeps_outputs_identical(arch, checkpoints, hf_greedy):
    prompts = make_prompts()
    engine = make_engine(checkpoints(arch), max_num_batched_tokens=10)
    _submit_all(engine, prompts)
    _assert_matches(engine, prompts, hf_greedy(arch, prompts))
    chunks = [e for plan in engine.runner.plans for e in plan.scheduled if not e.is_sampling]
    assert chunks, "no prompt was prefilled in chunks"
    mixed = [p for p in engine.runner.plans
             if {len(e.token_ids) == 1 for e in p.scheduled} == {True, False}]
    assert mixed, "no step mixed a prefill chunk with decodes"


def test_mistral_sliding_window_and_llama3_rope_match_transformers(checkpoints, hf_greedy):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    prompts = make_prompts((5, 23, 40))
    cases = (("mistral", {"sliding_window": 8}), ("llama-gqa", {"rope_scaling": rope}))
    for arch, overrides in cases:
        reference = hf_greedy(arch, prompts, **overrides)
        # The window and the scaling change the outputs, so matching them means something.
        assert reference != hf_greedy(arch, prompts)
        for limits in ({}, {"max_num_batched_tokens": 10}):
            engine = make_engine(checkpoints(arch, **overrides), **limits)
            _submit_all(engine, prompts)
            _assert_matches(engine, prompts, reference)
