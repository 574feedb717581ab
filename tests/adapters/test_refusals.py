"""Every unsupported or broken adapter is refused with a message naming the problem."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from lorafleet.dataplane.adapters import AdapterInvalid, BaseModelMismatch
from lorafleet.dataplane.adapters.loader import load_adapter, validate_adapter
from lorafleet.dataplane.adapters.modules import ModuleRef, describe_modules
from lorafleet.dataplane.model.config import ModelConfig
from tests.adapters.conftest import copy_adapter, first_key
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint


def refusal(adapter_dir, model_config, *, max_lora_rank=16, dtype=torch.float32):
    """The error load_adapter raises; also checks validate_adapter gives the same reasons."""
    with pytest.raises(AdapterInvalid) as info:
        load_adapter(str(adapter_dir), model_config, max_lora_rank=max_lora_rank, dtype=dtype)
    report = validate_adapter(
        str(adapter_dir), model_config, max_lora_rank=max_lora_rank, dtype=dtype
    )
    assert not report.is_valid
    assert report.reasons == info.value.reasons
    assert report.is_base_model_mismatch == isinstance(info.value, BaseModelMismatch)
    return info.value


def test_pickled_bin_weights_are_refused(plain_adapter, model_config, tmp_path):
    target = tmp_path / "bin"
    target.mkdir()
    (target / "adapter_config.json").write_text((plain_adapter / "adapter_config.json").read_text())
    torch.save(load_file(plain_adapter / "adapter_model.safetensors"), target / "adapter_model.bin")
    error = refusal(target, model_config)
    assert "adapter_model.bin" in str(error) and "pickle" in str(error)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), "modules_to_save"),
        (dict(target_modules=["q_proj", "embed_tokens"]), "embed"),
        (dict(target_modules=["lm_head"]), "lm_head"),
        (dict(target_modules=["q_proj"], use_dora=True), "DoRA"),
        (dict(target_modules=["q_proj"], layers_to_transform=[0]), "layers_to_transform"),
        (dict(target_modules=["q_proj"], bias="lora_only"), "bias='lora_only'"),
    ],
    ids=["modules_to_save", "embedding", "lm_head", "dora", "layers_to_transform", "bias"],
)
def test_unsupported_peft_features_are_refused(options, expected, base_dir, model_config, tmp_path):
    adapter_dir = make_adapter(base_dir, tmp_path / "a", r=4, alpha=8, **options)
    error = refusal(adapter_dir, model_config)
    assert not isinstance(error, BaseModelMismatch)
    assert any(expected in reason for reason in error.reasons), error.reasons


def test_max_lora_rank_must_be_positive(plain_adapter, model_config):
    with pytest.raises(ValueError, match="max_lora_rank must be a positive integer, got 0"):
        load_adapter(str(plain_adapter), model_config, max_lora_rank=0)


def test_rank_above_max_lora_rank(plain_adapter, model_config):
    error = refusal(plain_adapter, model_config, max_lora_rank=2)
    assert "max_lora_rank 2" in str(error) and "rank up to 4" in str(error)
    report = validate_adapter(str(plain_adapter), model_config, max_lora_rank=2)
    assert report.rank == 4 and report.target_modules == ("q_proj", "v_proj")  # described
    assert report.digest is None  # but no data past the limit is read


def test_adapter_for_another_hidden_size_is_a_base_model_mismatch(tmp_path, model_config):
    other_base = make_checkpoint(
        tmp_path / "small", "llama-gqa", hidden_size=32, intermediate_size=64
    )
    adapter_dir = make_adapter(
        other_base, tmp_path / "a", r=4, alpha=8, target_modules=["q_proj", "down_proj"]
    )
    error = refusal(adapter_dir, model_config)
    assert isinstance(error, BaseModelMismatch)
    assert "q_proj of layers 0, 1: lora_A has shape [4, 32], expected [4, 64]" in str(error)
    assert "down_proj of layers 0, 1: lora_A has shape [4, 64], expected [4, 128]" in str(error)


def test_adapter_for_another_architecture_is_a_base_model_mismatch(tmp_path, model_config):
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=384, n_positions=64)
    gpt2 = get_peft_model(
        transformers.GPT2LMHeadModel(config),
        LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"),
    )
    gpt2.save_pretrained(tmp_path / "gpt2-adapter")
    error = refusal(tmp_path / "gpt2-adapter", model_config)
    assert isinstance(error, BaseModelMismatch)
    assert "'c_attn' matches no q/k/v/o/gate/up/down projection" in str(error)
    assert "'transformer.h.N.attn.c_attn', which is not a q/k/v/o/gate/up/down" in str(error)


def test_recorded_base_model_class_must_match(plain_adapter, model_config, tmp_path):
    changed = copy_adapter(
        plain_adapter,
        tmp_path / "a",
        config_changes={
            "task_type": None,
            "auto_mapping": {"base_model_class": "Qwen2ForCausalLM", "parent_library": "x"},
        },
    )
    error = refusal(changed, model_config)
    assert isinstance(error, BaseModelMismatch)
    assert "trained on a Qwen2ForCausalLM, the base model is a LlamaForCausalLM" in str(error)


def test_nan_and_infinite_values_are_refused(plain_adapter, model_config, tmp_path):
    def poison(tensors):
        tensors[first_key(tensors, "layers.1.self_attn.v_proj.lora_B")][0, 0] = math.nan
        tensors[first_key(tensors, "layers.0.self_attn.q_proj.lora_A")][2, 1] = -math.inf
        return tensors

    error = refusal(copy_adapter(plain_adapter, tmp_path / "nan", tensors_fn=poison), model_config)
    assert error.reasons == (
        "q_proj of layer 0: lora_A holds NaN or infinite values",
        "v_proj of layer 1: lora_B holds NaN or infinite values",
    )


def test_values_that_overflow_the_load_dtype_are_refused(plain_adapter, model_config, tmp_path):
    def inflate(tensors):
        tensors[first_key(tensors, "layers.0.self_attn.q_proj.lora_A")][1, 2] = 1e6
        return tensors

    big = copy_adapter(plain_adapter, tmp_path / "big", tensors_fn=inflate)
    assert load_adapter(str(big), model_config, max_lora_rank=8).weights(0, "q_proj").a[1, 2] == 1e6
    error = refusal(big, model_config, dtype=torch.float16)
    assert "q_proj of layer 0: lora_A has values beyond the range of torch.float16" in str(error)


def test_keys_matching_nothing_are_refused(plain_adapter, model_config, tmp_path):
    def rename(tensors):
        key = first_key(tensors, "layers.0.self_attn.q_proj.lora_A")
        tensors[key.replace("q_proj", "qkv_proj")] = tensors.pop(key)
        return tensors

    error = refusal(copy_adapter(plain_adapter, tmp_path / "r", tensors_fn=rename), model_config)
    assert "module 'model.layers.N.self_attn.qkv_proj', which is not a q/k/v/o" in str(error)
    assert "q_proj of layer 0: has lora_B but no lora_A" in str(error)


def test_target_entry_matching_nothing_is_refused(plain_adapter, model_config, tmp_path):
    changed = copy_adapter(
        plain_adapter, tmp_path / "t", config_changes={"target_modules": ["q_proj", "v_proj", "wq"]}
    )
    error = refusal(changed, model_config)
    assert error.reasons == (
        "target_modules entry 'wq' matches no q/k/v/o/gate/up/down projection of the base model",
    )


def test_weights_outside_target_modules_are_refused(plain_adapter, model_config, tmp_path):
    changed = copy_adapter(
        plain_adapter, tmp_path / "t", config_changes={"target_modules": ["q_proj"]}
    )
    error = refusal(changed, model_config)
    assert error.reasons == (
        "v_proj of layers 0, 1: has weights, but target_modules does not select it",
    )


def test_targeted_modules_without_weights_are_refused(plain_adapter, model_config, tmp_path):
    def drop(tensors):
        return {k: v for k, v in tensors.items() if "layers.1.self_attn.q_proj" not in k}

    error = refusal(copy_adapter(plain_adapter, tmp_path / "d", tensors_fn=drop), model_config)
    assert error.reasons == (
        "q_proj of layer 1: is selected by target_modules, but the file has no weights for it",
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported"),
        ({"some_future_option": {"on": True}}, "PEFT option some_future_option="),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({"r": 0}, "r must be a positive integer"),
        ({"task_type": "SEQ_CLS"}, "task_type 'SEQ_CLS'"),
    ],
    ids=["ia3", "unknown_option", "pissa", "zero_rank", "seq_cls"],
)
def test_config_refusals(changes, expected, plain_adapter, model_config, tmp_path):
    error = refusal(
        copy_adapter(plain_adapter, tmp_path / "c", config_changes=changes), model_config
    )
    assert any(expected in reason for reason in error.reasons), error.reasons


def test_every_reason_is_collected(plain_adapter, model_config, tmp_path):
    def reshape(tensors):
        key = first_key(tensors, "layers.0.self_attn.v_proj.lora_B")
        tensors[key] = torch.zeros(16, 4)
        return tensors

    broken = copy_adapter(
        plain_adapter,
        tmp_path / "many",
        tensors_fn=reshape,
        config_changes={
            "bias": "all",
            "use_dora": True,
            "target_modules": ["q_proj", "v_proj", "lm_head"],
        },
    )
    error = refusal(broken, model_config)
    text = "\n".join(error.reasons)
    for fragment in (
        "bias='all'",
        "DoRA",
        "LoRA on lm_head",
        "lora_B has shape [16, 4], expected [32, 4]",
    ):
        assert fragment in text
    assert len(error.reasons) == 4
    assert not isinstance(error, BaseModelMismatch)


def test_missing_config_and_fp64_weights(plain_adapter, model_config, tmp_path):
    no_config = copy_adapter(plain_adapter, tmp_path / "nc")
    (no_config / "adapter_config.json").unlink()
    assert "adapter_config.json is missing" in str(refusal(no_config, model_config))
    wide = copy_adapter(
        plain_adapter, tmp_path / "f64", tensors_fn=lambda t: {k: v.double() for k, v in t.items()}
    )
    assert "dtype F64" in str(refusal(wide, model_config))
    (tmp_path / "nc" / "adapter_config.json").write_text(json.dumps({"r": 4}))
    assert "target_modules is missing" in str(refusal(no_config, model_config))


def test_another_model_config_is_checked_not_trusted(plain_adapter, base_dir):
    """The base model named in the adapter config plays no part; the given config decides."""
    named = json.loads((plain_adapter / "adapter_config.json").read_text())
    assert named["base_model_name_or_path"] == str(base_dir)
    smaller = json.loads((base_dir / "config.json").read_text())
    smaller["num_hidden_layers"] = 1
    error = refusal(plain_adapter, ModelConfig.from_dict(smaller))
    assert isinstance(error, BaseModelMismatch)
    assert "weights for layer 1, but the base model has 1 layers" in str(error)


def test_corrupt_weights_file_is_refused(plain_adapter, model_config, tmp_path):
    truncated = copy_adapter(plain_adapter, tmp_path / "trunc")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[:-64])
    assert "adapter_model.safetensors is corrupt" in str(refusal(truncated, model_config))
    (truncated / "adapter_model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    assert "malformed header" in str(refusal(truncated, model_config))


@pytest.mark.parametrize(
    "changes",
    [{"target_modules": "(q_proj"}, {"rank_pattern": {"q_proj[": 8}}],
    ids=["target_regex", "pattern_key"],
)
def test_invalid_regexes_are_refused(changes, plain_adapter, model_config, tmp_path):
    error = refusal(
        copy_adapter(plain_adapter, tmp_path / "re", config_changes=changes), model_config
    )
    assert "not a valid regular expression" in str(error) or "not valid regular expressions" in str(
        error
    )


def test_messages_name_layers_compactly():
    refs = [ModuleRef(i, "q_proj") for i in (0, 1, 2, 3, 7, 9, 10)] + [ModuleRef(5, "v_proj")]
    assert describe_modules(refs) == "q_proj of layers 0-3, 7, 9, 10; v_proj of layer 5:"
