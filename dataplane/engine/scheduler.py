"""Iteration-level scheduler: which requests run in the next step, and how many tokens each.

Each request's computed tokens catch up to its length under a per-step token budget, so a
prompt may be prefilled in chunks while other requests decode. Running requests go first,
then waiting ones; when KV blocks run out, the newest running request is preempted and
later recomputed from scratch. Which waiting request goes next is fairness.py's choice:
fair share between tenants by default, FIFO when asked; under fair share, a tenant with
no seat may also take one from the tenant holding the most (a seat yield, fairness.py).
A request admitted with no blocks first takes whatever leading blocks the prefix cache
holds for it (prefix_cache.py); only the rest is computed, and charged.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable, Mapping

from lorafleet.dataplane.engine.adapter_policy import AdapterScheduling
from lorafleet.dataplane.engine.blocks import BlockAllocator
from lorafleet.dataplane.engine.fairness import QUEUE_POLICIES, waiting_order
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.prefix_cache import NoPrefixCache, PrefixCache
from lorafleet.dataplane.engine.request import Request, RequestStatus


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Per-step limits: tokens computed (prefill chunks plus decodes) and sequences;
    `queue_policy`: "fair" (share between tenants) or "fifo" (see fairness.py)."""

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    queue_policy: str = "fair"

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.queue_policy not in QUEUE_POLICIES:
            raise ValueError(f"queue_policy must be one of {QUEUE_POLICIES}, "
                             f"got {self.queue_policy!r}")


@dataclasses.dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step: compute `token_ids` at positions start_position.. .

    `is_sampling` is true when this chunk reaches the end of the request's tokens, so the
    step yields its next token.
    """

    request_id: str
    token_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]
    adapter: Hashable | None
    params: SamplingParams
    is_sampling: bool
    adapter_slot: int | None = None


@dataclasses.dataclass(frozen=True)
class SchedulerOutput:
    """The plan for one step; `slot_installs` are the (device slot, adapter) copies the
    runner performs before the forward pass."""

    scheduled: tuple[ScheduledRequest, ...]
    preempted_ids: tuple[str, ...]
    num_batched_tokens: int
    slot_installs: tuple[tuple[int, Hashable], ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when nothing runs this step."""
        return not self.scheduled


@dataclasses.dataclass
class _StepBudget:
    """What is left of one step's limits while it is being planned."""

    num_tokens: int
    num_seqs: int
    running_adapters: frozenset = frozenset()  # adapters of running requests: pinned
    adapters: set = dataclasses.field(default_factory=set)

    @property
    def is_exhausted(self) -> bool:
        """True when no token or sequence is left for this step."""
        return self.num_tokens <= 0 or self.num_seqs <= 0


