"""Compiles the Triton kernels for a CUDA GPU (sm_80) without one; run by test_triton_compile.py.

    python -m tests.kernels.compile_cuda   # prints {"<dtype> <kernel>": cubin bytes} as JSON

Triton compiles ahead of time through ptxas, bundled with it, so GPU-only front-end
errors (tl.dot shapes, dtype mismatches) show up on a CPU machine. Runs in its own process
so that TRITON_INTERPRET, if set for the suite, does not turn the kernels into interpreted ones.
"""

from __future__ import annotations

import json

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lorafleet.kernels import bgmv, paged_attention, sgmv

TARGET = GPUTarget("cuda", 80, 32)
INDEX_POINTERS = {"token_order_ptr": "*i64", "seg_starts_ptr": "*i32", "seg_lengths_ptr": "*i32",
                  "seg_slots_ptr": "*i32", "token_slots_ptr": "*i32", "ranks_ptr": "*i32",
                  "scale_ptr": "*fp32", "shrunk_ptr": "*fp32", "slice_starts_ptr": "*i32",
                  "block_tables_ptr": "*i32", "context_lens_ptr": "*i32",
                  "query_start_loc_ptr": "*i32", "part_acc_ptr": "*fp32",
                  "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32", "scale": "fp32"}
DATA_POINTERS = ("x_ptr", "a_ptr", "b_ptr", "y_ptr", "q_ptr", "k_cache_ptr", "v_cache_ptr",
                 "out_ptr")
# Launch options other than the defaults, by kernel.
OPTIONS = {"_prefill_kernel": {"num_warps": 8}}


def _kernels(dtype: str) -> list[tuple]:
    """(kernel, meta) as the launchers pass them (LoRA: max_rank 64)."""
    precision = "ieee" if dtype == "fp32" else "tf32"
    return [
        (sgmv._sgmv_shrink_kernel, {"BLOCK_M": 16, "BLOCK_R": 64, "BLOCK_K": 64, "DOT_PRECISION": precision}),
        (sgmv._sgmv_expand_kernel, {"BLOCK_M": 16, "BLOCK_R": 64, "BLOCK_N": 64, "DOT_PRECISION": precision}),
        (bgmv._bgmv_shrink_kernel, {"BLOCK_R": 64, "BLOCK_K": 128}),
        (bgmv._bgmv_expand_kernel, {"BLOCK_R": 64, "BLOCK_N": 128}),
        # Paged attention at head dim 128, GQA 4, a sliding window, the split decode path.
        (paged_attention._decode_kernel, {
            "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 128, "PARTITION_SIZE": 512,
            "IS_SPLIT": True, "HAS_WINDOW": True, "DOT_PRECISION": precision}),
        (paged_attention._decode_combine_kernel, {
            "BLOCK_P": 8, "BLOCK_D": 128, "PARTITION_SIZE": 512, "HAS_WINDOW": True}),
        (paged_attention._prefill_kernel, {
            "BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_D": 128, "HAS_WINDOW": True,
            "DOT_PRECISION": precision}),
    ]


def _signature(kernel, dtype: str, meta: dict) -> dict[str, str]:
    types = {**INDEX_POINTERS, **{name: f"*{dtype}" for name in DATA_POINTERS}}
    return {name: "constexpr" if name in meta else types.get(name, "i32") for name in kernel.arg_names}


def main() -> None:
    """Compiles every kernel in fp32, fp16 and bf16 and prints the cubin sizes."""
    sizes = {}
    for dtype in ("fp32", "fp16", "bf16"):
        for kernel, meta in _kernels(dtype):
            source = ASTSource(kernel, _signature(kernel, dtype, meta), constexprs=meta)
            compiled = triton.compile(source, target=TARGET,
                                      options=OPTIONS.get(kernel.__name__))
            sizes[f"{dtype} {kernel.__name__}"] = len(compiled.asm["cubin"])
    print(json.dumps(sizes))


if __name__ == "__main__":
    main()
