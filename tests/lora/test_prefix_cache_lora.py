"""Prefix caching with adapters: requests on the same weights share a system prompt's
blocks, other weights (another adapter, the base model) never do, and every greedy token
still equals peft's on transformers — adapter rows and base rows in the same steps."""

from __future__ import annotations

import time

from tests.lora.test_engine_lora import GREEDY, _engine

SYSTEM = [10 + (j * 31) % 340 for j in range(26)]  # 6 full blocks of 4, and 2 tokens
NAMES = ("acme/qv8", "acme/all16", "beta/mlp-rslora", None)


def _wave(engine, jobs, digests, wave):
    """Runs (name, prompt) jobs together to the end: {job index: final output and tokens}."""
    for i, (name, prompt) in enumerate(jobs):
        engine.add_request(f"w{wave}-{i}", prompt, params=GREEDY, adapter=digests.get(name))
    tokens, finals = {}, {}
    deadline = time.monotonic() + 120
    while engine.has_unfinished():
        assert time.monotonic() < deadline, "engine made no progress"
        outputs = engine.step()
        for out in outputs:
            index = int(out.request_id.split("-")[1])
            tokens.setdefault(index, []).extend(out.new_token_ids)
            if out.is_finished:
                finals[index] = out
        if not outputs:
            time.sleep(0.002)  # a background adapter load is under way
    return tokens, finals


def test_adapter_and_base_rows_share_only_their_own_weights_prefix(lora_suite, peft_reference):
    base, adapters = lora_suite
    parts, digests = _engine(base, adapters, max_loras=4, max_cpu_loras=8)
    engine = parts.engine
    jobs = [(name, SYSTEM + [300 + i, 301 + i, 302 + (i * 5) % 40][: 1 + i % 3])
            for i, name in enumerate(NAMES * 2)]
    # First wave: one request per weights computes the system prompt; then the rest share.
    first, _ = _wave(engine, jobs[:len(NAMES)], digests, 0)
    tokens, finals = _wave(engine, jobs, digests, 1)
    for i, (name, prompt) in enumerate(jobs):
        assert tokens[i] == peft_reference.greedy(name, prompt), f"job {i} on {name}"
        # A repeat of the first wave takes every full block before its last token; a new
        # tail, the 6 blocks of its weights' system prompt.
        expected = (len(prompt) - 1) // 4 * 4 if i < len(NAMES) else 24
        assert finals[i].usage.num_cached_tokens == expected, f"job {i} on {name}"
    for i, (name, prompt) in enumerate(jobs[:len(NAMES)]):
        assert first[i] == peft_reference.greedy(name, prompt)
    parts.close()


def test_a_prompt_cached_on_one_adapter_is_computed_again_on_another(lora_suite,
                                                                      peft_reference):
    base, adapters = lora_suite
    parts, digests = _engine(base, adapters, max_loras=4, max_cpu_loras=8)
    engine = parts.engine
    prompt = SYSTEM + [301]
    for wave, name in enumerate(NAMES):  # one after another: each could reuse the last
        tokens, finals = _wave(engine, [(name, prompt)], digests, wave)
        assert finals[0].usage.num_cached_tokens == 0, name
        assert tokens[0] == peft_reference.greedy(name, prompt), name
    parts.close()
