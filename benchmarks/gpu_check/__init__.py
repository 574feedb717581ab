"""`make gpu-check`: the CUDA path proven on one GPU, in one run with a report.

Seven parts, each with a time cap (see `__main__.py` for the order and the caps):
  kernels   the kernel tests' cases through `add_lora`, compiled Triton, against fp32;
  attention the paged-attention kernels against the torch path; decode attention's time
            at the 8B shape against reading its KV cache once;
  parity    the engine's greedy decoding on the device against transformers on CPU;
  timings   SGMV/BGMV at hidden 4096 against the HBM roofline and a per-adapter loop;
  decode    end-to-end decode with 0/1/8/32 distinct adapters on a Llama-8B-shaped model;
  graphs    decode steps replayed from CUDA graphs, token for token, and their time;
  serving   `lorafleet serve` on the device over gRPC against the in-process engine.
Without CUDA, `--cpu-dry-run` runs every part at tiny shapes on CPU (docs/gpu.md).
"""
