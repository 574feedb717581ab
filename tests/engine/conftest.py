"""Tiny checkpoints and their transformers references, made once per test session."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import make_checkpoint

# Prompt lengths differ so decodes and prefills of several sizes share steps.
PROMPT_LENGTHS = (3, 7, 12, 18, 25, 31, 36, 44)
NUM_NEW_TOKENS = 12


def make_prompts(lengths=PROMPT_LENGTHS) -> list[list[int]]:
    """Deterministic prompts of the given lengths over ordinary (non-special) token ids."""
    return [[10 + (i * 37 + j * 11) % 350 for j in range(n)] for i, n in enumerate(lengths)]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> directory of a tiny float32 checkpoint, generated on first use."""
    made = {}

    def get(arch: str, **overrides):
        key = (arch, repr(sorted(overrides.items())))
        if key not in made:
            directory = tmp_path_factory.mktemp(arch)
            made[key] = make_checkpoint(directory, arch, **overrides)
        return made[key]

    return get


@pytest.fixture(scope="session")
def hf_greedy(checkpoints):
    """(arch, prompt index) -> transformers' greedy continuation, stopping at EOS."""
    import torch
    import transformers

    cache = {}

    def get(arch: str, prompts: list[list[int]], **overrides) -> list[list[int]]:
        key = (arch, repr(prompts), repr(sorted(overrides.items())))
        if key not in cache:
            directory = checkpoints(arch, **overrides)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                directory, dtype=torch.float32)
            cache[key] = [_generate(model, p) for p in prompts]
        return cache[key]

    return get


def _generate(model, prompt: list[int]) -> list[int]:
    import torch

    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=NUM_NEW_TOKENS, do_sample=False, pad_token_id=0,
    )
    return out[0, len(prompt):].tolist()
