"""Tiny Llama-family checkpoints generated with `transformers`, for tests and demos.

Each checkpoint directory has config.json, model.safetensors (or shards with an index),
tokenizer.json and tokenizer_config.json (with a chat template), like a hub download.
"""

from __future__ import annotations

import pathlib

from lorafleet.dataplane.model.demo import VOCAB_SIZE, write_tokenizer

# name -> (config class name, extra config fields)
ARCHITECTURES = {
    "llama-gqa": ("LlamaConfig", {"num_key_value_heads": 2}),
    "qwen2-bias": ("Qwen2Config", {"num_key_value_heads": 2}),
    "llama-tied": ("LlamaConfig", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2, "sliding_window": None}),
}


def make_checkpoint(
    directory: pathlib.Path,
    arch: str = "llama-gqa",
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    max_shard_size: str | None = None,
    **overrides,
) -> pathlib.Path:
    """Writes a randomly initialised checkpoint of `arch` to `directory` and returns it."""
    import torch
    import transformers

    class_name, extra = ARCHITECTURES[arch]
    fields = dict(
        vocab_size=VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rms_norm_eps=1e-6, rope_theta=10000.0,
    )
    fields.update(extra)
    fields.update(overrides)
    config = getattr(transformers, class_name)(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _spread_weights(model, seed)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    write_tokenizer(directory)
    return directory


def _spread_weights(model, seed: int) -> None:
    """Re-draws weights with a larger spread so greedy decoding is not a flat tie."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.08)
            elif "bias" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
