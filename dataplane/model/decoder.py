"""Llama-family decoder (Llama, Mistral, Qwen2) over a paged KV cache.

Matches transformers' modeling_llama / modeling_qwen2 numerics: RMSNorm in float32,
rotate-half rotary embeddings, SiLU-gated MLP. Projections of all tokens of a step run as
one matmul per projection group (q|k|v, o, gate|up, down), each through
`lora_seam.project`.
"""

from __future__ import annotations

import pathlib

import torch
import torch.nn.functional as F

from lorafleet.dataplane.model.attention import AttentionMetadata, paged_attention
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.model.cpu_linear import can_pack, linear, resolve_cpu_linear
from lorafleet.dataplane.model.lora_seam import LoraContext, project
from lorafleet.dataplane.model.rope import RotaryEmbedding, apply_rotary
from lorafleet.dataplane.model.weights import LayerWeights, ModelWeights, load_weights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, as transformers does."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class DecoderModel:
    """A decoder's weights and its forward pass; holds no per-request state."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, device, dtype) -> None:
        self.config = config
        self.weights = weights
        self.device = torch.device(device)
        self.dtype = dtype
        self.rotary = RotaryEmbedding(config, self.device, dtype)
        q = config.num_heads * config.head_dim
        kv = config.num_kv_heads * config.head_dim
        self._qkv_sizes = (q, kv, kv)
        self._gate_up_sizes = (config.intermediate_size, config.intermediate_size)

    @classmethod
    def from_dir(
        cls, model_dir: str | pathlib.Path, device, dtype, cpu_linear: str | None = None,
    ) -> DecoderModel:
        """Loads config.json and the safetensors of a checkpoint directory.

        cpu_linear: "fast" (projections packed for oneDNN) or "reference" (torch.mm);
        None reads $LORAFLEET_CPU_LINEAR, default "fast". Ignored off CPU.
        """
        config = ModelConfig.from_dir(model_dir)
        device = torch.device(device)
        is_packed = can_pack(resolve_cpu_linear(cpu_linear), device, dtype)
        weights = load_weights(model_dir, config, device, dtype, is_packed=is_packed)
        return cls(config, weights, device, dtype)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
        kv_cache: torch.Tensor, sample_rows: torch.Tensor, lora: LoraContext | None = None,
    ) -> torch.Tensor:
        """Float32 logits [len(sample_rows), vocab] of the given rows of the step's tokens.

        kv_cache is [num_layers, 2, num_blocks, block_size, kv_heads, head_dim].
        """
        hidden = F.embedding(input_ids, self.weights.embed)
        cos, sin = self.rotary.cos_sin(positions)
        for index, layer in enumerate(self.weights.layers):
            hidden = self._layer(index, layer, hidden, cos, sin, meta, kv_cache[index], lora)
        hidden = rms_norm(hidden[sample_rows], self.weights.norm, self.config.rms_norm_eps)
        return linear(hidden, self.weights.lm_head, None).float()

    def _layer(self, index, layer: LayerWeights, hidden, cos, sin, meta, cache, lora):
        eps = self.config.rms_norm_eps
        x = rms_norm(hidden, layer.input_norm, eps)
        hidden = hidden + self._attention(index, layer, x, cos, sin, meta, cache, lora)
        x = rms_norm(hidden, layer.post_attention_norm, eps)
        gate, up = project(x, layer.gate_up, layer.gate_up_bias, index, "gate_up_proj",
                           self._gate_up_sizes, lora)
        (down,) = project(F.silu(gate) * up, layer.down, layer.down_bias, index,
                          "down_proj", (self.config.hidden_size,), lora)
        return hidden + down

    def _attention(self, index, layer: LayerWeights, x, cos, sin, meta, cache, lora):
        c = self.config
        q, k, v = project(x, layer.qkv, layer.qkv_bias, index, "qkv_proj", self._qkv_sizes,
                          lora)
        q = apply_rotary(q.view(-1, c.num_heads, c.head_dim), cos, sin)
        k = apply_rotary(k.view(-1, c.num_kv_heads, c.head_dim), cos, sin)
        v = v.reshape(-1, c.num_kv_heads, c.head_dim)
        out = paged_attention(q, k, v, cache[0], cache[1], meta)
        (o,) = project(out.reshape(-1, c.num_heads * c.head_dim), layer.o, layer.o_bias,
                       index, "o_proj", (c.hidden_size,), lora)
        return o
