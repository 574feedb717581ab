"""Part 5: end-to-end decode with 0/1/8/32 distinct adapters on a Llama-8B-shaped model.

32 sequences decode together through the worker's engine, wired as `build_engine` wires
it (adapter files loaded into pinned host memory on CUDA, copied into device slots, the
engine's own steps) without the server around it, whose gRPC and telemetry packages the
GPU machine may lack; the cases differ only in how
many distinct adapters (rank 16, all seven projections) the batch uses. Weights are
random, made on the device (model_shape.py). When the full 32 layers do not fit the
device's free memory, the most layers that fit are used and the report says so. Target:
32 distinct >= 0.85x the base model's decode tokens/s. A step bound by reading weights
could reach at most base / (base + adapters read) of it: the report gives that bound.
"""

from __future__ import annotations

import pathlib
import tempfile
import types

import torch

from benchmarks.gpu_check import model_shape
from benchmarks.gpu_check.report import target
from benchmarks.gpu_check.timing import copy_bandwidth
from benchmarks.lora_decode import decode_tokens_per_second
from lorafleet.dataplane.config.sizing import lora_slot_bytes
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.engine_process.messages import AdapterSource
from lorafleet.dataplane.lora.device import DeviceAdapters
from lorafleet.dataplane.lora.host_tier import HostAdapters
from lorafleet.dataplane.lora.loading import AdapterFiles
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.model.demo import write_adapter
from lorafleet.dataplane.runner.factory import DTYPES, create_engine
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget

CAP_S = 200.0
TARGET_RATIO = 0.85
RANK = 16
CUDA_PLAN = {"shape": model_shape.LLAMA_8B, "distinct": (0, 1, 8, 32), "tokens": 32,
             "rounds": 2, "kv_bytes": 2 << 30, "copy_bytes": 1 << 30, "dtype": "bfloat16", "is_warmed_up": True,
             "setup_s": 60.0}
DRY_PLAN = {"shape": model_shape.TINY, "distinct": (0, 1, 4), "tokens": 3,
            "rounds": 1, "kv_bytes": 64 << 20, "copy_bytes": 8 << 20, "dtype": "float32", "is_warmed_up": False,
            "setup_s": 5.0}


def run(device: torch.device, clock, *, is_dry_run: bool) -> dict:
    """Builds the engine, loads the adapters, and measures each case that fits the cap."""
    plan = DRY_PLAN if is_dry_run else CUDA_PLAN
    num_seqs, element_size = max(plan["distinct"]), 4 if is_dry_run else 2
    shape, notes = _fitted_shape(plan, device, num_seqs, element_size)
    if shape is None or not clock.can_start(plan["setup_s"]):
        if shape is not None:
            clock.skip("model and adapter set-up")
        return {"status": "skipped", "notes": notes,
                "targets": [_target(None, (notes or clock.skipped)[0], num_seqs)]}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        model_dir = model_shape.write_config(root / "model", shape)
        adapter_dirs = [write_adapter(root / f"a{i}", model_dir, rank=RANK, alpha=2 * RANK,
                                      target_modules="all-linear", seed=i) for i in range(num_seqs)]
        holder, digests = _build(model_dir, adapter_dirs, device, plan)
        try:
            rows = _measure(holder, digests, plan, clock, num_seqs)
        finally:
            holder.host.close()
    bandwidth = copy_bandwidth(device, plan["copy_bytes"])
    _add_ratios(rows, shape, element_size, bandwidth)
    # On CUDA the host tier must hold page-locked copies (loading.py); on CPU it never pins.
    is_pinned_right = holder.num_pinned == (num_seqs if device.type == "cuda" else 0)
    notes.append(f"{holder.num_pinned}/{num_seqs} adapters in pinned host memory")
    last = rows[-1] if rows and rows[-1]["distinct"] == num_seqs else None
    note = (f"bandwidth bound {last['bandwidth_bound_vs_base']:.2f}x" if last
            else f"{num_seqs} distinct was not measured")
    notes.append(f"{shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
                 f"{num_seqs} sequences, {plan['tokens']} decode tokens each, {plan['dtype']}")
    return {"status": "done" if is_pinned_right else "failed", "rows": rows, "notes": notes,
            "targets": [_target(last["vs_base"] if last else None, note, num_seqs)]}


def unmeasured_targets(reason: str) -> list[dict]:
    """The decode target, skipped for `reason` (the part did not run or broke)."""
    return [_target(None, reason, max(CUDA_PLAN["distinct"]))]


def _target(value, note: str, num_distinct: int) -> dict:
    return target(f"{num_distinct} distinct adapters vs base decode", value, TARGET_RATIO,
                  is_upper_bound=False, note=note)


