"""Part 3: the engine's greedy decoding on the device, token for token against transformers.

The cases of tests/engine/test_greedy_parity.py (tiny float32 checkpoints from
tests/support/tiny_models.py; eight prompts decoding together, then with a KV cache small
enough to preempt, then prefill cut into chunks of 10 tokens), with the engine on the
device under test and transformers' reference on CPU.
"""

from __future__ import annotations

import pathlib
import tempfile

import torch

from benchmarks.gpu_check.report import outcome
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import create_engine
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget, bytes_per_block
from tests.engine.conftest import _generate, make_prompts
from tests.engine.drive import GREEDY, run_all, tokens_of
from tests.engine.test_greedy_parity import ARCHS
from tests.support.tiny_models import make_checkpoint

CAP_S = 120.0
BLOCK_SIZE = 4
# name -> (KV blocks, scheduler limits), as in test_greedy_parity.py.
CASES = {"together": (256, {}), "preempted": (16, {}),
         "chunked": (256, {"max_num_batched_tokens": 10})}


def run(device: torch.device, clock, *, is_dry_run: bool) -> dict:
    """Every arch x case; the part passes when each output matches transformers'."""
    import transformers

    archs = ARCHS[:1] if is_dry_run else ARCHS
    cases = dict(list(CASES.items())[:1]) if is_dry_run else CASES
    prompts = make_prompts((3, 7, 12)) if is_dry_run else make_prompts()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            if not clock.can_start(15.0):
                clock.skip(f"arch {arch}")
                continue
            directory = make_checkpoint(pathlib.Path(tmp) / arch, arch)
            model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
            reference = [_generate(model, prompt) for prompt in prompts]
            for case, (num_blocks, limits) in cases.items():
                rows.append({"arch": arch, "case": case,
                             **_compare(directory, device, prompts, reference, num_blocks, limits)})
    num_matched = sum(row["is_match"] for row in rows)
    is_failed = not rows or num_matched < len(rows)
    notes = [f"{num_matched}/{len(rows)} runs match transformers token for token "
             f"({len(prompts)} prompts each, float32, engine on {device.type})"]
    return {"status": "failed" if is_failed else outcome(clock), "rows": rows, "notes": notes}


def _compare(directory, device, prompts, reference, num_blocks: int, limits: dict) -> dict:
    """One engine run on `device`; whether every prompt's tokens equal the reference."""
    config = ModelConfig.from_dir(directory)
    block_bytes = bytes_per_block(config, BLOCK_SIZE, torch.float32)
    engine = create_engine(directory, device=device, dtype="float32", block_size=BLOCK_SIZE,
                           kv_cache=KVCacheBudget(num_bytes=num_blocks * block_bytes),
                           scheduler_config=SchedulerConfig(**limits))
    if engine.runner.model.device.type != device.type:
        raise RuntimeError(f"engine model is on {engine.runner.model.device}, not {device}")
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params=GREEDY)
    outputs = run_all(engine)
    diverged = [i for i in range(len(prompts)) if tokens_of(outputs[f"r{i}"]) != reference[i]]
    is_freed = engine.allocator.num_free_blocks == engine.allocator.num_blocks
    return {"diverged_prompts": ",".join(map(str, diverged)) or "-", "is_kv_freed": is_freed,
            "is_match": not diverged and is_freed}
