"""The CPU backend: what makes the torch paths fast on a CPU, kept out of the shared code.

- `linear.py`: projection weights packed once for oneDNN (the model's matmuls);
- `lora.py`: which torch LoRA path a batch takes (a cost model fitted on a CPU) and the
  one-thread rule for LoRA's small ops;
- `blocked.py`: the slot-block LoRA path that cost model picks for many adapters;
- `native.py` (and `native.c`): the decode step's small ops (residual add with RMSNorm,
  rotary embeddings, KV store, decode attention over the paged cache, argmax) as C
  kernels built on first use, where torch runs several ops or a copy for each.

The GPU path never enters here: `kernels/dispatch.py` sends CUDA tensors to Triton, and
the model packs no weight off the CPU.
"""
