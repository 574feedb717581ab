"""The worker's domain behind both servicers: admission, adapter versions, the engine.

Generate: resolve the adapter version once, pin it, stream the engine's outputs, unpin.
LoadAdapter/EvictAdapter: change the version table and the adapter cache; eviction waits
for the version's pins, so no request is ever served by other weights than it started on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace

from lorafleet.dataplane.engine.engine import InvalidRequestError
from lorafleet.dataplane.engine.outputs import RequestOutput
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.lora.cache import AdapterSource
from lorafleet.dataplane.lora.runtime import LoraRuntime
from lorafleet.dataplane.lora.versions import VersionEntry, VersionState, VersionTable
from lorafleet.dataplane.server.bridge import EngineBridge
from lorafleet.dataplane.server.metrics import FinishedRequest, GaugeSnapshot, WorkerMetrics
from lorafleet.dataplane.server.requests import PromptInput


class QueueFull(RuntimeError):
    """More requests are waiting than the worker accepts."""


class AdapterLoadFailed(RuntimeError):
    """The request's adapter could not be brought back from its source."""


class Draining(RuntimeError):
    """The worker is shutting down and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Limits and identity of one worker."""

    worker_id: str
    max_waiting: int = 256
    max_num_seqs: int = 64
    evict_timeout_seconds: float = 600.0


@dataclasses.dataclass(frozen=True)
class Admitted:
    """A request the worker accepted: its engine id and the version it is pinned to."""

    request_id: str
    caller_id: str
    entry: VersionEntry | None
    arrival: float


