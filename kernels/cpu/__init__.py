"""The CPU backend: what makes the torch paths fast on a CPU, kept out of the shared code.

- `linear.py`: projection weights packed once for oneDNN (the model's matmuls);
- `lora.py`: which torch LoRA path a batch takes (a cost model fitted on a CPU) and the
  one-thread rule for LoRA's small ops;
- `blocked.py`: the slot-block LoRA path that cost model picks for many adapters.

The GPU path never enters here: `kernels/dispatch.py` sends CUDA tensors to Triton, and
the model packs no weight off the CPU.
"""
