"""Which waiting request the scheduler admits next: fair share between tenants, or FIFO.

Fair share is the virtual token counter (VTC) of Sheng et al., "Fairness in Serving Large
Language Models" (OSDI '24): every tenant has a counter of the service it received —
prompt tokens computed weigh 1, output tokens 2, as in the paper — and the waiting
request of the tenant with the smallest counter goes first (within a tenant, in queue
order). A tenant that becomes active again (a request arrives while it has none waiting
or running) is lifted to the smallest counter of the active tenants, so idle time banks
no credit: a tenant cannot stay quiet for an hour and then own the worker for a minute.

Preempted requests (recompute) still go back first, whatever their tenant: they already
won their place once. With a single tenant the fair order is FIFO exactly.
"""

from __future__ import annotations

import collections
from typing import Protocol

from lorafleet.dataplane.engine.request import Request

PREFILL_WEIGHT = 1.0
DECODE_WEIGHT = 2.0
QUEUE_POLICIES = ("fair", "fifo")


class WaitingOrder(Protocol):
    """What the scheduler tells its admission order, and asks it."""

    def on_add(self, request: Request) -> None:
        """A request arrived."""
        ...

    def on_finish(self, request: Request) -> None:
        """A request left the scheduler (finished, cancelled or failed)."""
        ...

    def charge(self, request: Request, num_new: int) -> None:
        """`num_new` of the request's tokens are computed in the step being planned."""
        ...

    def pick(self, waiting: collections.deque[Request]) -> Request:
        """Removes and returns the waiting request to try next (`waiting` is not empty)."""
        ...


class FifoOrder:
    """First come, first served (preempted requests are at the head of the queue)."""

    def on_add(self, request: Request) -> None:
        """Nothing to track."""

    def on_finish(self, request: Request) -> None:
        """Nothing to track."""

    def charge(self, request: Request, num_new: int) -> None:
        """Nothing to track."""

    def pick(self, waiting: collections.deque[Request]) -> Request:
        """The head of the queue."""
        return waiting.popleft()


class FairShare:
    """Virtual token counters per tenant; the least served active tenant goes first."""

    def __init__(self, prefill_weight: float = PREFILL_WEIGHT,
                 decode_weight: float = DECODE_WEIGHT) -> None:
        self.prefill_weight = prefill_weight
        self.decode_weight = decode_weight
        self.counters: dict[str, float] = {}
        self._num_active: collections.Counter[str] = collections.Counter()

    def on_add(self, request: Request) -> None:
        """Counts the request; lifts its tenant if it was idle (no banked credit)."""
        tenant = request.tenant
        if not self._num_active[tenant]:
            floor = min((self.counters.get(t, 0.0) for t in self._num_active), default=0.0)
            self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor)
        self._num_active[tenant] += 1

    def on_finish(self, request: Request) -> None:
        """Uncounts the request; with no tenant active, counters start over from zero."""
        self._num_active[request.tenant] -= 1
        if self._num_active[request.tenant] <= 0:
            del self._num_active[request.tenant]
        if not self._num_active:
            self.counters.clear()  # also bounds the dict to the tenants seen since idle

    def charge(self, request: Request, num_new: int) -> None:
        """Adds the step's tokens: prompt (and recomputed) tokens at the prefill weight,
        output tokens at the decode weight."""
        is_decode = request.num_computed_tokens >= len(request.prompt_token_ids)
        weight = self.decode_weight if is_decode else self.prefill_weight
        self.counters[request.tenant] = self.counters.get(request.tenant, 0.0) + weight * num_new

    def pick(self, waiting: collections.deque[Request]) -> Request:
        """A preempted request if one waits (they are at the head), else the first waiting
        request of the tenant with the smallest counter (ties: the earliest in the queue)."""
        if waiting[0].num_preemptions:
            return waiting.popleft()
        firsts: dict[str, Request] = {}
        for request in waiting:
            firsts.setdefault(request.tenant, request)
            if len(firsts) >= len(self._num_active):
                break  # every active tenant has its candidate
        chosen = min(firsts.values(), key=lambda r: self.counters.get(r.tenant, 0.0))
        waiting.remove(chosen)
        return chosen


def waiting_order(policy: str) -> WaitingOrder:
    """The admission order named `policy`: "fair" (VTC) or "fifo"."""
    if policy == "fair":
        return FairShare()
    if policy == "fifo":
        return FifoOrder()
    raise ValueError(f"queue policy must be one of {', '.join(QUEUE_POLICIES)}, got {policy!r}")
