"""Generated checkpoints and PEFT adapters of a given shape, for the serving benchmark.

Weights are random (seeded): serving speed does not depend on their values. The tokenizer
is the demo's small BPE; prompts are sent as token ids, so the model's vocabulary can be
larger than the tokenizer's (ids beyond it detokenize to nothing, as unknown ids do).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes of a generated Llama checkpoint."""

    hidden: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate: int
    vocab: int
    is_tied: bool = False  # the output head is the input embeddings (tie_word_embeddings)

    def describe(self) -> str:
        """One line, e.g. 'hidden 256, 4 layers, 4 heads (2 KV), intermediate 688, vocab 26384'."""
        return (f"hidden {self.hidden}, {self.num_layers} layers, {self.num_heads} heads "
                f"({self.num_kv_heads} KV), intermediate {self.intermediate}, vocab {self.vocab}"
                + (", tied head" if self.is_tied else ""))


# The shapes of the earlier server-vs-engine measurements (issue 11), and the demo model's
# (SmolLM2-135M: many thin layers; random weights, so no download).
SHAPES = {
    "tiny": ModelShape(256, 4, 4, 2, 688, 26384),
    "small": ModelShape(1024, 8, 16, 4, 2816, 32000),
    "smollm2": ModelShape(576, 30, 9, 3, 1536, 49152, is_tied=True),
}


def write_model(directory: pathlib.Path, shape: ModelShape, *, seed: int = 0) -> pathlib.Path:
    """Writes a float32 Llama checkpoint of `shape` (config, safetensors, tokenizer)."""
    import torch
    from safetensors.torch import save_file

    from lorafleet.dataplane.model.demo import write_tokenizer

    gen = torch.Generator().manual_seed(seed)
    h, inter = shape.hidden, shape.intermediate
    kv = shape.num_kv_heads * (h // shape.num_heads)

    def rand(*size):
        return torch.randn(size, generator=gen) * 0.08

    tensors = {"model.embed_tokens.weight": rand(shape.vocab, h),
               "model.norm.weight": torch.ones(h)}
    if not shape.is_tied:
        tensors["lm_head.weight"] = rand(shape.vocab, h)
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
            p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
            p + "mlp.down_proj.weight": rand(h, inter),
            p + "input_layernorm.weight": torch.ones(h),
            p + "post_attention_layernorm.weight": torch.ones(h),
        })
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(_config(shape), indent=2))
    write_tokenizer(directory)
    return directory


def _config(shape: ModelShape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads, "vocab_size": shape.vocab,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "tie_word_embeddings": shape.is_tied,
        "hidden_act": "silu", "torch_dtype": "float32",
    }


def write_adapters(root: pathlib.Path, model_dir: pathlib.Path,
                   ranks: list[int]) -> list[pathlib.Path]:
    """One rank-r PEFT adapter on all seven projections per entry of `ranks`."""
    from lorafleet.dataplane.model.demo import write_adapter

    return [write_adapter(root / f"a{i:04d}", model_dir, rank=rank, alpha=2 * rank,
                          target_modules="all-linear", seed=1000 + i)
            for i, rank in enumerate(ranks)]
