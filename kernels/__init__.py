"""lorafleet kernels: LoRA on mixed-adapter batches (SGMV/BGMV; Triton on CUDA, torch elsewhere).

    y[t] += scale[s] * (x[t] @ A[s]^T) @ B[s]^T   for each row t whose adapter slot is s

Build a `LoraBatch` once per step from the per-row slots, keep each (layer, projection)'s
adapters in `LoraBuffers`, and call `add_lora` — the one dispatcher.
"""

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.dispatch import add_lora

__all__ = ["LoraBatch", "LoraBuffers", "add_lora"]
