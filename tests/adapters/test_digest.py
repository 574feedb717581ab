"""The digest is the adapter version's identity: stable for the same math, new for new math."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file, save_file

from lorafleet.dataplane.adapters.loader import load_adapter
from tests.adapters.conftest import copy_adapter, first_key


def digest(adapter_dir, model_config) -> str:
    return load_adapter(str(adapter_dir), model_config, max_lora_rank=16).digest


def test_digest_is_hex_sha256_and_stable_across_loads_and_copies(
    plain_adapter, model_config, tmp_path
):
    first = digest(plain_adapter, model_config)
    assert len(first) == 64 and int(first, 16) >= 0
    assert digest(plain_adapter, model_config) == first
    copied = shutil.copytree(plain_adapter, tmp_path / "elsewhere" / "copy")
    assert digest(copied, model_config) == first


def test_digest_ignores_file_layout(plain_adapter, model_config, tmp_path):
    """Tensor order, safetensors metadata and training-only options leave it unchanged."""
    tensors = load_file(plain_adapter / "adapter_model.safetensors")
    relaid = copy_adapter(plain_adapter, tmp_path / "relaid", config_changes={"lora_dropout": 0.3})
    reordered = dict(reversed(list(tensors.items())))
    save_file(reordered, relaid / "adapter_model.safetensors", metadata={"note": "re-saved"})
    transposed = copy_adapter(
        plain_adapter,
        tmp_path / "fifo",
        config_changes={"fan_in_fan_out": True},
        tensors_fn=lambda t: {k: v.T for k, v in t.items()},
    )
    original = digest(plain_adapter, model_config)
    assert digest(relaid, model_config) == original
    assert digest(transposed, model_config) == original


def test_equal_values_stored_in_bf16_or_fp32_share_a_digest(plain_adapter, model_config, tmp_path):
    def rounded(tensors):
        return {k: v.to(torch.bfloat16).to(torch.float32) for k, v in tensors.items()}

    as_fp32 = copy_adapter(plain_adapter, tmp_path / "fp32", tensors_fn=rounded)
    as_bf16 = copy_adapter(
        plain_adapter,
        tmp_path / "bf16",
        tensors_fn=lambda t: {k: v.to(torch.bfloat16) for k, v in t.items()},
    )
    assert digest(as_fp32, model_config) == digest(as_bf16, model_config)
    assert digest(as_fp32, model_config) != digest(plain_adapter, model_config)


def test_digest_changes_with_a_weight_or_the_scale(plain_adapter, model_config, tmp_path):
    def nudge(tensors):
        tensors[first_key(tensors, "layers.1.self_attn.v_proj.lora_A")][3, 7] += 1e-3
        return tensors

    variants = [
        copy_adapter(plain_adapter, tmp_path / "weight", tensors_fn=nudge),
        copy_adapter(plain_adapter, tmp_path / "alpha", config_changes={"lora_alpha": 9}),
        copy_adapter(plain_adapter, tmp_path / "rslora", config_changes={"use_rslora": True}),
        copy_adapter(
            plain_adapter, tmp_path / "pattern", config_changes={"alpha_pattern": {"v_proj": 2}}
        ),
    ]
    digests = {digest(plain_adapter, model_config), *(digest(v, model_config) for v in variants)}
    assert len(digests) == 1 + len(variants)
