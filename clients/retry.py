"""When a Generate call is tried again, and how long to wait first.

Only UNAVAILABLE is retried (the server could not take the request: not reachable,
draining, no worker for the adapter yet), and only while the stream has yielded nothing:
a stream that already produced tokens is never replayed, because the caller has seen them.
Every attempt shares the call's one deadline.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

from lorafleet.clients.errors import LorafleetError


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and exponential backoff with full jitter (a random pause in
    [0, min(max_backoff, initial_backoff * multiplier ** (attempt - 1))])."""

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def pause_before_retry(self, error: LorafleetError, attempt: int, *, is_started: bool,
                           deadline: Deadline) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when `error` is final."""
        if is_started or error.code != grpc.StatusCode.UNAVAILABLE:
            return None
        if attempt >= self.max_attempts:
            return None
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        pause = random.uniform(0.0, ceiling)
        remaining = deadline.remaining()
        if remaining is not None and pause >= remaining:
            return None  # the next attempt could not start in time; the real cause is better
        return pause


class Deadline:
    """One deadline for a call and all its attempts; None means no deadline."""

    def __init__(self, timeout: float | None):
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never below zero), or None without a deadline."""
        if self._end is None:
            return None
        return max(self._end - time.monotonic(), 0.0)
