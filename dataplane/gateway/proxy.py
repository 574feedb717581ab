"""InferenceService on the gateway: pick a worker, proxy its Generate stream, retry once.

The caller's deadline and `authorization` metadata go to the worker; cancelling the call
cancels the worker's. A failure before the first message reaches the caller (the worker is
gone, refuses connections or is shutting down: UNAVAILABLE) is retried once on another
worker; after a message was sent, the stream ends with the worker's status code and
details. A worker that sends nothing for a second is probed (GetWorkerStatus): one that
does not answer at all (frozen, its host gone) counts as UNAVAILABLE at once, is retried
elsewhere (another holder, or a live worker of the base model that loads the version on
demand) and is skipped for a while, instead of holding requests until its lease expires. The worker's messages, summary included, are passed through untouched. Each
request is one span that continues the caller's W3C trace context; the worker's span
continues it in turn (see dataplane/server/tracing.py).

Tenant limits here are fleet-wide: a tenant's requests in flight and streamed tokens are
counted across every worker this gateway routes to (dataplane/config/quotas.py), and a
request over a limit is refused before any worker sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry import trace

from lorafleet.dataplane.config.quotas import QuotaExceeded, TenantQuotas, tenant_of
from lorafleet.dataplane.gateway.metrics import GatewayMetrics
from lorafleet.dataplane.gateway.picking import Candidate
from lorafleet.dataplane.gateway.router import Resolved, RouteError, Router
from lorafleet.dataplane.gateway.upstream import OnDemandLoads, UpstreamError, WorkerChannels
from lorafleet.dataplane.server.tracing import context_from_metadata, trace_metadata
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lorafleet.runtime.auth.interceptor import on_behalf_of_caller
from lorafleet.runtime.error_status import details_trailer, status_of

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
OK = grpc.StatusCode.OK
# No first message for this long: ask the worker whether it answers at all. A busy worker
# (long prefill, full queue) answers its status at once; a frozen one does not.
PROBE_AFTER_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.5
# A worker that did not answer a probe is skipped this long (its lease, 10 s by default,
# takes it out of the routing table meanwhile if it is really gone).
UNRESPONSIVE_SKIP_SECONDS = 10.0
_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_DETAILS_KEY = "grpc-status-details-bin"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the status, and whether another worker may be tried."""

    code: grpc.StatusCode
    details: str = ""
    is_retryable: bool = False
    trailing: tuple[tuple[str, str | bytes], ...] = ()  # the worker's rich error details

    @classmethod
    def of(cls, error: Exception, *, is_retryable: bool = False) -> Outcome:
        """How an attempt that raised `error` ended: its status (error_status.py)."""
        code, details = status_of(error)
        return cls(code, details, is_retryable, details_trailer(code, error))


