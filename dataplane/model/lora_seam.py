"""The one place where a decoder's seven projections are computed.

Every projection (q, k, v, o, gate, up, down) goes through `project`, so an adapter
engine can add a low-rank delta per token without touching the model: pass a
`LoraContext` as `lora` to the model's forward and it is called once per (layer,
projection) with the projection's input and its output, which it updates in place
(y += delta(x), each token with its own adapter slot). With lora=None nothing is added.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lorafleet.dataplane.model.cpu_linear import Weight, linear


class LoraContext(Protocol):
    """Adds adapter deltas to projection outputs for one step's batch."""

    def add_delta(self, layer: int, projection: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y[t] += delta_{slot(t)}(x[t]) in place; x is [tokens, in], y is [tokens, out]."""
        ...


def project(
    x: torch.Tensor,
    weight: Weight,
    bias: torch.Tensor | None,
    layer: int,
    projections: tuple[str, ...],
    sizes: tuple[int, ...],
    lora: LoraContext | None,
) -> tuple[torch.Tensor, ...]:
    """Computes fused projections (e.g. q|k|v) of x and returns them split by `sizes`.

    `weight` is [in, sum(sizes)] (a plain tensor or a `PackedWeight`): the weights of
    several projections with the same input are stacked so one matmul serves them; each
    output slice gets its own adapter delta.
    """
    y = linear(x, weight, bias)
    outputs = y.split(sizes, dim=-1) if len(sizes) > 1 else (y,)
    if lora is not None:
        for name, out in zip(projections, outputs, strict=True):
            lora.add_delta(layer, name, x, out)
    return outputs
