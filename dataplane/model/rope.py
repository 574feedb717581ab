"""Rotary position embeddings, with Llama 3 and linear frequency scaling.

cos/sin are computed once in float32 for every position of the context (as transformers
does per step) and cast to the model dtype when looked up.
"""

from __future__ import annotations

import math

import torch

from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.kernels.cpu import native


class UnsupportedRopeError(ValueError):
    """The checkpoint asks for a rope scaling this engine does not implement."""


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """The per-pair rotation frequencies, scaled as config.rope_scaling says."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        return _llama3(inv_freq, scaling)
    raise UnsupportedRopeError(f"rope scaling {kind!r} is not supported (default, linear, llama3)")


def _llama3(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3: long wavelengths slowed by `factor`, short kept, the band between blended."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding:
    """Rotates query and key heads by position, in place.

    "Rotate half" pairs element i with i + head_dim/2: x' = x * cos + rotate_half(x) * sin,
    where rotate_half(x) = [-x2, x1]. The same sum is x * cos + roll(x, half) * signed_sin
    with signed_sin = [-sin1, sin2] (negating a product is exact, so the numbers are
    transformers' to the bit), and roll needs no negation or concatenation: a step applies
    it as four ops, to q and k together.
    """

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        inv_freq = inverse_frequencies(config)
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[:, : sin.shape[-1] // 2].neg_()
        self._cos = emb.cos().to(device=device, dtype=dtype)
        self._signed_sin = sin.to(device=device, dtype=dtype)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin of shape [num_tokens, 1, head_dim], broadcastable over heads;
        looked up once per step for every layer."""
        return self._cos[positions].unsqueeze(1), self._signed_sin[positions].unsqueeze(1)


def apply_rotary_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
    """Rotates x [tokens, heads, head_dim] in place (heads may be q's and k's side by side,
    a view into the projection's output); cos, signed_sin from `RotaryEmbedding.cos_sin`."""
    if native.runs(x) and x.stride(-2) == x.shape[-1] <= native.MAX_ROTARY_DIM:  # one pass
        native.rotary_(x, cos, signed_sin)
        return
    rolled = x.roll(x.shape[-1] // 2, dims=-1)
    rolled.mul_(signed_sin)
    x.mul_(cos).add_(rolled)
