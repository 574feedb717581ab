"""Prefix caching changes no token: with caching on, greedy outputs still equal
transformers' token for token, while later requests take earlier ones' blocks — across
shared prefixes, chunked prefill, and preemption and eviction under memory pressure."""

from __future__ import annotations

import pytest

from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of

ARCH = "llama-gqa"
SYSTEM = [10 + (j * 29) % 340 for j in range(22)]  # 5 full blocks of 4, and 2 tokens


def _prompts() -> list[list[int]]:
    """Prompts over one shared system prompt (tails of 1 to 9 tokens), a prompt that ends
    inside it, one that ends on a block boundary, and one sharing nothing."""
    tails = [[200 + (i * 13 + j * 7) % 100 for j in range(1 + i % 9)] for i in range(6)]
    return [SYSTEM + tail for tail in tails] + [SYSTEM[:13], SYSTEM[:16], [11, 12, 13, 14, 15]]


def _run_waves(engine, prompts, waves=2):
    """Sends every prompt once per wave, a wave after the previous one finished; returns
    the outputs of each wave, by prompt index."""
    results = []
    for wave in range(waves):
        for i, prompt in enumerate(prompts):
            engine.add_request(f"w{wave}-{i}", prompt, params=GREEDY)
        outputs = run_all(engine)
        results.append([outputs[f"w{wave}-{i}"] for i in range(len(prompts))])
    return results


def _cached(outputs) -> int:
    return outputs[-1].usage.num_cached_tokens


@pytest.mark.parametrize("limits", [{}, {"max_num_batched_tokens": 10}], ids=["whole", "chunked"])
def test_shared_prefixes_match_transformers_with_caching_on(limits, checkpoints, hf_greedy):
    prompts = _prompts()
    reference = hf_greedy(ARCH, prompts)
    engine = make_engine(checkpoints(ARCH), prefix_cache_scope="tenant", **limits)
    for wave in _run_waves(engine, prompts):
        assert [tokens_of(outputs) for outputs in wave] == reference
    first = _run_waves(engine, prompts, waves=1)[0]
    # Everything is cached by now: each prompt takes every full block before its last token.
    assert [_cached(o) for o in first] == [(len(p) - 1) // 4 * 4 for p in prompts]
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_preemption_and_eviction_keep_outputs_identical(checkpoints, hf_greedy):
    prompts = _prompts()
    reference = hf_greedy(ARCH, prompts)
    # 16 blocks of 4 tokens: a request of 31 + 12 tokens fits alone, not all nine at once.
    engine = make_engine(checkpoints(ARCH), num_blocks=16, prefix_cache_scope="tenant")
    waves = _run_waves(engine, prompts)
    for wave in waves:
        assert [tokens_of(outputs) for outputs in wave] == reference
    plans = engine.runner.plans
    assert any(plan.preempted_ids for plan in plans)
    assert any(_cached(o) for wave in waves for o in wave)
    # Under this pressure cached blocks were handed out again: later prompts found less.
    assert [_cached(o) for o in waves[1]] != [(len(p) - 1) // 4 * 4 for p in prompts]
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_caching_off_computes_every_prompt_whole(checkpoints, hf_greedy):
    prompts = _prompts()
    engine = make_engine(checkpoints(ARCH))
    for wave in _run_waves(engine, prompts):
        assert [tokens_of(outputs) for outputs in wave] == hf_greedy(ARCH, prompts)
        assert not any(_cached(o) for o in wave)
