"""The one place where a decoder's projections are computed, in fused groups.

Projections that read the same input are computed by one matmul (q|k|v, gate|up), so a
decoder layer has four projection groups. Every group goes through `project`, so an
adapter engine can add a low-rank delta per token without touching the model: pass a
`LoraContext` as `lora` to the model's forward and it is called once per (layer, group)
with the group's input and its fused output, which it updates in place (y += delta(x),
each token with its own adapter slot, each projection in its own columns). With
lora=None nothing is added.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lorafleet.kernels.cpu.linear import Weight, linear

# group -> its projections, in the order of their output columns.
PROJECTION_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}


class LoraContext(Protocol):
    """Adds adapter deltas to projection outputs for one step's batch."""

    def add_delta(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y[t] += delta_{slot(t)}(x[t]) in place; x is [tokens, in], y is [tokens, out]
        with the group's projections side by side."""
        ...


def project(
    x: torch.Tensor,
    weight: Weight,
    bias: torch.Tensor | None,
    layer: int,
    group: str,
    sizes: tuple[int, ...],
    lora: LoraContext | None,
) -> tuple[torch.Tensor, ...]:
    """Computes a projection group (e.g. q|k|v) of x and returns it split by `sizes`.

    `weight` is [in, sum(sizes)] (a plain tensor or a `PackedWeight`): the weights of the
    group's projections stacked so one matmul serves them; the adapter delta of the whole
    group is added to that one output before it is split.
    """
    y = linear(x, weight, bias)
    if lora is not None:
        lora.add_delta(layer, group, x, y)
    return y.split(sizes, dim=-1) if len(sizes) > 1 else (y,)