class Scheduler:
    """Owns the waiting queue, the running list and every request's KV blocks;
    `prefix_cache` (default: none) shares blocks of equal prefixes between requests."""

    def __init__(
        self, config: SchedulerConfig, allocator: BlockAllocator,
        adapters: AdapterScheduling | None = None,
        prefix_cache: PrefixCache | NoPrefixCache | None = None,
    ) -> None:
        self.config = config
        self.allocator = allocator
        self.adapters = adapters or AdapterScheduling()
        self.prefix_cache = prefix_cache or NoPrefixCache()
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self._requests: dict[str, Request] = {}
        self.order = waiting_order(config.queue_policy)

    @property
    def num_waiting(self) -> int:
        """Requests queued (new or preempted)."""
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        """Requests holding KV blocks."""
        return len(self.running)

    def has_unfinished(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self._requests)

    def get(self, request_id: str) -> Request | None:
        """The unfinished request with this id, if any."""
        return self._requests.get(request_id)

    def waiting_adapters(self) -> frozenset[Hashable]:
        """Adapters that waiting requests ask for."""
        # Built after every step: a set over the waiting queue only when there is one.
        if not self.waiting:
            return frozenset()
        return frozenset(r.adapter for r in self.waiting if r.adapter is not None)

    def is_adapter_running(self, key: Hashable) -> bool:
        """True while a running request uses adapter `key` (its slot is pinned)."""
        return any(r.adapter == key for r in self.running)

    def adapter_residency(self) -> tuple[list[Hashable], list[Hashable]]:
        """(adapters in device slots, adapters in host memory)."""
        return self.adapters.on_device(), self.adapters.on_host()

    def try_place_adapter(self, key: Hashable) -> int | None:
        """A device slot for host-resident `key` outside any step (see
        AdapterScheduling.try_place); None when none can be given."""
        return self.adapters.try_place(key, {r.adapter for r in self.running})

    def release_adapter(self, key: Hashable) -> int | None:
        """Empties `key`'s device slot and returns it (None if it held none); the caller
        makes sure no running request uses it."""
        return self.adapters.release(key)

    def take_unloadable(self) -> list[tuple[Request, str]]:
        """Waiting requests whose adapter failed to load since the last call, each with
        the reason."""
        failures = self.adapters.take_failures()
        if not failures:
            return []
        return [(r, failures[r.adapter]) for r in self.waiting if r.adapter in failures]

    def add(self, request: Request) -> None:
        """Queues a new request."""
        if request.request_id in self._requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        self._requests[request.request_id] = request
        self.waiting.append(request)
        self.order.on_add(request)

    def schedule(self) -> SchedulerOutput:
        """Plans the next step: running requests first, then waiting ones."""
        budget = _StepBudget(self.config.max_num_batched_tokens, self.config.max_num_seqs,
                             frozenset(r.adapter for r in self.running))
        self.adapters.begin_step({r.adapter for r in self._requests.values()})
        scheduled: list[Request] = []
        preempted: list[Request] = []
        yielded = self._yield_a_seat()
        for request in list(self.running):
            if budget.is_exhausted:
                break
            if request.status is not RequestStatus.RUNNING or not self._can_join(request, budget):
                continue
            num_new = min(request.num_pending_tokens, budget.num_tokens)
            if self._try_reserve_running(request, num_new, preempted):
                self._take(request, num_new, budget, scheduled)
        if not preempted:
            self._admit_waiting(budget, scheduled)
        return self._plan(scheduled, yielded + preempted)

    def _yield_a_seat(self) -> list[Request]:
        """With every seat taken, the running request the waiting order says gives its
        seat to a seatless tenant goes back to the queue (see fairness.py)."""
        if len(self.running) < self.config.max_num_seqs or not self.waiting:
            return []
        running_adapters = {r.adapter for r in self.running if r.adapter is not None}
        victim = self.order.seat_to_yield(
            self.waiting, self.running,
            lambda r: r.adapter is None or self.adapters.could_join(r.adapter, running_adapters))
        if victim is None:
            return []
        self._requeue(victim)
        self.waiting.appendleft(victim)  # first of its tenant; the fair order passes it
        return [victim]

    def _admit_waiting(self, budget: _StepBudget, scheduled: list[Request]) -> None:
        """Moves waiting requests to running while blocks and budget last; skips, never
        blocks on, a request whose adapter cannot run this step."""
        skipped: list[Request] = []
        while self.waiting and not budget.is_exhausted:
            request = self._next_waiting()
            if not self._can_join(request, budget, is_new=True):
                skipped.append(request)
                continue
            num_new = self._try_admit(request, budget.num_tokens)
            if num_new is None:
                self.waiting.appendleft(request)
                break
            request.status = RequestStatus.RUNNING
            request.is_preempted = False
            self.running.append(request)
            self._take(request, num_new, budget, scheduled)
        self.waiting.extendleft(reversed(skipped))

    def _next_waiting(self) -> Request:
        """Takes the waiting request to try next off the queue (see fairness.py)."""
        return self.order.pick(self.waiting)

    def _can_join(self, request: Request, budget: _StepBudget, *, is_new: bool = False) -> bool:
        """True when the request's adapter can run in this step (see adapter_policy)."""
        if request.adapter is None:
            return True
        return self.adapters.try_join(request.adapter, budget.adapters,
                                      budget.running_adapters, is_new=is_new)

    def _take(self, request: Request, num_new: int, budget: _StepBudget, out: list) -> None:
        """Charges the request's tokens to the budget and records it for this step."""
        budget.num_tokens -= num_new
        budget.num_seqs -= 1
        self.order.charge(request, num_new)
        if request.adapter is not None:
            budget.adapters.add(request.adapter)
        request.num_scheduled_tokens = num_new
        out.append(request)

    def _try_admit(self, request: Request, num_tokens: int) -> int | None:
        """Takes a waiting request's cached prefix, then the blocks of its next chunk (at
        most `num_tokens`); the tokens it computes now, or None, holding no block, when
        blocks are short."""
        self.prefix_cache.take_cached(request)
        num_new = min(request.num_pending_tokens, num_tokens)
        if not self._try_reserve(request, num_new):
            self._drop_blocks(request)
            return None
        if request.num_cached_tokens is None:  # first admission: what the cache saved it
            request.num_cached_tokens = request.num_computed_tokens
        return num_new

    def _try_reserve(self, request: Request, num_new: int) -> bool:
        """Allocates the blocks the request needs to hold `num_new` more tokens."""
        needed = self.allocator.num_blocks_for(request.num_computed_tokens + num_new)
        blocks = self.allocator.try_allocate(needed - len(request.block_table))
        if blocks is None:
            return False
        request.block_table.extend(blocks)
        return True

    def _try_reserve_running(self, request: Request, num_new: int, preempted: list) -> bool:
        """Like _try_reserve, preempting the newest running requests until blocks suffice;
        returns False when the request itself had to be preempted."""
        while not self._try_reserve(request, num_new):
            victim = self._pick_victim()
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        return True

    def _pick_victim(self) -> Request:
        """The lowest-priority running request: the one admitted last."""
        return self.running[-1]

    def _preempt(self, request: Request) -> None:
        """Frees the request's blocks and queues it first, to be recomputed from scratch
        before any other waiting request."""
        self._requeue(request)
        request.num_preemptions += 1
        request.is_preempted = True
        self.waiting.appendleft(request)

    def _requeue(self, request: Request) -> None:
        """Takes a running request off its seat and its blocks; it will be recomputed."""
        self.running.remove(request)
        self._drop_blocks(request)
        request.status = RequestStatus.WAITING

    def _drop_blocks(self, request: Request) -> None:
        """Frees the request's blocks (cached ones stay cached); nothing is computed."""
        self.allocator.free(request.block_table)
        request.block_table = []
        request.num_computed_tokens = 0

    def _plan(self, scheduled: list[Request], preempted: list[Request]) -> SchedulerOutput:
        """Freezes this step's decisions for the runner."""
        entries = []
        for r in scheduled:
            start, num_new = r.num_computed_tokens, r.num_scheduled_tokens
            entries.append(ScheduledRequest(
                request_id=r.request_id, token_ids=r.token_ids(start, start + num_new),
                start_position=start, block_table=tuple(r.block_table), adapter=r.adapter,
                params=r.params, is_sampling=start + num_new == r.num_tokens,
                adapter_slot=self._slot_of(r.adapter),
            ))
        return SchedulerOutput(
            scheduled=tuple(entries),
            preempted_ids=tuple(r.request_id for r in preempted),
            num_batched_tokens=sum(len(e.token_ids) for e in entries),
            slot_installs=self.adapters.take_installs(),
        )

    def _slot_of(self, adapter: Hashable | None) -> int | None:
        return None if adapter is None else self.adapters.slots.slot_of(adapter)

    def update(self, output: SchedulerOutput, sampled: Mapping[str, int]) -> None:
        """Records a finished step: computed tokens advance, sampled tokens are appended."""
        for entry in output.scheduled:
            request = self._requests.get(entry.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue
            request.num_computed_tokens += len(entry.token_ids)
            self.prefix_cache.cache_computed(request, len(entry.token_ids))
            token = sampled.get(entry.request_id)
            if token is not None:
                request.output_token_ids.append(token)

    def finish(self, request_id: str) -> Request | None:
        """Removes a request wherever it is and frees its blocks; None if unknown."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.allocator.free(request.block_table)
        request.block_table = []
        request.status = RequestStatus.FINISHED
        self.order.on_finish(request)
        return request
