"""The LoRA suite (tiny base + eight adapters) and its peft reference, made once."""

from __future__ import annotations

import pytest

from tests.support.lora_suite import PeftReference, make_suite


@pytest.fixture(scope="session")
def lora_suite(tmp_path_factory):
    """(base checkpoint dir, {adapter name: PEFT dir})."""
    return make_suite(tmp_path_factory.mktemp("lora-suite"))


@pytest.fixture(scope="session")
def peft_reference(lora_suite):
    """Greedy references from peft on transformers."""
    base, adapters = lora_suite
    return PeftReference(base, adapters)
