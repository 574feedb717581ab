"""Tiny base checkpoints and PEFT adapters shared by the adapter tests (built once per session)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorafleet.dataplane.model.config import ModelConfig
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny Llama (GQA) checkpoint: hidden 64, intermediate 128, 2 layers."""
    return make_checkpoint(tmp_path_factory.mktemp("base") / "llama", "llama-gqa")


@pytest.fixture(scope="session")
def model_config(base_dir) -> ModelConfig:
    """The base checkpoint's config."""
    return ModelConfig.from_dir(base_dir)


@pytest.fixture(scope="session")
def plain_adapter(base_dir, tmp_path_factory) -> pathlib.Path:
    """r=4, alpha=8 on q_proj and v_proj."""
    out = tmp_path_factory.mktemp("adapters") / "plain"
    return make_adapter(base_dir, out, r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def copy_adapter(src: pathlib.Path, dst: pathlib.Path, *, config_changes=None, tensors_fn=None):
    """Copies an adapter directory, optionally editing its config and tensors."""
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "adapter_config.json").read_text())
    config.update(config_changes or {})
    (dst / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(src / "adapter_model.safetensors")
    if tensors_fn is not None:
        tensors = tensors_fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "adapter_model.safetensors")
    return dst


def first_key(tensors: dict[str, torch.Tensor], fragment: str) -> str:
    """The first tensor name (sorted) containing `fragment`."""
    return next(k for k in sorted(tensors) if fragment in k)
