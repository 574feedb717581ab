"""Llama-family decoder (Llama, Mistral, Qwen2) over a paged KV cache.

Matches transformers' modeling_llama / modeling_qwen2 numerics: RMSNorm in float32,
rotate-half rotary embeddings, SiLU-gated MLP. Projections of all tokens of a step run as
one matmul per projection group (q|k|v, o, gate|up, down), each through
`lora_seam.project`.

A deep, thin model runs its layer's small ops thousands of times a step, so a layer keeps
them few (benchmarks/profile_layers.py counts them: 39 on CPU, 67 before): the residual
stream is updated in place, the residual add and RMSNorm are one pass (the CPU backend's
native kernels; one op each on torch), rotary embeddings turn q and k together in
place inside the q|k|v output, SiLU runs in place on the gate, and whatever every layer
would look up (rotary rows, per-layer cache views) is looked up once per step.
"""

from __future__ import annotations

import pathlib

import torch
import torch.nn.functional as F

from lorafleet.dataplane.model.attention import AttentionMetadata, paged_attention
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.model.lora_seam import LoraContext, project
from lorafleet.dataplane.model.rope import RotaryEmbedding, apply_rotary_
from lorafleet.dataplane.model.weights import LayerWeights, ModelWeights, load_weights
from lorafleet.kernels.cpu import native
from lorafleet.kernels.cpu.linear import can_pack, linear, resolve_cpu_linear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, as transformers does."""
    if x.dim() == 2 and native.runs(x):  # one pass (torch's rms_norm is 7 ops on a CPU)
        return native.add_rms_norm(x, None, weight, eps)
    if x.dtype == torch.float32:  # one op, the same numbers to the bit
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """Adds `delta` to the residual stream `hidden` in place (when given), then returns
    RMSNorm(hidden)."""
    if hidden.dim() == 2 and native.runs(hidden, *(() if delta is None else (delta,))):
        return native.add_rms_norm(hidden, delta, weight, eps)
    if delta is not None:
        hidden.add_(delta)
    return rms_norm(hidden, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, with SiLU in place on `gate` (a view into the gate|up output)."""
    return torch.mul(F.silu(gate, inplace=True), up)


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
        self._qk_v_sizes = (q + kv, kv)
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
        rope = self.rotary.cos_sin(positions)
        # Every layer's key and value cache (view: a copy would lose the writes).
        caches = kv_cache.view(-1, *kv_cache.shape[2:]).unbind(0)
        down = None
        for index, layer in enumerate(self.weights.layers):
            down = self._layer(index, layer, hidden, down, rope, meta,
                               caches[2 * index : 2 * index + 2], lora)
        if down is not None:
            hidden.add_(down)
        hidden = rms_norm(hidden[sample_rows], self.weights.norm, self.config.rms_norm_eps)
        return linear(hidden, self.weights.lm_head, None).float()

    def _layer(self, index, layer: LayerWeights, hidden, down, rope, meta, cache, lora):
        """Adds the previous layer's MLP output `down` (None before the first layer) and
        this layer's attention output to the residual stream `hidden`; returns this
        layer's MLP output, added by the next layer's norm (one pass for both)."""
        eps = self.config.rms_norm_eps
        x = add_rms_norm(hidden, down, layer.input_norm, eps)
        attention = self._attention(index, layer, x, rope, meta, cache, lora)
        x = add_rms_norm(hidden, attention, layer.post_attention_norm, eps)
        gate, up = project(x, layer.gate_up, layer.gate_up_bias, index, "gate_up_proj",
                           self._gate_up_sizes, lora)
        (down,) = project(silu_mul(gate, up), layer.down, layer.down_bias, index,
                          "down_proj", (self.config.hidden_size,), lora)
        return down

    def _attention(self, index, layer: LayerWeights, x, rope, meta, cache, lora):
        c = self.config
        # q and k are side by side in the q|k|v output: one rotation turns both, in place.
        q_k, v = project(x, layer.qkv, layer.qkv_bias, index, "qkv_proj", self._qk_v_sizes,
                         lora)
        q_k = q_k.view(-1, c.num_heads + c.num_kv_heads, c.head_dim)
        apply_rotary_(q_k, *rope)
        q, k = q_k[:, : c.num_heads], q_k[:, c.num_heads :]
        v = v.view(-1, c.num_kv_heads, c.head_dim)
        out = paged_attention(q, k, v, cache[0], cache[1], meta)
        (o,) = project(out.reshape(-1, c.num_heads * c.head_dim), layer.o, layer.o_bias,
                       index, "o_proj", (c.hidden_size,), lora)
        return o
