"""Part 2: the Triton paged-attention kernels on the device against the torch path, and
the decode kernel's time against reading the KV cache once.

Checks: the cases of tests/kernels/test_paged_attention.py (tiny shapes crossing block,
partition and window edges, GQA 1-8, fp32, bf16 and fp16, blocks scattered over the cache) plus
Llama-8B-shaped steps (32 heads, 8 KV heads, head dim 128, blocks of 16 tokens): 32 decodes
at contexts 1,024-2,016 (split into partitions), and decodes mixed with prefill chunks
under a 1,000-token window. Each goes through `paged_attention`, the model's call (the
Triton kernels on CUDA), against the torch path in fp32 on the same device; the error is
the largest difference over the largest output. On CUDA the part fails when the kernels
did not run compiled.

Timing: the 32 decodes in bf16 (the dry run: a tiny stand-in on CPU). The kernels alone
at 256, 512 (the default), 1,024 keys per partition and unsplit, as called (host launch
work included) and replayed from a CUDA graph; `paged_attention` (the KV store included)
on the Triton and on the torch path. `kv_read_ms` is the step's keys and values read once
at the measured copy bandwidth (what decode attention cannot beat); target: the default
kernels from a graph <= 1.5x that.
"""

from __future__ import annotations

import torch

from benchmarks.gpu_check.kernel_tests import triton_error as compiled_error
from benchmarks.gpu_check.report import outcome, target
from benchmarks.gpu_check.timing import copy_bandwidth, graph_ms, median_ms, roofline_ms
from lorafleet.dataplane.model.attention import paged_attention
from lorafleet.kernels import paged_attention as kernels
from lorafleet.kernels.triton_support import is_triton_available
from tests.kernels.attention_cases import (
    AttentionSpec,
    step_metadata,
    step_tensors,
    store_step_kv,
    torch_attention,
)
from tests.kernels.test_paged_attention import CASE_NAMES, SPECS

