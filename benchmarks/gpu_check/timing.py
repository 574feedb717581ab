"""Timing on CUDA or CPU, copy bandwidth, and the bytes a LoRA call must move.

On CUDA a sample is CUDA events around `inner` back-to-back calls (so launch gaps between
calls count, as they would in a step); on CPU it is the wall clock. The result is the
median sample divided by `inner`.
"""

from __future__ import annotations

import statistics
import time

import torch

FP32_BYTES = 4


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, *, num_samples: int = 7, sample_ms: float = 2.0) -> float:
    """Median milliseconds of one call of `fn`, after a warm-up that also sizes the samples."""
    fn()
    synchronize(device)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    once_ms = (time.perf_counter() - begin) * 1e3
    inner = max(1, min(200, int(sample_ms / max(once_ms, 1e-3))))
    samples = [_sample_ms(fn, device, inner) / inner for _ in range(num_samples)]
    return statistics.median(samples)


def graph_ms(fn, device: torch.device, *, num_calls: int = 20) -> float | None:
    """Milliseconds of one call of `fn` replayed from a CUDA graph of `num_calls` calls: the
    device's own time, without the host's launch work between kernels (None on CPU).

    `median_ms` counts both, as a step does; the two apart say whether a call is bound by
    its kernels or by launching them."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture wants
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(num_calls):
            fn()
    return median_ms(graph.replay, device) / num_calls


def _sample_ms(fn, device: torch.device, inner: int) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - begin) * 1e3


def copy_bandwidth(device: torch.device, num_bytes: int) -> float:
    """Bytes per second of a device-to-device copy of `num_bytes`, counting the bytes read
    and the bytes written (the roofline's denominator)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, num_samples=5, sample_ms=20.0)
    return 2 * num_bytes / (ms / 1e3)


def lora_bytes(*, num_rows: int, in_features: int, out_features: int, num_distinct: int,
               rank: int, element_size: int) -> int:
    """The least one `add_lora` call must move: x read, y read and written, each distinct
    adapter's A and B read once at its rank, and the fp32 [rows, rank] intermediate
    written by shrink and read by expand. Index tensors are too small to count."""
    activations = num_rows * (in_features + 2 * out_features) * element_size
    weights = num_distinct * rank * (in_features + out_features) * element_size
    intermediate = 2 * num_rows * rank * FP32_BYTES
    return activations + weights + intermediate


def roofline_ms(num_bytes: int, bandwidth: float) -> float:
    """Milliseconds to move `num_bytes` at `bandwidth` bytes/s: no kernel can be faster."""
    return num_bytes / bandwidth * 1e3
