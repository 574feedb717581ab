"""A Llama-8B-shaped checkpoint without its weights: config arithmetic and random weights.

Only config.json and the tokenizer go to disk; `random_weights_instead` stands in for the
checkpoint's safetensors while an engine is built, generating every weight on the device
in the model's dtype (16 GB of bf16 in a few seconds, where writing and reading a
checkpoint would take minutes). Speed does not depend on the values.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

import torch

from lorafleet.dataplane.model import decoder
from lorafleet.dataplane.model.demo import VOCAB_SIZE, write_tokenizer
from lorafleet.dataplane.model.weights import LayerWeights, ModelWeights

LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "rope_theta": 500000.0, "torch_dtype": "bfloat16"}
# The dry run's stand-in: the same proportions (4 query heads per KV head, MLP 3.5x).
TINY = {"hidden_size": 256, "intermediate_size": 896, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": VOCAB_SIZE,
        "rope_theta": 10000.0, "torch_dtype": "float32"}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def config_json(shape: dict) -> dict:
    """A Llama config.json with `shape`'s sizes."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **shape,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "bos_token_id": 1,
            "eos_token_id": 2, "tie_word_embeddings": False, "hidden_act": "silu"}


def write_config(directory: pathlib.Path, shape: dict) -> pathlib.Path:
    """Writes config.json and the demo tokenizer (no weights) and returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_json(shape), indent=2))
    write_tokenizer(directory)
    return directory


def _projection_sizes(shape: dict) -> dict[str, tuple[int, int]]:
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head_dim = hidden // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (q, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def num_weight_bytes(shape: dict, element_size: int) -> int:
    """Bytes of the base weights: embeddings, head, every layer's projections and norms."""
    per_layer = sum(i * o for i, o in _projection_sizes(shape).values()) + 2 * shape["hidden_size"]
    embeddings = 2 * shape["vocab_size"] * shape["hidden_size"] + shape["hidden_size"]
    return (embeddings + shape["num_hidden_layers"] * per_layer) * element_size


def num_adapter_bytes(shape: dict, rank: int, element_size: int) -> int:
    """Bytes of one adapter on all seven projections of every layer at `rank`."""
    per_layer = sum(rank * (i + o) for i, o in _projection_sizes(shape).values())
    return shape["num_hidden_layers"] * per_layer * element_size


def num_kv_bytes_per_token(shape: dict, element_size: int) -> int:
    """KV cache bytes one token takes over every layer."""
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * element_size


def fit_layers(shape: dict, free_bytes: int, extra_bytes: int, element_size: int) -> int:
    """The most layers (up to the shape's own) whose weights, with `extra_bytes` for
    adapters and KV cache and a 10% margin, fit in `free_bytes`; 0 when none does."""
    for num_layers in range(shape["num_hidden_layers"], 0, -1):
        needed = num_weight_bytes({**shape, "num_hidden_layers": num_layers}, element_size)
        if (needed + extra_bytes) * 1.1 <= free_bytes:
            return num_layers
    return 0


def random_weights(model_dir, config, device, dtype, *, is_packed: bool = False) -> ModelWeights:
    """`load_weights`' stand-in: random weights of `config`'s shape on `device` ([in, out]
    projections, unit norms). `is_packed` is ignored: plain tensors work everywhere."""
    def rand(num_in: int, num_out: int) -> torch.Tensor:
        return torch.randn(num_in, num_out, device=device, dtype=dtype) * num_in**-0.5

    sizes = _projection_sizes({"hidden_size": config.hidden_size,
                               "intermediate_size": config.intermediate_size,
                               "num_attention_heads": config.num_heads,
                               "num_key_value_heads": config.num_kv_heads})
    hidden, ones = config.hidden_size, torch.ones(config.hidden_size, device=device, dtype=dtype)
    q_out, kv_out = sizes["q_proj"][1], sizes["k_proj"][1]
    layers = tuple(LayerWeights(
        input_norm=ones, qkv=rand(hidden, q_out + 2 * kv_out), qkv_bias=None,
        o=rand(*sizes["o_proj"]), o_bias=None, post_attention_norm=ones,
        gate_up=rand(hidden, 2 * sizes["gate_proj"][1]), gate_up_bias=None,
        down=rand(*sizes["down_proj"]), down_bias=None) for _ in range(config.num_layers))
    embed = torch.randn(config.vocab_size, hidden, device=device, dtype=dtype)
    return ModelWeights(embed=embed, layers=layers, norm=ones, lm_head=rand(hidden, config.vocab_size))


@contextlib.contextmanager
def random_weights_instead():
    """While open, models built from a directory get `random_weights` instead of reading
    safetensors (the one seam: `DecoderModel.from_dir` calls `decoder.load_weights`)."""
    original = decoder.load_weights
    decoder.load_weights = random_weights
    try:
        yield
    finally:
        decoder.load_weights = original
