"""Greedy decoding with adapters through emulated CUDA graphs, on CPU; started by
test_decode_graphs.py.

    TRITON_INTERPRET=1 python -m tests.engine.run_graphs_emulated REQUEST_JSON

REQUEST_JSON: {"base": dir, "adapters": {name: dir}, "num_requests": n, "naive": bool}.
The worker runs as on a GPU: LoRA and attention in the Triton kernels (the interpreter),
decode steps captured once per bucket and replayed (graph_emulation.py), prefill steps
eager. With "naive", each step's LoRA batch is built on the host before the step, as
an eager step does, instead of being read from the static slot buffer: a runner that
forgot that graphs replay fixed launches on fixed tensors. The tests expect that to go
wrong. Prints one JSON line: every request's tokens, the
captures and replays, and what changed between capture and replay.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import torch


def main(request_json: str) -> None:
    """Runs the requests to completion and prints the result line."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    from lorafleet.dataplane.model import attention

    attention.runs_paged_kernels = lambda device: True  # before batch.py binds the name
    from lorafleet.dataplane.lora import slots
    from lorafleet.dataplane.runner.batch import BatchBuilder
    from lorafleet.kernels.batch import LoraBatch
    from lorafleet.kernels.bgmv import bgmv_triton
    from lorafleet.kernels.sgmv import sgmv_triton
    from tests.engine.graph_emulation import attach_emulated_graphs
    from tests.lora.test_engine_lora import _engine, _requests, _run

    def add_lora_as_on_a_gpu(y, x, buffers, *, batch, is_checked=False):
        kernel = bgmv_triton if batch.is_bgmv else sgmv_triton
        kernel(y, x, buffers, batch=batch, is_checked=True)

    slots.add_lora = add_lora_as_on_a_gpu
    request = json.loads(request_json)
    adapters = {name: pathlib.Path(path) for name, path in request["adapters"].items()}
    parts, digests = _engine(pathlib.Path(request["base"]), adapters, max_loras=3,
                             max_cpu_loras=8, max_num_seqs=3)
    engine = parts.engine
    runner = engine.runner
    old = runner.builder
    runner.builder = BatchBuilder(old.block_size, torch.device("cpu"), old.sliding_window,
                                  is_paged=True)
    graphs = attach_emulated_graphs(runner, scratch_block=engine.allocator.try_allocate(1)[0],
                                    block_size=engine.allocator.block_size, max_num_seqs=5,
                                    max_context=64)
    if request["naive"]:
        _build_lora_batch_outside_the_graph(graphs, LoraBatch)
    seen = _watch(graphs)
    names = [*request["adapters"], None]
    planned = _requests(names, digests, request["num_requests"])
    tokens = _run(engine, [(rid, digest, prompt) for rid, digest, prompt, _ in planned])
    print(json.dumps({"tokens": {rid: tokens[rid] for rid, *_ in planned},
                      "names": {rid: name for rid, _, _, name in planned},
                      "captures": graphs.captures,
                      "replays": sum(graphs.replays.values()), **seen}))


def _build_lora_batch_outside_the_graph(graphs, lora_batch) -> None:
    """The mistake graphs punish: each step's LoRA batch is built on the host before the
    step (from its own adapters' slots, as an eager step does) and handed to the forward
    pass; a capture records the tensors of the batch it saw, and every replay reads them."""
    fill, batches = graphs._fill, {}

    def fill_and_build(entries, bucket):
        fill(entries, bucket)
        batches["now"] = lora_batch.from_slots(graphs._host_slots[:bucket])

    graphs._fill = fill_and_build
    graphs._lora = lambda bucket: graphs.lora_step(batches["now"])


def _watch(graphs) -> dict:
    """Wraps graphs.run to note, per captured bucket, how many distinct adapters its
    capture saw and the most a later replay of it held, and whether a slot held another
    adapter at a later replay than at an earlier one."""
    seen = {"at_capture": {}, "most_at_replay": {}, "slot_swapped_between_replays": False}
    holder: dict[int, object] = {}
    run = graphs.run

    def watched(entries):
        bucket = graphs.shape.bucket_for(len(entries))
        has_lora = any(e.adapter is not None for e in entries)
        key = f"{bucket},{int(has_lora)}"
        distinct = len({e.adapter for e in entries if e.adapter is not None})
        if (bucket, has_lora) not in graphs._graphs:
            seen["at_capture"][key] = distinct
        else:
            seen["most_at_replay"][key] = max(seen["most_at_replay"].get(key, 0), distinct)
            for e in entries:
                if e.adapter_slot is not None:
                    before = holder.setdefault(e.adapter_slot, e.adapter)
                    seen["slot_swapped_between_replays"] |= before != e.adapter
                    holder[e.adapter_slot] = e.adapter
        return run(entries)

    graphs.run = watched
    return seen


if __name__ == "__main__":
    main(*sys.argv[1:])
