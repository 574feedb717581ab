"""The engine loop: one step = schedule, run, apply results.

Synchronous and single-threaded; the worker runs it in its engine loop. The runner
(every tensor) comes in through a small protocol, so this module stays pure Python. It
takes and returns token ids and loads no tokenizer: text is the frontend's.
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
from lorafleet.dataplane.engine.prompt_rules import InvalidRequestError, PromptLimits
from lorafleet.dataplane.engine.request import FinishReason, Request
from lorafleet.dataplane.engine.scheduler import Scheduler, SchedulerOutput
from lorafleet.dataplane.engine.snapshot import EngineSnapshot, snapshot_of
from lorafleet.dataplane.engine.stream import RequestStream


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


class Engine:
    """Continuous-batching engine over a scheduler and a runner; it takes and returns
    token ids (text is the frontend's: dataplane/server/frontend.py)."""

    def __init__(
        self, scheduler: Scheduler, runner: Runner, *, eos_token_ids: Iterable[int],
        vocab_size: int, max_model_len: int, clock=time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.eos_token_ids = frozenset(eos_token_ids)
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.limits = PromptLimits(max_model_len, vocab_size,
                                   scheduler.allocator.num_blocks * scheduler.allocator.block_size)
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
        """Queues a request given as token ids (the frontend tokenizes); `tenant` is whom
        fair share counts it for, and with `cache_salt` the scope its prompt's KV is
        shared in (prefix_cache.py). One-way: a request that cannot be served (the
        prompt rules, prompt_rules.py, or an id in use) is not queued; its final output,
        FinishReason.ERROR with ErrorKind.INVALID_REQUEST and the reason, comes with the
        next step()."""
        request = Request(
            request_id=request_id, prompt_token_ids=tuple(int(t) for t in prompt_token_ids),
            params=params or SamplingParams(), arrival_time=self._clock(), adapter=adapter,
            tenant=tenant, cache_salt=cache_salt,
        )
        stream = RequestStream(request, self.eos_token_ids)
        try:
            self._check(request)
        except InvalidRequestError as exc:
            self._pending.append(stream.output(FinishReason.ERROR, str(exc),
                                               ErrorKind.INVALID_REQUEST))
            return
        self.scheduler.add(request)
        self._streams[request_id] = stream

    def _check(self, request: Request) -> None:
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request_id: {request.request_id!r} is already in use")
        self.limits.check_servable(request.prompt_token_ids, request.params)

    def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Ends a request now (cancelled, or `reason`: STOP when the frontend matched a
        stop string) and frees its blocks; its final output comes with the next step().
        False if the request is unknown or already finished."""
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        self._pending.append(self._finish(stream, reason))
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

    def cancel_eviction(self, key: Hashable) -> None:
        """Withdraws a deferred eviction of `key`: its slot stays (nothing happens when
        the eviction is done already)."""
        self._evicting.discard(key)

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
