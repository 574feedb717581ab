"""The engine loop: one step = schedule, run, apply results.

Synchronous and single-threaded; the worker's server runs it on its own thread. The
runner (every tensor) and the tokenizer come in through small protocols, so this module
stays pure Python.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Protocol

from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.outputs import (
    EngineStats,
    ErrorKind,
    RequestOutput,
    SampledToken,
)
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.request import FinishReason, Request
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerOutput
from lorafleet.dataplane.engine.snapshot import EngineSnapshot, snapshot_of
from lorafleet.dataplane.engine.stream import RequestStream


class InvalidRequestError(ValueError):
    """A request the engine cannot serve; the message says why."""

    status_code_name = "INVALID_ARGUMENT"


class Runner(Protocol):
    """Runs one planned step on the model and samples (see lorafleet.dataplane.runner)."""

    def execute(self, plan: SchedulerOutput) -> Mapping[str, SampledToken]:
        """Computes the plan; returns the sampled token of every sampling request."""
        ...

    def release(self, request_ids: Iterable[str]) -> None:
        """Forgets per-request state (sampling generators) of finished requests."""
        ...

    def install_adapter(self, slot: int, key: Hashable) -> None:
        """Copies adapter `key` from the host tier into device slot `slot`."""
        ...

    def clear_adapter_slot(self, slot: int) -> None:
        """Empties device slot `slot`."""
        ...


class Tokenizer(Protocol):
    """Decodes output tokens (see lorafleet.dataplane.tokenizer); prompts arrive as ids."""

    eos_token_ids: tuple[int, ...]

    def decode(self, token_ids: list[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""
        ...


class Engine:
    """Continuous-batching engine over a scheduler, a runner and a tokenizer."""

    def __init__(
        self, scheduler: Scheduler, runner: Runner, tokenizer: Tokenizer, *,
        vocab_size: int, max_model_len: int, clock=time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self._clock = clock
        self._streams: dict[str, RequestStream] = {}
        self._pending: list[RequestOutput] = []
        self._evicting: set[Hashable] = set()  # evictions waiting for running requests
        self._evicted: list[Hashable] = []

    @property
    def allocator(self) -> BlockAllocator:
        """The KV block allocator (for KV use and tests)."""
        return self.scheduler.allocator

    def add_request(
        self, request_id: str, prompt_token_ids: Sequence[int], *,
        params: SamplingParams | None = None, adapter: Hashable | None = None,
        tenant: str = "", cache_salt: str = "",
    ) -> None:
        """Queues a request given as token ids (the frontend tokenizes; see
        dataplane/server/frontend.py); `tenant` is whom fair share counts it for, and
        with `cache_salt` the scope its prompt's KV is shared in (prefix_cache.py)."""
        if request_id in self._streams:
            raise InvalidRequestError(f"request_id {request_id!r} is already in use")
        params = params or SamplingParams()
        token_ids = self._checked_tokens(prompt_token_ids)
        self._check_fits(token_ids, params)
        request = Request(
            request_id=request_id, prompt_token_ids=token_ids, params=params,
            arrival_time=self._clock(), adapter=adapter, tenant=tenant, cache_salt=cache_salt,
        )
        self.scheduler.add(request)
        self._streams[request_id] = RequestStream(request, self.tokenizer)

    def _checked_tokens(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        """The prompt as a tuple of in-vocabulary token ids."""
        token_ids = tuple(int(t) for t in token_ids)
        if not token_ids:
            raise InvalidRequestError("the prompt is empty")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"prompt token ids {bad[:5]} are outside [0, {self.vocab_size})"
            )
        return token_ids

    def _check_fits(self, token_ids: tuple[int, ...], params: SamplingParams) -> None:
        """Rejects prompts longer than the context or than the whole KV cache could hold."""
        if len(token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(token_ids)} tokens; the model's context is {self.max_model_len}"
            )
        longest = min(len(token_ids) + params.max_tokens, self.max_model_len)
        if self.allocator.num_blocks_for(longest) > self.allocator.num_blocks:
            raise InvalidRequestError(
                f"prompt plus max_tokens ({longest} tokens) exceeds the KV cache "
                f"({self.allocator.num_blocks * self.allocator.block_size} tokens)"
            )

    def abort(self, request_id: str) -> bool:
        """Cancels a request and frees its blocks; its final output comes with the next
        step(). False if the request is unknown or already finished."""
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        self._pending.append(self._finish(stream, FinishReason.CANCELLED))
        self._evict_unused()
        return True

    def try_place_adapter(self, key: Hashable) -> bool:
        """Copies a host-resident adapter into a device slot now, if one is free or held
        by an adapter no running request uses; False otherwise (it is placed on use)."""
        slot = self.scheduler.try_place_adapter(key)
        if slot is None:
            return False
        self.runner.install_adapter(slot, key)
        return True

    def evict_adapter(self, key: Hashable) -> bool:
        """Empties `key`'s device slot now (True), or, while a running request uses it,
        once the last such request has ended (False; `take_evicted` reports it then)."""
        if self.scheduler.is_adapter_running(key):
            self._evicting.add(key)
            return False
        self._evicting.discard(key)
        self._clear_slot(key)
        return True

    def take_evicted(self) -> list[Hashable]:
        """Adapters whose deferred eviction (`evict_adapter` said False) happened since
        the last call."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def snapshot(self) -> EngineSnapshot:
        """The engine's load and adapter residency, for everyone else (snapshot.py)."""
        on_device, on_host = self.scheduler.adapter_residency()
        return snapshot_of(self.stats(), on_device, on_host,
                           self.scheduler.waiting_adapters())

    def has_unfinished(self) -> bool:
        """True while any request is waiting or running, or a final output is pending."""
        return self.scheduler.has_unfinished() or bool(self._pending)

    def stats(self) -> EngineStats:
        """Queue depth and KV block use."""
        return EngineStats(
            num_waiting=self.scheduler.num_waiting, num_running=self.scheduler.num_running,
            num_used_blocks=self.allocator.num_used_blocks,
            num_total_blocks=self.allocator.num_blocks,
            num_cached_blocks=self.allocator.num_cached_blocks,
        )

    def step(self) -> list[RequestOutput]:
        """Schedules, runs the model once and returns every request's news."""
        outputs = self._step()
        self._evict_unused()
        return outputs

    def _step(self) -> list[RequestOutput]:
        self._fail_unloadable()
        outputs, self._pending = self._pending, []
        plan = self.scheduler.schedule()
        if plan.is_empty:
            return outputs
        now = self._clock()
        for entry in plan.scheduled:
            self._streams[entry.request_id].mark_scheduled(now)
        try:
            sampled = self.runner.execute(plan)
        except Exception as exc:  # a failed step ends its requests, not the engine
            return outputs + self._fail(plan, exc)
        self.scheduler.update(plan, {k: v.token_id for k, v in sampled.items()})
        now = self._clock()
        for request_id, token in sampled.items():
            outputs.append(self._apply(self._streams[request_id], token, now))
        return outputs

    def _evict_unused(self) -> None:
        """Carries out the deferred evictions whose adapter no running request uses now."""
        for key in [k for k in self._evicting if not self.scheduler.is_adapter_running(k)]:
            self._evicting.discard(key)
            self._clear_slot(key)
            self._evicted.append(key)

    def _clear_slot(self, key: Hashable) -> None:
        slot = self.scheduler.release_adapter(key)
        if slot is not None:
            self.runner.clear_adapter_slot(slot)

    def _apply(self, stream: RequestStream, token: SampledToken, now: float) -> RequestOutput:
        """Turns one sampled token into the request's output, finishing it if it stops."""
        reason = stream.accept(token, now, self.max_model_len)
        if reason is None:
            return stream.output()
        return self._finish(stream, reason)

    def _finish(self, stream: RequestStream, reason: FinishReason, error: str | None = None,
                error_kind: ErrorKind | None = None) -> RequestOutput:
        """Frees the request everywhere and builds its final output."""
        request_id = stream.request.request_id
        self.scheduler.finish(request_id)
        self.runner.release([request_id])
        del self._streams[request_id]
        return stream.output(reason, error, error_kind)

    def _fail_unloadable(self) -> None:
        """Ends the waiting requests of adapters whose load failed, with the reason."""
        for request, reason in self.scheduler.take_unloadable():
            self._pending.append(self._finish(
                self._streams[request.request_id], FinishReason.ERROR, reason,
                ErrorKind.ADAPTER_LOAD_FAILED))

    def _fail(self, plan: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        """Ends every request of a failed step with an error."""
        message = f"{type(exc).__name__}: {exc}"
        return [
            self._finish(self._streams[e.request_id], FinishReason.ERROR, message,
                         ErrorKind.STEP_FAILED)
            for e in plan.scheduled if e.request_id in self._streams
        ]
