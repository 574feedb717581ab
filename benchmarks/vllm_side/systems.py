"""lorafleet's side of a cell, timed as vLLM's is (warm-ups, then the median of repeats):
the engine stepped in this process, `lorafleet serve` reached over gRPC by one stream per
row, and transformers + peft. The pieces are the serving benchmark's."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import statistics

from benchmarks.serving.cells import Mode, Target, run_cell
from benchmarks.serving.references import EngineReference, on_thread
from benchmarks.serving.worker_process import BASE_MODEL_NAME, serve_command, start_worker
from benchmarks.serving.workload import RequestSpec


def median_rate(measure, warmups: int, repeats: int) -> float:
    """The median of `repeats` calls of `measure()` (tok/s) after `warmups` unmeasured ones."""
    for _ in range(warmups):
        measure()
    return statistics.median(measure() for _ in range(repeats))


class TokenEngine(EngineReference):
    """The serving benchmark's in-process engine, which can also hand back the greedy
    tokens of each request (for the check against vLLM)."""

    def tokens(self, requests: list[RequestSpec]) -> list[list[int]]:
        """Each request's output token ids, all requests in flight at once."""
        return on_thread(self._tokens, requests)

    def _tokens(self, requests: list[RequestSpec]) -> list[list[int]]:
        from lorafleet.dataplane.engine.params import SamplingParams

        engine = self.engine
        outputs: dict[str, list[int]] = {}
        for index, spec in enumerate(requests):
            params = SamplingParams(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True)
            request_id = f"tokens-{index}"
            outputs[request_id] = []
            engine.add_request(request_id, spec.prompt, params=params,
                               adapter=self._digests.get(spec.adapter))
        while engine.has_unfinished():
            for output in engine.step():
                outputs[output.request_id].extend(output.new_token_ids)
        return [outputs[f"tokens-{index}"] for index in range(len(requests))]


@contextlib.contextmanager
def served(model_dir: pathlib.Path, adapters: dict[str, pathlib.Path], num_slots: int,
           cpu_thread_wait: str):
    """A `lorafleet serve --cpu-thread-wait WAIT` subprocess holding every adapter in
    `num_slots` device slots; yields the serving benchmark's Target for it."""
    options = ["--device", "cpu", "--max-loras", str(num_slots), "--max-lora-rank", "16",
               "--max-cpu-loras", str(max(len(adapters), 1)), "--cpu-thread-wait", cpu_thread_wait]
    process = start_worker(serve_command(model_dir, list(adapters.items()), options,
                                         http=False))
    try:
        yield Target(process.address, process.metrics_url, None, BASE_MODEL_NAME, process.pid)
    finally:
        process.stop()


def server_rate(target: Target, requests: list[RequestSpec]) -> tuple[float, float]:
    """(output tok/s, client CPU seconds) with every request sent at once, one gRPC stream
    each, from the serving benchmark's asyncio client."""
    row, _ = asyncio.run(run_cell(target, Mode(burst=True, tier_poll=0), requests))
    if row["num_errors"]:
        raise RuntimeError(f"the server refused requests: {row['errors']}")
    return row["output_tok_s"], row["client_cpu_s"]
