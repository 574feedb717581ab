"""Runs inside vLLM's own interpreter (e.g. /opt/vllm-cpu/bin/python), not lorafleet's.

Reads one job (JSON) on stdin, times vLLM's offline `LLM.generate` on each cell of the job
and prints one line per event on stdout, each starting with `RESULT_PREFIX`:
  {"kind": "hello", "vllm": VERSION, "torch": VERSION, "python": VERSION}
  {"kind": "cell", "name": NAME, "seconds": [s, ...], "tokens": [[id, ...], ...]}
  {"kind": "done"}
or {"kind": "error", "message": TEXT} (then exit status 1). vLLM's own logging goes to
the same stream and is ignored by the reader.

Job: {"model": DIR, "enable_lora": bool, "max_loras": N, "max_lora_rank": R,
      "adapters": [DIR, ...], "max_model_len": N, "warmups": N, "repeats": N,
      "cells": [{"name": NAME, "max_tokens": N,
                 "rows": [{"prompt": [id, ...], "adapter": INDEX or null}, ...]}]}

Only the standard library and vllm are imported here: lorafleet is not installed in
vLLM's environment.
"""

import json
import platform
import sys
import time

RESULT_PREFIX = "LORAFLEET_SIDE "


def emit(event: dict) -> None:
    """Prints one protocol line (flushed, so the reader sees progress)."""
    print(RESULT_PREFIX + json.dumps(event), flush=True)


def build_llm(job: dict):
    """The offline engine, greedy-ready, with token-id prompts (no tokenizer: the
    benchmark's vocabulary is larger than its checkpoint's small tokenizer)."""
    from vllm import LLM

    options = dict(model=job["model"], dtype="float32", skip_tokenizer_init=True,
                   max_model_len=job["max_model_len"], seed=0)
    if job["enable_lora"]:
        options.update(enable_lora=True, max_loras=job["max_loras"],
                       max_lora_rank=job["max_lora_rank"])
    return LLM(**options)


def run_cell(llm, cell: dict, adapters: list, warmups: int, repeats: int) -> dict:
    """Wall seconds of `repeats` generate calls after `warmups` unmeasured ones, and the
    greedy tokens of the last call."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    new = cell["max_tokens"]
    params = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0,
                            ignore_eos=True, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=row["prompt"]) for row in cell["rows"]]
    # lora_int_id must be >= 1; the same id names the same adapter in every cell.
    loras = [None if row["adapter"] is None else
             LoRARequest(f"adapter{row['adapter']}", row["adapter"] + 1, adapters[row["adapter"]])
             for row in cell["rows"]]
    lora_request = loras if any(loras) else None
    seconds, outputs = [], []
    for attempt in range(warmups + repeats):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
        if attempt >= warmups:
            seconds.append(time.perf_counter() - started)
    tokens = [list(output.outputs[0].token_ids) for output in outputs]
    return {"kind": "cell", "name": cell["name"], "seconds": seconds, "tokens": tokens}


def main() -> int:
    """Runs the job on stdin; returns the exit status."""
    try:
        job = json.loads(sys.stdin.read())
        import vllm  # first: without it, fail before paying for torch's import

        versions = {"vllm": vllm.__version__, "python": platform.python_version()}
        import torch

        emit({"kind": "hello", "torch": torch.__version__, **versions})
        llm = build_llm(job)
        for cell in job["cells"]:
            emit(run_cell(llm, cell, job["adapters"], job["warmups"], job["repeats"]))
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the reader
        emit({"kind": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"kind": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
