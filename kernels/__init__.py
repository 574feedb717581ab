"""lorafleet kernels: LoRA on mixed-adapter batches (SGMV/BGMV; Triton on CUDA, torch elsewhere).

    y[t, c_i] += scale[s, i] * (x[t] @ A_i[s]^T) @ B_i[s]^T   for each row t whose adapter slot is s

and each slice i (one projection of a fused group such as q|k|v; c_i its columns of y).
Build a `LoraBatch` once per step from the per-row slots, keep each (layer, projection
group)'s adapters in `LoraBuffers`, and call `add_lora` — the one dispatcher.
"""

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora

__all__ = ["LoraBatch", "LoraBuffers", "add_lora"]