CAP_S = 90.0
TARGET_VS_KV_READ = 1.5
MAX_ERROR = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 2e-3}  # of the largest output
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LLAMA_8B = dict(num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
DECODES_8B = tuple((1024 + 32 * i - 1, 1) for i in range(32))  # contexts 1,024-2,016
SPECS_8B = {
    "8b-decode": AttentionSpec(DECODES_8B, **LLAMA_8B),
    "8b-mixed-window": AttentionSpec(DECODES_8B[::4] + ((0, 300), (700, 500), (1800, 64)),
                                     **LLAMA_8B, sliding_window=1000),
}
TINY_DECODES = AttentionSpec(tuple((63 + 16 * i, 1) for i in range(4)), block_size=16)
# Every step runs these two; the combine runs only for split decodes (the 8B cases).
KERNELS = (kernels._decode_kernel, kernels._prefill_kernel)


def run(device: torch.device, clock, *, is_dry_run: bool) -> dict:
    """Every check that fits the cap, then the decode timings."""
    cases = [(name, SPECS[name.rsplit("-", 1)[0]]) for name in CASE_NAMES]
    if not is_dry_run:
        cases += [(f"{name}-{dtype}", spec) for name, spec in SPECS_8B.items()
                  for dtype in ("fp32", "bf16")]
    rows = []
    for name, spec in cases:
        if not clock.can_start(3.0):
            clock.skip(f"case {name}")
            continue
        try:
            rows.append(check(name, spec, device))
        except Exception as error:  # noqa: BLE001 (one broken case must not hide the rest)
            rows.append({"case": name, "rows": spec.num_rows, "is_match": False,
                         "error": f"{type(error).__name__}: {error}"[:300]})
    failures = [row["case"] for row in rows if not row["is_match"]]
    notes = [f"{len(rows) - len(failures)}/{len(rows)} cases match the torch path"]
    triton_error = compiled_error(device, KERNELS, "paged_attention")
    notes.append(triton_error or ("compiled Triton ran every case" if device.type == "cuda"
                                  else "cpu dry run: paged_attention ran the torch path"))
    timing_rows, timing_target, timing_note = time_decode(device, clock, is_dry_run)
    notes.append(timing_note)
    is_failed = (bool(failures) or triton_error is not None or not rows
                 or any("error" in row for row in timing_rows))
    return {"status": "failed" if is_failed else outcome(clock), "rows": rows + timing_rows,
            "targets": [timing_target], "notes": notes}


def unmeasured_targets(reason: str) -> list[dict]:
    """The timing target, skipped for `reason` (the part did not run or broke)."""
    return [_target(None, reason)]


def _target(value: float | None, note: str) -> dict:
    return target("32 decodes (8B shape) vs reading their KV once", value, TARGET_VS_KV_READ,
                  is_upper_bound=True, note=note)


def check(name: str, spec: AttentionSpec, device: torch.device) -> dict:
    """One step through `paged_attention` on `device` against the torch path in fp32."""
    dtype_name = name.rsplit("-", 1)[1]
    tensors = step_tensors(spec, DTYPES[dtype_name], device)
    if name.startswith("8b"):  # peaked softmaxes: outputs near 1, not a 2k-key average
        tensors["q"] *= 4
    expected = torch_attention(tensors, step_metadata(spec, device, is_paged=False))
    meta = step_metadata(spec, device, is_paged=True)
    got = paged_attention(tensors["q"], tensors["k"], tensors["v"], tensors["k_cache"],
                          tensors["v_cache"], meta).float()
    error = float((got - expected).abs().max() / expected.abs().max())
    return {"case": name, "rows": spec.num_rows, "max_error": float(f"{error:.3g}"),
            "limit": MAX_ERROR[dtype_name], "is_match": error <= MAX_ERROR[dtype_name]}


def time_decode(device: torch.device, clock, is_dry_run: bool):
    """(rows, target, note) of the decode timings at the 8B shape (dry run: tiny)."""
    spec = TINY_DECODES if is_dry_run else SPECS_8B["8b-decode"]
    dtype = torch.float32 if is_dry_run else torch.bfloat16
    if not clock.can_start(20.0):
        clock.skip("decode timings")
        return [], _target(None, "skipped: the cap"), "decode timings skipped"
    tensors = step_tensors(spec, dtype, device)
    meta = step_metadata(spec, device, is_paged=True)
    store_step_kv(tensors, meta)
    bandwidth = copy_bandwidth(device, (8 << 20) if is_dry_run else (1 << 30))
    kv_ms = roofline_ms(kv_bytes(spec, tensors["k_cache"].element_size()), bandwidth)
    rows, calls = [], _calls(tensors, meta, spec, device)
    for label, fn in calls.items():
        row = {"case": f"decode timing: {label}", "rows": spec.num_rows,
               "kv_read_ms": float(f"{kv_ms:.4g}")}
        try:
            called_ms = median_ms(fn, device)
        except Exception as error:  # noqa: BLE001 (the other calls are still worth timing)
            rows.append({**row, "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        kernels_ms = _graph_ms(fn, device) if label.startswith("kernels") else None
        rows.append({**row, "called_ms": float(f"{called_ms:.4g}"),
                     "graph_ms": None if kernels_ms is None else float(f"{kernels_ms:.4g}"),
                     "vs_kv_read": round((kernels_ms or called_ms) / kv_ms, 2)})
    timed = [r for r in rows if "vs_kv_read" in r]
    if not timed:
        return rows, _target(None, "every timed call raised"), "decode timings failed"
    default = next((r for r in timed if r["case"].endswith("partition 512")), timed[-1])
    num_keys = sum(start + num_new for start, num_new in spec.seqs)
    note = (f"decode timings: {spec.num_rows} sequences, {num_keys} keys, {dtype}; "
            f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    return rows, _target(default["vs_kv_read"], default["case"]), note


def _calls(tensors: dict, meta, spec: AttentionSpec, device: torch.device) -> dict:
    """label -> the call to time: the kernels at each partition size (wherever Triton is:
    on CPU, its interpreter in the tests) and `paged_attention` on each path."""
    q, k, v, k_cache, v_cache = (tensors[n] for n in ("q", "k", "v", "k_cache", "v_cache"))
    calls = {}
    if is_triton_available():
        unsplit = -(-meta.paged.block_tables.shape[1] * spec.block_size // 16) * 16
        for size in (256, 512, 1024, unsplit):
            label = "unsplit" if size == unsplit else f"partition {size}"
            calls[f"kernels, {label}"] = (lambda size=size: kernels.paged_attention_triton(
                q, k_cache, v_cache, batch=meta.paged, partition_size=size, is_checked=True))
    if device.type == "cuda" and is_triton_available():
        calls["paged_attention, triton"] = lambda: paged_attention(q, k, v, k_cache, v_cache, meta)
    torch_meta = step_metadata(spec, device, is_paged=False)
    calls["paged_attention, torch"] = lambda: paged_attention(q, k, v, k_cache, v_cache, torch_meta)
    return calls


def kv_bytes(spec: AttentionSpec, element_size: int) -> int:
    """Bytes of keys and values the step's sequences hold: what a decode must read."""
    num_tokens = sum(start + num_new for start, num_new in spec.seqs)
    return 2 * num_tokens * spec.num_kv_heads * spec.head_dim * element_size


def _graph_ms(fn, device: torch.device) -> float | None:
    try:
        return graph_ms(fn, device)
    except Exception:  # noqa: BLE001 (a diagnostic column; the row's own timing stands)
        return None
