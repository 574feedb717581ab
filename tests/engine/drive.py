"""Driving an engine to completion in tests, and watching the plans it runs."""

from __future__ import annotations

import torch

from lorafleet.dataplane.engine.engine import Engine
from lorafleet.dataplane.engine.outputs import RequestOutput
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import DTYPES, create_engine
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget, bytes_per_block
from lorafleet.dataplane.server.detokenize import Detokenizer

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


class RecordingRunner:
    """Wraps a runner and keeps every plan it executed."""

    def __init__(self, runner) -> None:
        self.inner = runner
        self.plans = []

    def execute(self, plan):
        self.plans.append(plan)
        return self.inner.execute(plan)

    def release(self, request_ids):
        self.inner.release(request_ids)


def make_engine(directory, *, num_blocks=256, block_size=4, dtype="float32",
                prefix_cache_scope=None, **limits) -> Engine:
    """An engine on cpu whose KV cache holds exactly `num_blocks` blocks, plans recorded;
    prefix caching off unless a scope is given."""
    config = ModelConfig.from_dir(directory)
    block_bytes = bytes_per_block(config, block_size, DTYPES.get(dtype, torch.float32))
    engine = create_engine(
        directory, device="cpu", dtype=dtype, block_size=block_size,
        kv_cache=KVCacheBudget(num_bytes=num_blocks * block_bytes),
        scheduler_config=SchedulerConfig(**limits), prefix_cache_scope=prefix_cache_scope,
    )
    engine.runner = RecordingRunner(engine.runner)
    return engine


def run_all(engine: Engine) -> dict[str, list[RequestOutput]]:
    """Steps until nothing is left; returns every output, grouped by request."""
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    """All token ids a request produced, in order."""
    return [t for out in outputs for t in out.new_token_ids]


def text_of(outputs: list[RequestOutput]) -> str:
    """All text of a request's outputs as the frontend's detokenizer gave them."""
    return "".join(out.text for out in outputs)


def run_detokenized(engine: Engine, tokenizer, request_id: str, prompt: list[int],
                    params: SamplingParams) -> list[RequestOutput]:
    """Runs one request as the worker does: its outputs through the frontend's
    detokenizer, the engine told to stop it when a stop string matched."""
    detokenizer = Detokenizer(tokenizer, tuple(prompt), params.stop)
    engine.add_request(request_id, prompt, params=params)
    outputs: list[RequestOutput] = []
    while engine.has_unfinished():
        for out in engine.step():
            if outputs and outputs[-1].is_finished:
                continue  # the engine's own end of a request the frontend stopped
            outputs.append(detokenizer.process(out))
            if outputs[-1].is_finished and not out.is_finished:
                engine.abort(request_id, FinishReason.STOP)
    return outputs