class Worker:
    """Owns admission and adapter lifecycle; the engine runs behind `bridge`."""

    def __init__(self, bridge: EngineBridge, lora: LoraRuntime, adapters: Any,
                 metrics: WorkerMetrics, options: WorkerOptions, base_model: Any):
        self.bridge = bridge
        self.lora = lora
        self.cache = lora.cache
        self.adapters = adapters  # loads/validates adapter dirs: see dataplane/lora/loading.py
        self.metrics = metrics
        self.options = options
        self.base_model = base_model  # worker.v1 BaseModel
        self.tracer = trace.NoOpTracer()
        self.versions = VersionTable()
        self.is_draining = False
        self._num_in_flight = 0

    # -- Generate ---------------------------------------------------------------

    def admit(self, caller_id: str, adapter_ref: str) -> Admitted:
        """Resolves the adapter version and pins it; raises when the request must wait
        elsewhere (queue full, draining) or names nothing."""
        if self.is_draining:
            raise Draining("worker is shutting down")
        if self._num_in_flight >= self.options.max_waiting + self.options.max_num_seqs:
            raise QueueFull(
                f"{self._num_in_flight} requests in flight; the worker accepts "
                f"{self.options.max_waiting} waiting beyond {self.options.max_num_seqs} running")
        entry = self.versions.resolve(adapter_ref) if adapter_ref else None
        if entry is not None:
            self.versions.acquire(entry)
        self._num_in_flight += 1
        request_id = f"{caller_id or 'req'}#{uuid.uuid4().hex[:12]}"
        return Admitted(request_id, caller_id or request_id, entry, time.monotonic())

    async def generate(self, admitted: Admitted, prompt: PromptInput,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Streams the engine's outputs for an admitted request, then unpins it."""
        entry = admitted.entry
        key = entry.digest if entry is not None else None

        def add(engine):
            token_ids = prompt.token_ids_for(engine.tokenizer)
            if len(token_ids) + params.max_tokens > engine.max_model_len:
                raise InvalidRequestError(
                    f"sampling.max_tokens: prompt ({len(token_ids)} tokens) plus max_tokens "
                    f"({params.max_tokens}) exceeds the context of {engine.max_model_len}")
            engine.add_request(admitted.request_id, token_ids, params=params, adapter=key)

        last = None
        span = self.tracer.start_span("lorafleet.Generate", attributes={
            "lorafleet.request_id": admitted.caller_id,
            "lorafleet.adapter": entry.label if entry else "",
            "lorafleet.adapter_digest": key or "",
        })
        try:
            async for output in self.bridge.stream(admitted.request_id, add):
                last = output
                failure = self.lora.failed_requests.pop(admitted.request_id, None)
                if failure is not None:
                    raise AdapterLoadFailed(
                        f"adapter {entry.label if entry else ''} could not be loaded: {failure}")
                yield output
        finally:
            self._num_in_flight -= 1
            if entry is not None:
                self.versions.release(entry)
            self._record(admitted, last)
            _end_span(span, last)

    def _record(self, admitted: Admitted, last: RequestOutput | None) -> None:
        if last is None:
            return
        timings = last.timings
        reason = last.finish_reason.value if last.finish_reason else "cancelled"
        first = None if timings.first_token is None else timings.first_token - timings.arrival
        self.metrics.record_finished(FinishedRequest(
            adapter=admitted.entry.name if admitted.entry else None, finish_reason=reason,
            num_prompt_tokens=last.usage.num_prompt_tokens,
            num_output_tokens=last.usage.num_output_tokens,
            time_to_first_token=first, total_seconds=time.monotonic() - timings.arrival))

    # -- adapters -----------------------------------------------------------------

    async def load_adapter(self, name: str, version: int, source_uri: str, *,
                           digest: str = "", to_device: bool = True,
                           make_default: bool = False) -> VersionEntry:
        """Loads name@version (0: next number) from source_uri into host, then device."""
        version = version or self.versions.next_version(name)
        existing = self.versions.get(name, version)
        if existing is not None and existing.state is VersionState.READY:
            if source_uri and existing.source_uri != source_uri:
                raise VersionConflict(f"{existing.label} already exists with source "
                                 f"{existing.source_uri}; versions are immutable")
            if make_default:
                self.versions.add(existing, make_default=True)
            return existing
        started, loaded = time.monotonic(), None
        try:
            loaded = await asyncio.to_thread(self.adapters.load, source_uri)
            self.metrics.record_load("host", time.monotonic() - started, is_ok=True)
            if digest and loaded.digest != digest:
                raise DigestMismatch(f"{name}@{version}: weights at {source_uri} have "
                                     f"digest {loaded.digest}, expected {digest}")
        except Exception as exc:
            if loaded is None:
                self.metrics.record_load("host", time.monotonic() - started, is_ok=False)
            # Kept (FAILED, with the reason) so requests for it get the reason too.
            failed = VersionEntry(name, version, "", source_uri, state=VersionState.FAILED,
                                  error=str(exc))
            self.versions.add(failed, make_default=False)
            raise
        entry = VersionEntry(name, version, loaded.digest, source_uri, rank=loaded.rank,
                             size_bytes=loaded.size_bytes, state=VersionState.READY)
        source = AdapterSource(entry.label, source_uri, loaded.digest)
        await asyncio.to_thread(self.cache.put_host, source, loaded)
        self.versions.add(entry, make_default=make_default)
        if to_device:
            await self.bridge.call(lambda engine: self.cache.try_install(entry.digest))
        return entry

    async def evict_adapter(self, name: str, version: int, *,
                            keep_host: bool) -> list[VersionEntry]:
        """Evicts name@version (0: all versions) once their in-flight requests finish."""
        targets = [e for e in self.versions.entries()
                   if e.name == name and version in (0, e.version)]
        if not targets:
            raise LookupError(f"adapter {name}" + (f"@{version}" if version else "")
                              + " is not on this worker")
        for entry in targets:
            if not keep_host and not await self.versions.drain(
                    entry, self.options.evict_timeout_seconds):
                raise TimeoutError(f"{entry.label} still has {entry.num_pins} requests")
            await self._evict_from_cache(entry, keep_host)
            if not keep_host:
                self.versions.remove(entry)
        return targets

    async def _evict_from_cache(self, entry: VersionEntry, keep_host: bool) -> None:
        shared = any(e is not entry and e.digest == entry.digest for e in self.versions.entries())
        if shared and not keep_host:
            return  # another name@version has the same weights and still uses them
        while not await self.bridge.call(
                lambda engine: self.cache.evict(entry.digest, keep_host=keep_host)):
            await asyncio.sleep(0.01)  # a running request still uses the slot

    async def validate_adapter(self, source_uri: str):
        """A dry-run load of `source_uri` with this worker's rules (off the event loop)."""
        return await asyncio.to_thread(self.adapters.validate, source_uri)

    # -- status -------------------------------------------------------------------

    def gauges(self) -> GaugeSnapshot:
        """Current load for the metrics (read off the engine thread: approximate)."""
        stats = self.bridge.engine.stats()
        return GaugeSnapshot(stats.num_waiting, stats.num_running, stats.num_used_blocks,
                             stats.num_total_blocks, self.cache.counts())


class DigestMismatch(ValueError):
    """The weights at the source are not the ones the caller expected."""


class VersionConflict(ValueError):
    """name@version exists with other weights; versions are immutable."""


def _end_span(span, last: RequestOutput | None) -> None:
    """Closes a request's span with what it produced."""
    if last is not None:
        reason = last.finish_reason.value if last.finish_reason else "cancelled"
        span.set_attribute("lorafleet.finish_reason", reason)
        span.set_attribute("lorafleet.prompt_tokens", last.usage.num_prompt_tokens)
        span.set_attribute("lorafleet.completion_tokens", last.usage.num_output_tokens)
        if last.timings.first_token is not None:
            ttft = last.timings.first_token - last.timings.arrival
            span.set_attribute("lorafleet.time_to_first_token_s", ttft)
    span.end()
