"""The worker's domain behind both servicers: admission, adapter versions, the engine.

Generate: resolve the adapter version once, pin it, stream the engine's outputs, unpin.
LoadAdapter/EvictAdapter: change the version table and the adapter cache; eviction waits
for the version's pins, so no request is ever served by other weights than it started on.
Runs on the server's event loop; the engine runs behind `bridge` (in its own process, or
on a thread), reached only by named operations, and what this class reads of it is the
snapshot the engine loop publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace

from lorafleet.dataplane.config.quotas import TenantQuotas, tenant_of
from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.config.worker_sizes import WorkerSizes
from lorafleet.dataplane.engine.outputs import ErrorKind, RequestOutput
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.prompt_rules import InvalidRequestError
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.engine.snapshot import EngineSnapshot
from lorafleet.dataplane.engine_process.messages import AdapterSource, EngineStepError, NewRequest
from lorafleet.dataplane.server.bridge import EngineBridge
from lorafleet.dataplane.server.errors import (
    AdapterLoadFailed,
    EvictTimeout,
    NotResident,
    NotServing,
    QueueFull,
    ShuttingDown,
)
from lorafleet.dataplane.server.frontend import Frontend
from lorafleet.dataplane.server.gauges import ServerLimits, model_names
from lorafleet.dataplane.server.metrics import FinishedRequest, TokenClock, WorkerMetrics
from lorafleet.dataplane.server.tracing import end_request_span, request_span
from lorafleet.dataplane.server.versions import VersionEntry, VersionState, VersionTable

# How long an eviction waits for the requests pinned to the version to end.
EVICT_TIMEOUT_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class Admitted:
    """A request the worker accepted: its engine id and the version it is pinned to."""

    request_id: str
    caller_id: str
    entry: VersionEntry | None
    arrival: float
    tenant: str = ""


class Worker:
    """Owns admission and adapter lifecycle; the engine runs behind `bridge`."""

    def __init__(self, bridge: EngineBridge, adapters: Any, frontend: Frontend,
                 metrics: WorkerMetrics, config: WorkerConfig, base_model: Any,
                 sizes: WorkerSizes, *, tracer: trace.Tracer):
        self.bridge = bridge
        self.adapters = adapters  # validates adapter dirs: see dataplane/lora/loading.py
        self.frontend = frontend
        self.metrics = metrics
        self.config = config  # identity, queue limits and tenant limits are read here
        self.base_model = base_model  # worker.v1 BaseModel
        self.sizes = sizes
        self.tracer = tracer
        self.versions = VersionTable()
        self.is_shutting_down = False
        self._num_in_flight = 0
        self._loads: dict[tuple[str, int], asyncio.Future] = {}
        self.quotas = TenantQuotas(config.quotas)
        metrics.set_limits(ServerLimits(base_model.name, sizes.max_loras,
                                        sizes.kv_block_size, sizes.num_kv_blocks))

    @property
    def snapshot(self) -> EngineSnapshot:
        """The engine's load and adapter residency as its loop last published them."""
        return self.bridge.snapshot

    # -- Generate ---------------------------------------------------------------

    def admit(self, caller_id: str, adapter_ref: str, *, tenant: str | None = None) -> Admitted:
        """Resolves the adapter version and pins it; raises when the request must wait
        elsewhere (queue full, shutting down, engine stopped), names nothing, or its
        tenant (given, else the caller's or the adapter's: quotas.tenant_of) is over a limit."""
        if self.is_shutting_down:
            raise ShuttingDown("worker is shutting down")
        if not self.bridge.is_alive:
            raise NotServing("this worker's engine has stopped; retry on another worker")
        if self._num_in_flight >= self.config.max_waiting + self.config.max_num_seqs:
            raise QueueFull(
                f"{self._num_in_flight} requests in flight; the worker accepts "
                f"{self.config.max_waiting} waiting beyond {self.config.max_num_seqs} running")
        entry = self.versions.resolve(adapter_ref) if adapter_ref else None
        if tenant is None:
            tenant = tenant_of(entry.name if entry is not None else "")
        self.quotas.try_admit(tenant)
        if entry is not None:
            self.versions.acquire(entry)
        self._num_in_flight += 1
        caller_id = caller_id[:128]
        request_id = f"{caller_id or 'req'}#{uuid.uuid4().hex[:12]}"
        return Admitted(request_id, caller_id or request_id, entry, time.monotonic(), tenant)

    async def generate(self, admitted: Admitted, token_ids: tuple[int, ...],
                       params: SamplingParams, *, cache_salt: str = "",
                       trace_parent: Any = None) -> AsyncIterator[RequestOutput]:
        """Streams the engine's outputs for an admitted request, with their text (the
        frontend's detokenizer), then unpins it; a request the engine failed or refused
        raises its error in place of its last output (engine_failure). A stop string ends
        the request here, and the engine is told to free it. `cache_salt`: see
        GenerateRequest.cache_salt; `trace_parent`: the caller's trace context, continued
        by the request's span."""
        entry = admitted.entry
        request = NewRequest(admitted.request_id, token_ids, params,
                             entry.digest if entry is not None else None, admitted.tenant,
                             cache_salt)
        last, clock = None, TokenClock()
        detokenizer = self.frontend.detokenizer(token_ids, params)
        span = request_span(self.tracer, admitted.caller_id, entry, trace_parent)
        try:
            async with contextlib.aclosing(self.bridge.stream(request)) as stream:
                async for engine_output in stream:
                    output = detokenizer.process(engine_output)
                    if output.error_kind is not ErrorKind.INVALID_REQUEST:
                        last = output  # a refused request ran nothing: nothing to record
                    if output.is_finished and not engine_output.is_finished:
                        self.bridge.finish(admitted.request_id, FinishReason.STOP)
                    clock.tick(output)
                    self.quotas.charge(admitted.tenant, len(output.new_token_ids))
                    failure = engine_failure(output, entry)
                    if failure is not None:
                        raise failure
                    yield output
                    if output.is_finished:
                        break
        finally:
            self.release(admitted)
            self._record(admitted, last, clock)
            end_request_span(self.tracer, span, last)

    def release(self, admitted: Admitted) -> None:
        """Ends an admitted request's claim on the queue and its version."""
        self._num_in_flight -= 1
        self.quotas.release(admitted.tenant)
        if admitted.entry is not None:
            self.versions.release(admitted.entry)

    def _record(self, admitted: Admitted, last: RequestOutput | None, clock: TokenClock) -> None:
        if last is None:
            return
        timings, entry = last.timings, admitted.entry
        reason = last.finish_reason.value if last.finish_reason else "cancelled"
        first = None if timings.first_token is None else timings.first_token - timings.arrival
        queued = None if timings.first_scheduled is None \
            else timings.first_scheduled - timings.arrival
        self.metrics.record_finished(FinishedRequest(
            adapter=entry.name if entry else None, version=entry.version if entry else None,
            finish_reason=reason, num_prompt_tokens=last.usage.num_prompt_tokens,
            num_output_tokens=last.usage.num_output_tokens,
            num_cached_tokens=last.usage.num_cached_tokens, queue_seconds=queued,
            time_to_first_token=first, total_seconds=time.monotonic() - timings.arrival,
            token_gaps=tuple(clock.gaps)))

    def _versions_changed(self) -> None:
        """Publishes which model names reach each digest (read by /metrics scrapes)."""
        self.metrics.gauges.set_names(model_names(self.versions))

    # -- adapters -----------------------------------------------------------------

    async def load_adapter(self, name: str, version: int, source_uri: str, *,
                           digest: str = "", to_device: bool = True,
                           make_default: bool = False) -> VersionEntry:
        """Loads name@version (0: next number) from source_uri into host, then device.

        Exactly one load of a name@version runs: a second call for the same source
        waits for it; one for another source gets VersionTaken (versions are immutable).
        """
        pending = self._loads.get((name, version))
        if pending is not None:
            await asyncio.shield(pending)
        entry = self.versions.reserve(name, version, source_uri)
        if entry is None:  # that exact version from that source is ready
            entry = self.versions.get(name, version)
            if make_default:
                self.versions.add(entry, make_default=True)
                self._versions_changed()
            return entry
        done = asyncio.get_running_loop().create_future()
        self._loads[(name, entry.version)] = done
        try:
            await self._load_into(entry, digest, to_device, make_default)
        finally:
            self._loads.pop((name, entry.version), None)
            done.set_result(None)
        return entry

    async def _load_into(self, entry: VersionEntry, digest: str, to_device: bool,
                         make_default: bool) -> None:
        try:
            loaded = await self.bridge.load_adapter(
                AdapterSource(entry.label, entry.source_uri, digest))
        except BaseException as exc:
            # Kept (FAILED, with the reason) so requests for it get the reason too.
            entry.state, entry.error = VersionState.FAILED, str(exc)[:512]
            self.versions.add(entry, make_default=False)
            raise
        entry.digest, entry.rank, entry.size_bytes = loaded.digest, loaded.rank, loaded.size_bytes
        if to_device:  # no free slot: placed when a request needs it
            await self.bridge.try_place_adapter(entry.digest)
        entry.state = VersionState.READY
        self.versions.add(entry, make_default=make_default)
        self._versions_changed()

    async def evict_adapter(self, name: str, version: int, *,
                            keep_host: bool) -> list[VersionEntry]:
        """Evicts name@version (0: all versions) once their in-flight requests finish."""
        targets = [e for e in self.versions.entries()
                   if e.name == name and version in (0, e.version)
                   and e.state is not VersionState.LOADING]
        if not targets:
            raise NotResident(f"adapter {name}" + (f"@{version}" if version else "")
                              + " is not on this worker")
        for entry in targets:
            if not keep_host and not await self.versions.retire(
                    entry, EVICT_TIMEOUT_SECONDS):
                raise EvictTimeout(f"{entry.label} still has {entry.num_pins} requests")
            await self._evict_from_cache(entry, keep_host)
            if not keep_host:
                self.versions.remove(entry)
        self._versions_changed()
        return targets

    async def _evict_from_cache(self, entry: VersionEntry, keep_host: bool) -> None:
        if not entry.digest:
            return  # a failed load left nothing in the cache
        shared = any(e is not entry and e.digest == entry.digest for e in self.versions.entries())
        if shared and not keep_host:
            return  # another name@version has the same weights and still uses them
        await self.bridge.evict_adapter(entry.digest, keep_host=keep_host)

    async def validate_adapter(self, source_uri: str):
        """A dry-run load of `source_uri` with this worker's rules (off the event loop)."""
        return await asyncio.to_thread(self.adapters.validate, source_uri)


def engine_failure(output: RequestOutput, entry: VersionEntry | None) -> Exception | None:
    """The error a request the engine ended with FinishReason.ERROR reaches its caller as,
    or None for any other output. One rule for every kind: the worker raises it in place
    of that final output, so the caller gets its status (and no summary), and a gateway
    may retry a load failure elsewhere."""
    if output.finish_reason is not FinishReason.ERROR:
        return None
    if output.error_kind is ErrorKind.INVALID_REQUEST:
        return InvalidRequestError(output.error or "the engine refused the request")
    if output.error_kind is ErrorKind.ADAPTER_LOAD_FAILED:
        return AdapterLoadFailed(f"adapter {entry.label if entry else ''} "
                                 f"could not be loaded: {output.error}")
    return EngineStepError(output.error or "engine step failed")