class GatewayServicer(pb_grpc.InferenceServiceServicer):
    """Routes each Generate to a worker and streams its answer back."""

    def __init__(self, router: Router, channels: WorkerChannels, loads: OnDemandLoads,
                 metrics: GatewayMetrics, quotas: TenantQuotas):
        self._router = router
        self._channels = channels
        self._loads = loads
        self._metrics = metrics
        self._quotas = quotas
        self._unresponsive: dict[str, float] = {}  # worker id -> skipped until (monotonic)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        upstream = _Upstream(self._metrics.tracer.start_span(
            "lorafleet.gateway.Generate", kind=trace.SpanKind.SERVER,
            context=context_from_metadata(context.invocation_metadata()),
            attributes={"lorafleet.request_id": request.request_id[:128],
                        "lorafleet.adapter": request.adapter[:128]}))
        # The RPC's end (the caller cancels, its deadline passes) cancels the worker's call
        # at once, even while this generator waits at a `yield` and never sees the cancel.
        context.add_done_callback(lambda _: upstream.cancel())
        code, tenant = None, tenant_of(request.adapter)
        self._metrics.outstanding.inc()
        try:
            self._quotas.try_admit(tenant)
        except QuotaExceeded as refusal:
            upstream.outcome = Outcome.of(refusal)
            tenant = None  # nothing was counted
        try:
            if tenant is not None:
                async for message in self._serve(request, context, upstream):
                    if message.HasField("delta"):
                        self._quotas.charge(tenant, len(message.delta.token_ids))
                    yield message
            code = upstream.outcome.code
        finally:
            if tenant is not None:
                self._quotas.release(tenant)
            code = code or _interrupted(context)
            self._metrics.outstanding.dec()
            self._metrics.requests.labels(code.name).inc()
            upstream.span.set_attribute("rpc.grpc.status_code", code.value[0])
            upstream.span.end()
        if code != OK:
            await context.abort(code, upstream.outcome.details,
                                trailing_metadata=upstream.outcome.trailing)

    async def _serve(self, request: pb.GenerateRequest, context, upstream: _Upstream):
        """Streams the messages of the attempts; leaves the result in `upstream.outcome`."""
        try:
            resolved = self._router.resolve(request)
        except RouteError as error:
            upstream.outcome = Outcome.of(error)
            return
        excluded = self._skipped()
        for attempt in range(MAX_ATTEMPTS):
            try:
                target = self._pick(resolved, excluded)
            except RouteError as error:
                upstream.outcome = upstream.outcome or Outcome.of(error)
                return
            if attempt:
                self._metrics.retries.inc()
                log.info("retrying %s on %s after: %s", request.request_id or "a request",
                         target.worker_id, upstream.outcome.details)
            upstream.outcome = None
            async for message in self._attempt(target, resolved, request, context, upstream):
                yield message
            if not upstream.outcome.is_retryable:
                return
            excluded.add(target.worker_id)
            upstream.outcome = dataclasses.replace(upstream.outcome, is_retryable=False)

    def _skipped(self) -> set[str]:
        """Workers that recently failed a probe."""
        now = time.monotonic()
        for worker_id in [w for w, until in self._unresponsive.items() if until <= now]:
            del self._unresponsive[worker_id]
        return set(self._unresponsive)

    def _pick(self, resolved: Resolved, excluded: set[str]) -> Candidate:
        version = resolved.version
        loaded = self._loads.loaded_on(resolved.adapter, version.version) if version else ()
        target = self._router.ranked(resolved, self._channels.outstanding, excluded, loaded)[0]
        self._metrics.picks.labels(target.pick).inc()
        return target

    async def _attempt(self, target: Candidate, resolved: Resolved, request, context,
                       upstream: _Upstream):
        """Streams one worker's answer; leaves how it ended in `upstream.outcome`."""
        self._channels.acquire(target.address)
        upstream.span.add_event("attempt", {"lorafleet.worker_id": target.worker_id,
                                            "lorafleet.adapter_version": resolved.reference})
        num_sent, has_summary = 0, False
        try:
            if target.needs_load:
                await self._loads.ensure(target.worker_id, resolved.adapter,
                                         resolved.version, _remaining(context))
            forwarded = pb.GenerateRequest()
            forwarded.CopyFrom(request)
            forwarded.adapter = resolved.reference
            upstream.call = self._channels.inference(target.address).Generate(
                forwarded, timeout=_remaining(context),
                metadata=on_behalf_of_caller(context.invocation_metadata(),
                                             self._channels.metadata,
                                             is_auth_on=self._channels.is_auth_on)
                + trace_metadata(upstream.span))
            async for message in self._messages(upstream.call, target):
                num_sent += 1
                has_summary = message.HasField("summary")
                yield message
        except grpc.aio.AioRpcError as error:
            upstream.outcome = self._failed(target, resolved, error, has_sent=num_sent > 0)
            if upstream.outcome.is_retryable and not await self._is_answering(target):
                self._skip(target)
        except UpstreamError as error:
            upstream.outcome = Outcome.of(error, is_retryable=num_sent == 0 and error.is_retryable)
        else:
            upstream.outcome = Outcome(OK) if has_summary else Outcome(
                grpc.StatusCode.INTERNAL,
                f"worker {target.worker_id} ended the stream without a summary")
        finally:
            upstream.cancel()  # a no-op once the call ended; stops the worker's work otherwise
            upstream.call = None
            self._channels.release(target.address)


    def _failed(self, target: Candidate, resolved: Resolved, error: grpc.aio.AioRpcError, *,
                has_sent: bool) -> Outcome:
        """How an attempt that the worker ended with `error` counts. Before any token,
        UNAVAILABLE (a dead or stopping worker) and NOT_FOUND for a routed version (the
        worker no longer holds it: an eviction, a restart) are tried on another worker; a
        version that exists is never NOT_FOUND to the caller."""
        code, details = error.code(), error.details() or f"worker {target.worker_id}"
        if code == grpc.StatusCode.NOT_FOUND and resolved.version is not None:
            code = grpc.StatusCode.UNAVAILABLE
            details = f"{resolved.reference} is not on {target.worker_id} now: {details}"
        return Outcome(code, details, is_retryable=not has_sent and code == grpc.StatusCode.UNAVAILABLE,
                       trailing=_status_details(error))

    async def _messages(self, call: grpc.aio.UnaryStreamCall, target: Candidate):
        """The call's messages; UpstreamError (retryable) when none has come yet and the
        worker no longer answers a probe."""
        stream = call.__aiter__()
        first = asyncio.ensure_future(stream.__anext__())
        try:
            while not (await asyncio.wait({first}, timeout=PROBE_AFTER_SECONDS))[0]:
                if not await self._is_answering(target):
                    self._skip(target)
                    raise UpstreamError(grpc.StatusCode.UNAVAILABLE,
                                        f"worker {target.worker_id} does not answer",
                                        is_retryable=True)
            try:
                yield first.result()
            except StopAsyncIteration:
                return
        finally:
            first.cancel()  # a no-op once it finished
        async for message in stream:
            yield message

    def _skip(self, target: Candidate) -> None:
        """Leaves a worker that does not answer out of this gateway's picks for a while."""
        self._unresponsive[target.worker_id] = time.monotonic() + UNRESPONSIVE_SKIP_SECONDS

    async def _is_answering(self, target: Candidate) -> bool:
        """Whether the worker answers a health check in time (any status but UNAVAILABLE
        or DEADLINE_EXCEEDED counts: a worker that refuses it is still there)."""
        try:
            await self._channels.health(target.address).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            return error.code() not in _DOWN
        return True


class _Upstream:
    """The worker call a request is on now, how its last attempt ended, and its span."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span  # the request's span, ended with the request
        self.call: grpc.aio.UnaryStreamCall | None = None
        self.outcome: Outcome | None = None

    def cancel(self) -> None:
        """Cancels the call in progress, if any."""
        if self.call is not None:
            self.call.cancel()


def _interrupted(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a stream stopped before it ended on its own: the deadline, or a cancel."""
    remaining = context.time_remaining()
    is_late = remaining is not None and remaining <= 0
    return grpc.StatusCode.DEADLINE_EXCEEDED if is_late else grpc.StatusCode.CANCELLED


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's time left, or None without a deadline."""
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 0.0)


def _status_details(error: grpc.aio.AioRpcError) -> tuple[tuple[str, bytes], ...]:
    """The worker's google.rpc status details (e.g. QuotaFailure), to pass on unchanged."""
    return tuple((key, value) for key, value in (error.trailing_metadata() or ())
                 if key == _DETAILS_KEY)

