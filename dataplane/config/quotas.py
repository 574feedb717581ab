"""Per-tenant limits at admission: concurrent requests and output tokens per second.

A tenant is the calling tenant when auth names one, else the first part of an adapter
name (`acme/support` -> "acme"); requests for the base model without a tenant caller
belong to tenant "" (`tenant_of`). The same limits run in two places: a worker counts
what it serves, and a gateway counts what it routes to every worker — the fleet-wide
limit; with several gateways, each enforces its share (`QuotaConfig.shared_by`). Beyond
a limit, Generate is refused before any work with RESOURCE_EXHAUSTED and
`google.rpc.QuotaFailure` details naming the tenant and the limit (HTTP: 429).

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

from lorafleet.runtime.auth import current_principal


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

    def shared_by(self, num_enforcers: int) -> QuotaConfig:
        """Each of `num_enforcers` (gateways sharing a fleet's traffic) enforces this
        share of every limit: requests divided down (at least 1), tokens/s divided."""
        if num_enforcers < 1:
            raise ValueError(f"the number sharing the limits must be >= 1, got {num_enforcers}")

        def share(limits: TenantLimits) -> TenantLimits:
            requests, rate = limits.max_requests, limits.max_tokens_per_second
            return TenantLimits(
                None if requests is None else max(1, requests // num_enforcers),
                None if rate is None else rate / num_enforcers)
        return QuotaConfig(share(self.default),
                           {t: share(limits) for t, limits in self.overrides.items()})


def tenant_of(adapter_name: str) -> str:
    """Whom a request counts for (limits, fair share): the calling tenant when auth names
    one, else the tenant of `adapter_name` ("acme/support@2" -> "acme"), else "" (the base
    model with no tenant caller)."""
    principal = current_principal()
    if principal is not None and principal.tenant:
        return principal.tenant
    return adapter_name.partition("/")[0] if adapter_name else ""


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


def add_tenant_limit_arguments(parser: argparse.ArgumentParser, where: str) -> None:
    """The per-tenant limit options; `where` says what they count ("on this worker")."""
    parser.add_argument("--tenant-max-requests", type=_checked(int), metavar="N",
                        help=f"concurrent requests per tenant {where} (default: unlimited)")
    parser.add_argument("--tenant-max-tokens-per-second", type=_checked(float), metavar="N",
                        help=f"output tokens per second per tenant {where} "
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

    status_code_name = "RESOURCE_EXHAUSTED"

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
