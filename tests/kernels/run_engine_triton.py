"""Greedy decoding through the engine with attention in the Triton kernels, on CPU;
started by test_paged_attention_engine.py.

    TRITON_INTERPRET=1 python -m tests.kernels.run_engine_triton MODEL_DIR REQUEST_JSON

REQUEST_JSON: {"prompts": [[ids]], "limits": {SchedulerConfig fields}}. Prints one JSON
line: each prompt's tokens, how many times the kernels ran, how many steps mixed decodes
with prefill chunks, and how many were also described for the torch path (none should be). Only on CUDA does `paged_attention` pick the
kernels, so this process lets it pick them on CPU, where the interpreter runs them.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def main(model_dir: str, request_json: str) -> None:
    """Runs every prompt to completion and prints the result line."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    from lorafleet.dataplane.model import attention

    attention.runs_paged_kernels = lambda device: True  # before batch.py binds the name
    calls = {"kernels": 0, "torch_described": 0, "mixed_steps": 0}
    kernel = attention.paged_attention_triton

    def counting_kernel(*args, **kwargs):
        calls["kernels"] += 1
        return kernel(*args, **kwargs)

    attention.paged_attention_triton = counting_kernel
    from lorafleet.dataplane.runner.batch import BatchBuilder
    from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of

    request = json.loads(request_json)
    engine = make_engine(model_dir, **request["limits"])
    runner = engine.runner.inner
    old = runner.builder
    runner.builder = BatchBuilder(old.block_size, torch.device("cpu"), old.sliding_window,
                                  is_paged=True)
    build = runner.builder.build

    def watching_build(plan):
        batch = build(plan)
        calls["torch_described"] += bool(batch.attention.decodes or batch.attention.prefills)
        calls["mixed_steps"] += bool(batch.attention.paged.num_decodes
                                     and batch.attention.paged.num_prefills)
        return batch

    runner.builder.build = watching_build
    for i, prompt in enumerate(request["prompts"]):
        engine.add_request(f"r{i}", prompt, params=GREEDY)
    outputs = run_all(engine)
    tokens = [tokens_of(outputs[f"r{i}"]) for i in range(len(request["prompts"]))]
    print(json.dumps({"tokens": tokens, **calls}))


if __name__ == "__main__":
    main(*sys.argv[1:])