def _fitted_shape(plan: dict, device: torch.device, num_seqs: int, element_size: int):
    """The plan's shape, cut to the layers that fit the device's free memory."""
    shape, notes = dict(plan["shape"]), []
    if device.type != "cuda":
        return shape, notes
    free_bytes, _ = torch.cuda.mem_get_info(device)
    extra = plan["kv_bytes"] + num_seqs * model_shape.num_adapter_bytes(shape, RANK, element_size)
    num_layers = fit_layers = model_shape.fit_layers(shape, free_bytes, extra, element_size)
    if fit_layers == 0:
        return None, [f"no layer of the 8B shape fits {free_bytes / 2**30:.1f} GiB free"]
    if num_layers < shape["num_hidden_layers"]:
        notes.append(f"only {num_layers} of {shape['num_hidden_layers']} layers fit "
                     f"{free_bytes / 2**30:.1f} GiB free")
    shape["num_hidden_layers"] = num_layers
    return shape, notes


def _build(model_dir, adapter_dirs, device: torch.device, plan: dict):
    """The engine on `device` with random weights, every adapter loaded and placed, with
    its host tier and how many adapters sit in pinned memory.

    A KV budget in bytes also pays for the adapter slots (factory.py), so the budget is
    the plan's KV bytes plus the slots' bytes.
    """
    num_seqs, dtype = len(adapter_dirs), DTYPES[plan["dtype"]]
    model_config = ModelConfig.from_dir(model_dir)
    files = AdapterFiles(model_config, RANK, dtype, pin_memory=device.type == "cuda")
    host = HostAdapters(max_host=num_seqs, load=lambda source: files.load(source.source_uri))
    adapters = DeviceAdapters(model_config, host, max_loras=num_seqs, max_lora_rank=RANK)
    element_size = torch.empty((), dtype=dtype).element_size()
    slot_bytes = adapters.num_slots * lora_slot_bytes(model_config, RANK, element_size)
    with model_shape.random_weights_instead():
        engine = create_engine(model_dir, device=device, dtype=dtype,
                               kv_cache=KVCacheBudget(num_bytes=plan["kv_bytes"] + slot_bytes),
                               scheduler_config=SchedulerConfig(max_num_seqs=num_seqs),
                               adapters=adapters)
    digests, num_pinned = [], 0
    for index, path in enumerate(adapter_dirs):
        loaded = files.load(str(path))
        num_pinned += all(w.a.is_pinned() and w.b.is_pinned() for w in loaded.modules.values())
        host.put(AdapterSource(f"gpu-check/a{index}@1", str(path), loaded.digest), loaded)
        if not engine.try_place_adapter(loaded.digest):
            raise RuntimeError(f"adapter {index} found no device slot")
        digests.append(loaded.digest)
    holder = types.SimpleNamespace(engine=engine, host=host, num_pinned=num_pinned)
    return holder, digests


def _measure(holder, digests, plan: dict, clock, num_seqs: int) -> list[dict]:
    """Best tokens/s of each case over the rounds; cases take turns within a round."""
    cases = {n: [None] * num_seqs if n == 0 else [digests[i % n] for i in range(num_seqs)]
             for n in plan["distinct"]}
    for adapters in cases.values() if plan["is_warmed_up"] else ():
        # Compiles the kernels and fills the allocator's caches before anything is timed.
        decode_tokens_per_second(holder.engine, adapters, prompt_len=16, num_tokens=4)
    best: dict[int, float] = {}
    for round_index in range(plan["rounds"]):
        for num_distinct, adapters in cases.items():
            if not clock.can_start(15.0):
                clock.skip(f"round {round_index + 1}, {num_distinct} distinct")
                continue
            rate = decode_tokens_per_second(holder.engine, adapters, prompt_len=16,
                                            num_tokens=plan["tokens"])
            best[num_distinct] = max(rate, best.get(num_distinct, 0.0))
    return [{"distinct": n, "tokens_per_s": round(rate, 1)} for n, rate in sorted(best.items())]


def _add_ratios(rows: list[dict], shape: dict, element_size: int, bandwidth: float) -> None:
    """vs base, extra ms per step over base, the weight-reading bound of each case, and
    the step's time against the time to read its weights once at the copy bandwidth
    (`read_ms`): a step far slower than that is bound by something else (launches)."""
    base = next((row for row in rows if row["distinct"] == 0), None)
    base_bytes = model_shape.num_weight_bytes(shape, element_size)
    adapter_bytes = model_shape.num_adapter_bytes(shape, RANK, element_size)
    num_seqs = max(row["distinct"] for row in rows) if rows else 0
    for row in rows:
        row["vs_base"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3) if base else None
        if base:
            step_ms = 1e3 * num_seqs / row["tokens_per_s"]
            row["extra_ms_per_step"] = round(step_ms - 1e3 * num_seqs / base["tokens_per_s"], 2)
        step_bytes = base_bytes + row["distinct"] * adapter_bytes
        row["bandwidth_bound_vs_base"] = round(base_bytes / step_bytes, 3)
        if num_seqs:
            row["step_ms"] = round(1e3 * num_seqs / row["tokens_per_s"], 2)
        row["read_ms"] = round(1e3 * step_bytes / bandwidth, 2)
