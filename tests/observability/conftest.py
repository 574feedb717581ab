"""Fixtures for the observability tests."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import make_checkpoint


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory):
    """A tiny Llama checkpoint (no adapters: quicker than the LoRA suite)."""
    return make_checkpoint(tmp_path_factory.mktemp("observability") / "base")
