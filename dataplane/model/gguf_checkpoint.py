"""A Llama GGUF file (llama.cpp's format) written out as a Hugging Face checkpoint directory.

    write_checkpoint(gguf_path, out_dir)  # config.json, model.safetensors, tokenizer.json,
                                          # tokenizer_config.json, chat_template.jinja, ...

Only the `gguf` package (its numpy dequantizer), torch, safetensors and tokenizers are
needed, not transformers, so a worker install can do it. Weights are dequantized to
float32: the values a quantized block encodes (`d * q + m`) are exact in float32 and
would be rounded again in bfloat16. llama.cpp stores q_proj/k_proj rows in an interleaved
rotary order; they are put back in Hugging Face's order here.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

# GGUF tensor name -> Hugging Face name; "blk.N." becomes "model.layers.N.".
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}
# llama.cpp pre-tokenizer names whose tokenizer splits numbers into single digits first.
_DIGIT_SPLIT_PRE_TOKENIZERS = ("smollm",)
_CONTROL_TOKEN_TYPE = 3


class GGUFConversionError(ValueError):
    """The GGUF file is not a Llama model this converter understands."""


def write_checkpoint(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Writes the Hugging Face checkpoint of the Llama GGUF file `gguf_path` into `out_dir`."""
    import gguf  # the worker extra has it; imported late so the rest of lorafleet does not

    reader = gguf.GGUFReader(str(gguf_path))
    meta = _Metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise GGUFConversionError(
            f"{gguf_path.name}: architecture {meta.get('general.architecture')!r}, not llama")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model_config(meta, {t.name for t in reader.tensors})
    tensors = {}
    for tensor in reader.tensors:
        name, array = tensor.name, gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if name.startswith(("blk.", "token_embd.", "output")):
            tensors[_hf_name(name)] = torch.from_numpy(_unpermute(name, array, config))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(meta, out_dir, config)
    return out_dir


class _Metadata:
    """A GGUF file's key-value metadata, read by key."""

    def __init__(self, reader) -> None:
        self._fields = reader.fields

    def get(self, key: str, default=None):
        """The value of `key` (a number, string or list), or `default`."""
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        """The value of `key`; a file without it is not one this converter reads."""
        value = self.get(key)
        if value is None:
            raise GGUFConversionError(f"the GGUF file has no {key!r}")
        return value


def model_config(meta: _Metadata, tensor_names: set[str]) -> dict:
    """The config.json of the model the metadata describes."""
    hidden, num_heads = int(meta.require("llama.embedding_length")), int(
        meta.require("llama.attention.head_count"))
    tokens = meta.require("tokenizer.ggml.tokens")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": int(meta.require("llama.feed_forward_length")),
        "num_hidden_layers": int(meta.require("llama.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", num_heads)),
        "head_dim": int(meta.get("llama.rope.dimension_count", hidden // num_heads)),
        "vocab_size": int(meta.get("llama.vocab_size", len(tokens))),
        "max_position_embeddings": int(meta.get("llama.context_length", 2048)),
        # GGUF keeps float32; 7 significant digits give back the decimal that was written.
        "rms_norm_eps": float(f"{meta.require('llama.attention.layer_norm_rms_epsilon'):.7g}"),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "float32",
    }


def _hf_name(name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    parts = name.split(".")
    if parts[0] == "blk":
        if parts[2] not in _LAYER_TENSORS:
            raise GGUFConversionError(f"tensor {name!r} is not part of a Llama layer")
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{parts[3]}"
    if parts[0] not in _GLOBAL_TENSORS:
        raise GGUFConversionError(f"tensor {name!r} is not part of a Llama model")
    return f"{_GLOBAL_TENSORS[parts[0]]}.{parts[1]}"


def _unpermute(name: str, array: np.ndarray, config: dict) -> np.ndarray:
    """Undoes llama.cpp's rotary row interleave of q_proj and k_proj weights."""
    if ".attn_q." in name:
        num_heads = config["num_attention_heads"]
    elif ".attn_k." in name:
        num_heads = config["num_key_value_heads"]
    else:  # a copy: the reader's arrays are read-only views of the mapped file
        return np.array(array, dtype=np.float32)
    rows = array.shape[0]
    heads = array.reshape(num_heads, rows // num_heads // 2, 2, *array.shape[1:])
    return np.array(heads.swapaxes(1, 2).reshape(array.shape), dtype=np.float32)


def _write_tokenizer(meta: _Metadata, out_dir: pathlib.Path, config: dict) -> None:
    """tokenizer.json (byte-level BPE), tokenizer_config.json, chat_template.jinja and
    generation_config.json from the GGUF tokenizer metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta.require("tokenizer.ggml.model") != "gpt2":
        raise GGUFConversionError("only byte-level BPE (gpt2) GGUF tokenizers are supported")
    tokens = meta.require("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if meta.get("tokenizer.ggml.pre") in _DIGIT_SPLIT_PRE_TOKENIZERS:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    types = meta.get("tokenizer.ggml.token_type") or []
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types, strict=False)
                                  if kind == _CONTROL_TOKEN_TYPE])
    tokenizer.save(str(out_dir / "tokenizer.json"))
    special = {f"{role}_token": tokens[meta.get(f"tokenizer.ggml.{key}_token_id")]
               for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"),
                                 ("pad", "padding"))
               if meta.get(f"tokenizer.ggml.{key}_token_id") is not None}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
                        "model_max_length": config["max_position_embeddings"], **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    template = meta.get("tokenizer.chat_template")
    if template:
        (out_dir / "chat_template.jinja").write_text(template)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id") if config[k] is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
