"""Adapters that change only some projections of a fused group (q|k|v, gate|up), batched
together, token for token against peft on transformers (float32, greedy)."""

from __future__ import annotations

import pytest

from lorafleet.dataplane.lora import slots as slots_module
from tests.lora.test_engine_lora import _engine, _run
from tests.support.lora_suite import PeftReference, prompts
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint

# name -> make_adapter options; each leaves part of a fused group alone, some with ranks
# that differ between the projections of one group.
SPECS = {
    "t/up8": dict(r=8, alpha=16, target_modules=["up_proj"]),
    "t/gate-down16": dict(r=16, alpha=16, target_modules=["gate_proj", "down_proj"]),
    "t/kv-mixed": dict(r=16, alpha=16, target_modules=["k_proj", "v_proj"],
                       rank_pattern={"v_proj": 4}, alpha_pattern={"k_proj": 8}),
    "t/qk-gate": dict(r=8, alpha=32, target_modules=["q_proj", "k_proj", "gate_proj"]),
}


@pytest.fixture(scope="module")
def partial_suite(tmp_path_factory):
    """(base checkpoint, {name: adapter dir}, peft reference)."""
    root = tmp_path_factory.mktemp("fused-groups")
    base = make_checkpoint(root / "base", "llama-gqa")
    adapters = {name: make_adapter(base, root / name.replace("/", "__"), seed=i, **spec)
                for i, (name, spec) in enumerate(SPECS.items())}
    return base, adapters, PeftReference(base, adapters)


def test_partial_groups_in_one_batch_match_peft(partial_suite, monkeypatch):
    base, adapters, reference = partial_suite
    parts, digests = _engine(base, adapters, max_loras=4, max_cpu_loras=4)
    calls = []
    original = slots_module.add_lora

    def counting_add_lora(y, x, buffers, **kwargs):
        calls.append(buffers.num_slices)
        original(y, x, buffers, **kwargs)

    monkeypatch.setattr(slots_module, "add_lora", counting_add_lora)
    names = [*adapters, None]
    planned = [(f"r{i}", names[i % len(names)], prompt) for i, prompt in enumerate(prompts(10))]
    tokens = _run(parts.engine, [(rid, digests.get(name), prompt) for rid, name, prompt in planned])
    for rid, name, prompt in planned:
        assert tokens[rid] == reference.greedy(name, prompt), f"{rid} on {name}"
    # One kernel call per layer and group: q|k|v (3 slices), o, gate|up (2), down.
    num_layers = parts.engine.runner.model.config.num_layers
    assert calls[:4 * num_layers] == [3, 1, 2, 1] * num_layers
    parts.close()


def test_adapters_change_their_projections_only(partial_suite):
    """The suite is meaningful: every adapter changes the base model's greedy tokens."""
    _, adapters, reference = partial_suite
    prompt = prompts(1)[0]
    base_tokens = reference.greedy(None, prompt)
    assert all(reference.greedy(name, prompt) != base_tokens for name in adapters)
