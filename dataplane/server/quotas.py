"""Per-tenant limits at admission: concurrent requests and output tokens per second.

A tenant is the first part of an adapter name (`acme/support` -> "acme"); requests for
the base model belong to tenant "" unless a caller's principal names one. Each worker
enforces its own limits (they are not shared across a fleet). Beyond a limit, Generate
is refused before any work with RESOURCE_EXHAUSTED and `google.rpc.QuotaFailure` details
naming the tenant and the limit (HTTP: 429).

Tokens per second is a token bucket per tenant holding at most one second's worth:
every output token streamed is taken from it, a request already running is never cut
off, and new requests are refused while the bucket is empty — so over any long window a
tenant gets at most its rate, and one burst may briefly overdraw it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import time
from collections.abc import Callable, Mapping

from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from lorafleet.dataplane.engine.fairness import QUEUE_POLICIES


@dataclasses.dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits; None means unlimited."""

    max_requests: int | None = None
    max_tokens_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max requests must be >= 1, got {self.max_requests}")
        if self.max_tokens_per_second is not None and self.max_tokens_per_second <= 0:
            raise ValueError(f"tokens per second must be > 0, got {self.max_tokens_per_second}")


@dataclasses.dataclass(frozen=True)
class QuotaConfig:
    """Limits of every tenant: `default`, except where `overrides` names the tenant."""

    default: TenantLimits = TenantLimits()
    overrides: Mapping[str, TenantLimits] = dataclasses.field(default_factory=dict)

    def limits_for(self, tenant: str) -> TenantLimits:
        """The limits that apply to `tenant`."""
        return self.overrides.get(tenant, self.default)


_KEYS = {"requests": "max_requests", "tps": "max_tokens_per_second"}


def parse_tenant_limit(text: str) -> tuple[str, dict[str, float]]:
    """Parses "acme=requests:8,tps:200" into ("acme", the TenantLimits fields it sets);
    either part may be left out. Raises ValueError."""
    tenant, sep, spec = text.partition("=")
    if not sep or not tenant or not spec:
        raise ValueError(f"{text!r}: expected TENANT=requests:N,tps:N")
    fields = {}
    for part in spec.split(","):
        key, sep, value = part.partition(":")
        if not sep or key not in _KEYS:
            raise ValueError(f"{text!r}: each limit is requests:N or tps:N, got {part!r}")
        try:
            fields[_KEYS[key]] = int(value) if key == "requests" else float(value)
        except ValueError:
            raise ValueError(f"{text!r}: {key} must be a number, got {value!r}") from None
    return tenant, fields


def quota_config(max_requests: int | None = None, max_tokens_per_second: float | None = None,
                 tenant_limits: tuple[str, ...] = ()) -> QuotaConfig:
    """Defaults for every tenant, and "TENANT=requests:N,tps:N" overrides (what an
    override leaves out comes from the defaults). Raises ValueError."""
    default = TenantLimits(max_requests, max_tokens_per_second)
    overrides = {}
    for text in tenant_limits:
        tenant, fields = parse_tenant_limit(text)
        overrides[tenant] = dataclasses.replace(overrides.get(tenant, default), **fields)
    return QuotaConfig(default, overrides)


def add_tenant_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's fair-share and per-tenant limit options (docs/worker.md)."""
    parser.add_argument("--queue-policy", choices=QUEUE_POLICIES, default="fair",
                        help="which waiting request runs next: fair share between tenants "
                             "(virtual token counters) or fifo (default %(default)s)")
    parser.add_argument("--tenant-max-requests", type=_checked(int), metavar="N",
                        help="concurrent requests per tenant on this worker (default: unlimited)")
    parser.add_argument("--tenant-max-tokens-per-second", type=_checked(float), metavar="N",
                        help="output tokens per second per tenant on this worker "
                             "(default: unlimited)")
    parser.add_argument("--tenant-limit", action="append", default=[], type=_tenant_limit,
                        metavar="TENANT=requests:N,tps:N",
                        help="limits of one tenant, overriding the two above; repeatable "
                             "(e.g. acme=requests:8,tps:200)")


def _checked(number: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _tenant_limit(text: str) -> str:
    try:
        TenantLimits(**parse_tenant_limit(text)[1])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def quota_config_of(args: argparse.Namespace) -> QuotaConfig:
    """The QuotaConfig the parsed options describe (checked as they were parsed)."""
    return quota_config(args.tenant_max_requests, args.tenant_max_tokens_per_second,
                        tuple(args.tenant_limit))


class QuotaExceeded(RuntimeError):
    """A tenant is over one of its limits (RESOURCE_EXHAUSTED with QuotaFailure details)."""

    def __init__(self, tenant: str, limit: str, message: str) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.limit = limit

    def status_details(self) -> list[any_pb2.Any]:
        """The google.rpc details for the caller: one QuotaFailure violation."""
        failure = error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=f"tenant:{self.tenant}", description=str(self))])
        detail = any_pb2.Any()
        detail.Pack(failure)
        return [detail]


@dataclasses.dataclass
class _Bucket:
    level: float
    updated: float


class TenantQuotas:
    """Counts each tenant's requests in flight and output tokens; refuses beyond limits.
    Runs on the server's event loop only (no locking)."""

    def __init__(self, config: QuotaConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._buckets: dict[str, _Bucket] = {}

    def try_admit(self, tenant: str) -> None:
        """Counts a new request of `tenant`; raises QuotaExceeded (counting nothing) when
        the tenant is at a limit."""
        limits = self.config.limits_for(tenant)
        name = tenant or "(base model)"
        if limits.max_requests is not None and self._in_flight[tenant] >= limits.max_requests:
            raise QuotaExceeded(tenant, "requests", (
                f"tenant {name} has {self._in_flight[tenant]} requests in flight; "
                f"its limit is {limits.max_requests} concurrent requests"))
        rate = limits.max_tokens_per_second
        if rate is not None and self._refill(tenant, rate).level <= 0:
            raise QuotaExceeded(tenant, "tokens_per_second", (
                f"tenant {name} is over its limit of {rate:g} output tokens per second; "
                "retry in a second"))
        self._in_flight[tenant] += 1

    def release(self, tenant: str) -> None:
        """A request of `tenant` ended."""
        self._in_flight[tenant] -= 1
        if self._in_flight[tenant] <= 0:
            del self._in_flight[tenant]

    def charge(self, tenant: str, num_tokens: int) -> None:
        """Takes `num_tokens` streamed output tokens from the tenant's bucket."""
        rate = self.config.limits_for(tenant).max_tokens_per_second
        if rate is not None and num_tokens:
            self._refill(tenant, rate).level -= num_tokens

    def num_in_flight(self, tenant: str) -> int:
        """Requests of `tenant` admitted and not yet ended."""
        return self._in_flight[tenant]

    def _refill(self, tenant: str, rate: float) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.setdefault(tenant, _Bucket(rate, now))
        bucket.level = min(rate, bucket.level + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket
