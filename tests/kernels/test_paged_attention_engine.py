"""Greedy decoding with attention in the Triton kernels matches transformers token for
token in float32 (the kernels run by Triton's interpreter on CPU, in a subprocess).

The engine's own parity tests run the torch path; these run the same decoding with the
kernels doing every step's attention: prompts prefilled in chunks of 10 tokens, so steps
mix decodes and chunks that start past 0, on a GQA Llama and a Mistral whose 8-token
sliding window is shorter than its prompts.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tests.engine.conftest import NUM_NEW_TOKENS, make_prompts
from tests.support.tiny_models import make_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES = {"llama-gqa": ({}, (3, 12, 25, 36)), "mistral": ({"sliding_window": 8}, (5, 23, 40))}


def _transformers_greedy(directory: pathlib.Path, prompts: list[list[int]]) -> list[list[int]]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokens = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long), max_new_tokens=NUM_NEW_TOKENS, do_sample=False,
                             pad_token_id=0)
        tokens.append(out[0, len(prompt):].tolist())
    return tokens


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CASES))
def test_greedy_decoding_with_triton_attention_matches_transformers(tmp_path, arch):
    overrides, lengths = CASES[arch]
    directory = make_checkpoint(tmp_path / arch, arch, **overrides)
    prompts = make_prompts(lengths)
    request = json.dumps({"prompts": prompts, "limits": {"max_num_batched_tokens": 10}})
    done = subprocess.run(
        [sys.executable, "-m", "tests.kernels.run_engine_triton", str(directory), request],
        cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
        text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tokens"] == _transformers_greedy(directory, prompts)
    assert result["kernels"] > 0 and result["torch_described"] == 0
    assert result["mixed_steps"] > 0, "no step mixed decodes with prefill chunks"
