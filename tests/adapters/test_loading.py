"""Loaded adapters add exactly the delta PEFT merges into the base weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft import PeftModel

from lorafleet.dataplane.adapters.loader import load_adapter, validate_adapter
from lorafleet.dataplane.model.config import PROJECTIONS, ModelConfig
from tests.adapters.conftest import copy_adapter
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint

ALL = list(PROJECTIONS)
CASES = {
    "plain": dict(r=4, alpha=4, target_modules=["q_proj", "v_proj"]),
    "alpha_not_r": dict(r=8, alpha=32, target_modules=["k_proj", "o_proj", "down_proj"]),
    "rslora": dict(r=16, alpha=8, target_modules=["q_proj", "up_proj"], use_rslora=True),
    "patterns": dict(
        r=4,
        alpha=8,
        target_modules=ALL,
        rank_pattern={"q_proj": 8, "layers.1.mlp.down_proj": 2},
        alpha_pattern={"v_proj": 3},
    ),
    "all_linear": dict(r=4, alpha=16, target_modules="all-linear"),
}


def peft_deltas(base_dir, adapter_dir) -> dict[tuple[int, str], torch.Tensor]:
    """merge_and_unload() weight minus base weight, per (layer, projection)."""
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()
    deltas = {}
    for layer in range(base.config.num_hidden_layers):
        for proj in PROJECTIONS:
            parent = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"model.layers.{layer}.{parent}.{proj}.weight"
            deltas[(layer, proj)] = merged[key] - before[key]
    return deltas


def our_deltas(adapter, num_layers) -> dict[tuple[int, str], torch.Tensor | None]:
    """scale * B @ A from the loaded adapter (None where it changes nothing)."""
    out = {}
    for layer in range(num_layers):
        for proj in PROJECTIONS:
            w = adapter.weights(layer, proj)
            out[(layer, proj)] = None if w is None else w.scale * (w.b.float() @ w.a.float())
    return out


def assert_same_math(adapter, expected):
    ours = our_deltas(adapter, 2)
    for key, delta in expected.items():
        if ours[key] is None:
            assert torch.count_nonzero(delta) == 0, f"{key}: PEFT changes it, the loader does not"
        else:
            torch.testing.assert_close(ours[key], delta, rtol=1e-5, atol=1e-6, msg=str(key))
    assert any(d is not None for d in ours.values())


@pytest.mark.parametrize("case", sorted(CASES))
def test_delta_matches_peft_merge(case, base_dir, model_config, tmp_path):
    adapter_dir = make_adapter(base_dir, tmp_path / case, seed=3, **CASES[case])
    adapter = load_adapter(str(adapter_dir), model_config, max_lora_rank=16)
    assert_same_math(adapter, peft_deltas(base_dir, adapter_dir))
    for (_, proj), weights in adapter.modules.items():
        in_features, out_features = model_config.projection_shapes()[proj]
        assert weights.a.shape == (weights.rank, in_features)
        assert weights.b.shape == (out_features, weights.rank)


def test_patterns_set_rank_and_scale_per_module(base_dir, model_config, tmp_path):
    adapter_dir = make_adapter(base_dir, tmp_path / "p", seed=1, **CASES["patterns"])
    adapter = load_adapter(str(adapter_dir), model_config, max_lora_rank=16)
    assert adapter.weights(0, "q_proj").rank == 8 and adapter.weights(0, "q_proj").scale == 1.0
    assert (
        adapter.weights(1, "down_proj").rank == 2 and adapter.weights(1, "down_proj").scale == 4.0
    )
    assert adapter.weights(0, "down_proj").rank == 4
    assert adapter.weights(1, "v_proj").scale == 0.75
    assert adapter.rank == 8
    assert adapter.target_modules == tuple(PROJECTIONS)


def test_rslora_scale_is_alpha_over_sqrt_r(base_dir, model_config, tmp_path):
    adapter_dir = make_adapter(base_dir, tmp_path / "rs", **CASES["rslora"])
    adapter = load_adapter(str(adapter_dir), model_config, max_lora_rank=16)
    assert adapter.weights(0, "q_proj").scale == 2.0  # 8 / sqrt(16), not 8 / 16


def test_fan_in_fan_out_file_is_transposed_back(base_dir, model_config, plain_adapter, tmp_path):
    flipped = copy_adapter(
        plain_adapter,
        tmp_path / "fifo",
        config_changes={"fan_in_fan_out": True},
        tensors_fn=lambda t: {k: v.T for k, v in t.items()},
    )
    adapter = load_adapter(str(flipped), model_config, max_lora_rank=16)
    assert_same_math(adapter, peft_deltas(base_dir, plain_adapter))


def test_dtype_and_size(model_config, plain_adapter):
    adapter = load_adapter(str(plain_adapter), model_config, max_lora_rank=8, dtype=torch.bfloat16)
    weights = adapter.weights(1, "v_proj")
    assert weights.a.dtype == weights.b.dtype == torch.bfloat16
    assert isinstance(weights.scale, float) and weights.scale == 2.0
    # q: A 4x64 + B 64x4; v: A 4x64 + B 32x4 (2 kv heads of 16); 2 layers; 2 bytes each
    assert adapter.num_parameters == 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)
    assert adapter.size_bytes == adapter.num_parameters * 2
    assert adapter.weights(0, "k_proj") is None


def test_validate_reports_a_good_adapter(model_config, plain_adapter, base_dir):
    report = validate_adapter(
        str(plain_adapter), model_config, max_lora_rank=8, dtype=torch.float16
    )
    loaded = load_adapter(str(plain_adapter), model_config, max_lora_rank=8)
    assert report.is_valid and report.reasons == ()
    assert report.digest == loaded.digest
    assert report.rank == 4 and report.target_modules == ("q_proj", "v_proj")
    assert report.base_model_name_or_path == str(base_dir)
    assert report.size_bytes == loaded.num_parameters * 2


@pytest.mark.parametrize(
    "targets",
    [r".*\.(q_proj|v_proj)", ["self_attn.q_proj", "model.layers.0.self_attn.v_proj", "v_proj"]],
    ids=["regex", "suffixes"],
)
def test_target_modules_forms_select_the_same_modules(
    targets, model_config, plain_adapter, tmp_path
):
    original = load_adapter(str(plain_adapter), model_config, max_lora_rank=8)
    renamed = copy_adapter(
        plain_adapter, tmp_path / "t", config_changes={"target_modules": targets}
    )
    adapter = load_adapter(str(renamed), model_config, max_lora_rank=8)
    assert adapter.digest == original.digest
    assert sorted(adapter.modules) == sorted(original.modules)


def test_all_linear_shorthand_and_exclude_modules(base_dir, model_config, tmp_path):
    expanded = make_adapter(base_dir, tmp_path / "all", r=2, alpha=4, target_modules="all-linear")
    shorthand = copy_adapter(
        expanded, tmp_path / "short", config_changes={"target_modules": "all-linear"}
    )
    adapter = load_adapter(str(shorthand), model_config, max_lora_rank=8)
    assert adapter.target_modules == tuple(PROJECTIONS) and len(adapter.modules) == 14
    excluded = copy_adapter(
        expanded,
        tmp_path / "ex",
        config_changes={"target_modules": "all-linear", "exclude_modules": ["o_proj"]},
        tensors_fn=lambda t: {k: v for k, v in t.items() if "o_proj" not in k},
    )
    adapter = load_adapter(str(excluded), model_config, max_lora_rank=8)
    assert "o_proj" not in adapter.target_modules and len(adapter.modules) == 12


@pytest.mark.parametrize("arch", ["qwen2-bias", "mistral"])
def test_other_llama_family_architectures(arch, tmp_path):
    base = make_checkpoint(tmp_path / arch, arch)
    adapter_dir = make_adapter(base, tmp_path / "a", r=4, alpha=8, target_modules="all-linear")
    adapter = load_adapter(str(adapter_dir), ModelConfig.from_dir(base), max_lora_rank=8)
    assert_same_math(adapter, peft_deltas(base, adapter_dir))
    assert len(adapter.modules) == 14
