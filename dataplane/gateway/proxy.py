"""InferenceService on the gateway: pick a worker, proxy its Generate stream, retry once.

The caller's deadline and `authorization` metadata go to the worker; cancelling the call
cancels the worker's. A failure before the first message reaches the caller (the worker is
gone, refuses connections or is shutting down: UNAVAILABLE) is retried once on another
worker; after a message was sent, the stream ends with the worker's status code and
details. The worker's messages, summary included, are passed through untouched.
"""

from __future__ import annotations

import dataclasses
import logging

import grpc

from lorafleet.dataplane.gateway.metrics import GatewayMetrics
from lorafleet.dataplane.gateway.picking import Candidate
from lorafleet.dataplane.gateway.router import Resolved, RouteError, Router
from lorafleet.dataplane.gateway.upstream import OnDemandLoads, UpstreamError, WorkerChannels
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
FORWARDED_METADATA = ("authorization",)
OK = grpc.StatusCode.OK


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the status, and whether another worker may be tried."""

    code: grpc.StatusCode
    details: str = ""
    is_retryable: bool = False


class GatewayServicer(pb_grpc.InferenceServiceServicer):
    """Routes each Generate to a worker and streams its answer back."""

    def __init__(self, router: Router, channels: WorkerChannels, loads: OnDemandLoads,
                 metrics: GatewayMetrics):
        self._router = router
        self._channels = channels
        self._loads = loads
        self._metrics = metrics

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        # A coroutine writing with context.write (not a generator), so a caller's cancel
        # reaches the upstream call through plain task cancellation and `finally`.
        code = grpc.StatusCode.CANCELLED  # unless the stream ends any other way
        self._metrics.outstanding.inc()
        try:
            outcome = await self._serve(request, context)
            code = outcome.code
        finally:
            self._metrics.outstanding.dec()
            self._metrics.requests.labels(code.name).inc()
        if outcome.code != OK:
            await context.abort(outcome.code, outcome.details)

    async def _serve(self, request: pb.GenerateRequest, context) -> Outcome:
        try:
            resolved = self._router.resolve(request)
        except RouteError as error:
            return Outcome(error.code, error.details)
        excluded: set[str] = set()
        failure = None
        for attempt in range(MAX_ATTEMPTS):
            try:
                target = self._pick(resolved, excluded)
            except RouteError as error:
                return failure or Outcome(error.code, error.details)
            if attempt:
                self._metrics.retries.inc()
                log.info("retrying %s on %s after: %s", request.request_id or "a request",
                         target.worker_id, failure.details)
            outcome = await self._attempt(target, resolved, request, context)
            if not outcome.is_retryable:
                return outcome
            excluded.add(target.worker_id)
            failure = dataclasses.replace(outcome, is_retryable=False)
        return failure

    def _pick(self, resolved: Resolved, excluded: set[str]) -> Candidate:
        version = resolved.version
        loaded = self._loads.loaded_on(resolved.adapter, version.version) if version else ()
        target = self._router.ranked(resolved, self._channels.outstanding, excluded, loaded)[0]
        self._metrics.picks.labels(target.pick).inc()
        return target

    async def _attempt(self, target: Candidate, resolved: Resolved, request, context) -> Outcome:
        self._channels.acquire(target.address)
        call, num_sent, has_summary = None, 0, False
        try:
            if target.needs_load:
                await self._loads.ensure(target.worker_id, target.address, resolved.adapter,
                                         resolved.version, _remaining(context))
            upstream = pb.GenerateRequest()
            upstream.CopyFrom(request)
            upstream.adapter = resolved.reference
            call = self._channels.inference(target.address).Generate(
                upstream, timeout=_remaining(context), metadata=_forwarded(context))
            async for message in call:
                await context.write(message)
                num_sent += 1
                has_summary = message.HasField("summary")
        except grpc.aio.AioRpcError as error:
            code = error.code()
            return Outcome(code, error.details() or f"worker {target.worker_id}: {code.name}",
                           is_retryable=num_sent == 0 and code == grpc.StatusCode.UNAVAILABLE)
        except UpstreamError as error:
            return Outcome(error.code, error.details,
                           is_retryable=num_sent == 0 and error.is_retryable)
        finally:
            if call is not None:
                call.cancel()  # a no-op once it ended; stops the worker's work otherwise
            self._channels.release(target.address)
        if not has_summary:
            return Outcome(grpc.StatusCode.INTERNAL,
                           f"worker {target.worker_id} ended the stream without a summary")
        return Outcome(OK)


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's time left, or None without a deadline."""
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 0.0)


def _forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    return tuple((key, value) for key, value in context.invocation_metadata() or ()
                 if key in FORWARDED_METADATA)
