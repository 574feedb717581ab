"""Which waiting request the scheduler admits next: fair share between tenants, or FIFO.

Fair share is the virtual token counter (VTC) of Sheng et al., "Fairness in Serving Large
Language Models" (OSDI '24): every tenant has a counter of the service it received —
prompt tokens computed weigh 1, output tokens 2, as in the paper — and the waiting
request of the tenant with the smallest counter goes first (within a tenant, in queue
order). A tenant that becomes active again (a request arrives while it has none waiting
or running) is lifted to the smallest counter of the active tenants, so idle time banks
no credit: a tenant cannot stay quiet for an hour and then own the worker for a minute.

Counters order the queue, but a queue only moves when a sequence seat frees, and under a
flood of long requests that can take a whole request's lifetime. So when every seat is
taken and a tenant with nothing running waits, the tenant holding the most seats (two or
more) gives one up: its newest running request, which has the least work to redo, goes
back to the queue to be recomputed later — a seat yield. The waiting tenant starts in the
next step instead of after the next finish. Counters tied (a tenant lifted on arrival
has its floor's counter) go to the tenant with fewer requests in the scheduler.

Preempted requests (out of KV blocks; recompute) still go back first, whatever their
tenant: they already won their place once. With a single tenant the fair order is FIFO
exactly, and no seat is ever yielded.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
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

    def seat_to_yield(self, waiting: Sequence[Request], running: Sequence[Request],
                      can_start: Callable[[Request], bool]) -> Request | None:
        """With every seat taken: the running request that gives its seat to a waiting
        tenant, or None. `can_start` says whether a waiting request could run now."""
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

    def seat_to_yield(self, waiting: Sequence[Request], running: Sequence[Request],
                      can_start: Callable[[Request], bool]) -> Request | None:
        """Never: first come keeps its seat."""
        return None


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
        request of the tenant with the smallest counter (ties: the tenant with fewer
        requests in the scheduler, then the earliest in the queue)."""
        if waiting[0].is_preempted:
            return waiting.popleft()
        chosen = min(self._firsts(waiting).values(),
                     key=lambda r: (self.counters.get(r.tenant, 0.0), self._num_active[r.tenant]))
        waiting.remove(chosen)
        return chosen

    def seat_to_yield(self, waiting: Sequence[Request], running: Sequence[Request],
                      can_start: Callable[[Request], bool]) -> Request | None:
        """The newest running request of the tenant holding the most seats (at least
        two), when a tenant with no seat has a request that could start now."""
        seats = collections.Counter(r.tenant for r in running)
        if not any(seats[t] == 0 and can_start(r) for t, r in self._firsts(waiting).items()):
            return None
        holder, num_seats = max(seats.items(), key=lambda item: item[1])
        if num_seats < 2:
            return None
        return next(r for r in reversed(running) if r.tenant == holder)

    def _firsts(self, waiting: Sequence[Request]) -> dict[str, Request]:
        """Every waiting tenant's first request, in queue order."""
        firsts: dict[str, Request] = {}
        for request in waiting:
            firsts.setdefault(request.tenant, request)
            if len(firsts) >= len(self._num_active):
                break  # every active tenant has its candidate
        return firsts


def waiting_order(policy: str) -> WaitingOrder:
    """The admission order named `policy`: "fair" (VTC) or "fifo"."""
    if policy == "fair":
        return FairShare()
    if policy == "fifo":
        return FifoOrder()
    raise ValueError(f"queue policy must be one of {', '.join(QUEUE_POLICIES)}, got {policy!r}")
