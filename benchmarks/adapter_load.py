"""Adapter read path: validate_adapter and load_adapter on Llama-7B-shaped adapters.

No target: this reports how long a cold adapter spends in the loader (reading, checking
every value, digesting, casting) before it can be copied into a slot, per rank. The
adapters are synthetic (random, fp16 on disk, all seven projections of 32 layers).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import torch
from safetensors.torch import save_file

from benchmarks.results import append_rows
from lorafleet.dataplane.adapters.loader import load_adapter, validate_adapter
from lorafleet.dataplane.model.config import ModelConfig

LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
}
_PARENT = {
    "o_proj": "self_attn",
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def write_adapter(directory: pathlib.Path, config: ModelConfig, rank: int) -> int:
    """Writes a random fp16 PEFT adapter on every projection; returns its file size."""
    gen = torch.Generator().manual_seed(rank)
    tensors = {}
    for layer in range(config.num_layers):
        for proj, (in_features, out_features) in config.projection_shapes().items():
            key = f"base_model.model.model.layers.{layer}.{_PARENT[proj]}.{proj}"
            tensors[f"{key}.lora_A.weight"] = (
                torch.randn(rank, in_features, generator=gen) * 0.01
            ).half()
            tensors[f"{key}.lora_B.weight"] = (
                torch.randn(out_features, rank, generator=gen) * 0.01
            ).half()
    directory.mkdir(parents=True)
    save_file(tensors, directory / "adapter_model.safetensors")
    config_json = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": "all-linear",
        "task_type": "CAUSAL_LM",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config_json))
    return (directory / "adapter_model.safetensors").stat().st_size


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(ranks: list[int], repeats: int) -> list[dict]:
    """Times validate and load (fp16, fp32) per rank; best of `repeats` runs each."""
    config = ModelConfig.from_dict(LLAMA_7B)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rank in ranks:
            uri = str(pathlib.Path(tmp) / f"r{rank}")
            size = write_adapter(pathlib.Path(uri), config, rank)
            row = {"rank": rank, "file_mb": round(size / 1e6, 1)}
            row["validate_s"] = _best_of(
                repeats, lambda u=uri: validate_adapter(u, config, max_lora_rank=64)
            )
            for dtype in (torch.float16, torch.float32):
                name = f"load_{str(dtype).removeprefix('torch.')}_s"
                row[name] = _best_of(
                    repeats,
                    lambda u=uri, d=dtype: load_adapter(u, config, max_lora_rank=64, dtype=d),
                )
            row["load_mb_per_s"] = round(size / 1e6 / row["load_float16_s"], 1)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    """Prints a table and appends JSON lines to benchmarks/results/adapter_load.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.ranks, args.repeats)
    print(
        "adapter_load: Llama-7B shapes, 32 layers x 7 projections, fp16 on disk (best of"
        f" {args.repeats})"
    )
    print(
        f"{'rank':>5} {'file MB':>8} {'validate s':>11} {'load fp16 s':>12} {'load fp32 s':>12} {'MB/s':>7}"
    )
    for row in rows:
        print(
            f"{row['rank']:>5} {row['file_mb']:>8} {row['validate_s']:>11.3f} {row['load_float16_s']:>12.3f}"
            f" {row['load_float32_s']:>12.3f} {row['load_mb_per_s']:>7}"
        )
    append_rows("adapter_load", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
