"""The gateway's side of its workers: one reused channel per worker address, the requests
outstanding on each, and on-demand placements.

A channel is closed when its worker leaves the routing table, but only once this gateway
has no request outstanding on it: a worker that stops gracefully leaves the table (its
heartbeats stop) while it still finishes the streams it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping

import grpc
from grpc_health.v1 import health_pb2_grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.dataplane.gateway.follower import NoControlPlane
from lorafleet.dataplane.gateway.picking import find_version
from lorafleet.inference.v1 import inference_service_pb2_grpc as inference_grpc
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

log = logging.getLogger(__name__)
# FleetService.PlaceAdapterVersion on the control plane the gateway follows (follower.place).
Place = Callable[[fleet_pb.PlaceAdapterVersionRequest, float | None],
                 Awaitable[fleet_pb.PlaceAdapterVersionResponse]]


class UpstreamError(Exception):
    """A failed step towards a worker, as the status the caller should get (declared per
    instance: lorafleet/error_status.py)."""

    def __init__(self, code: grpc.StatusCode, details: str, *, is_retryable: bool = False):
        super().__init__(details)
        self.status_code_name = code.name
        self.is_retryable = is_retryable


class WorkerChannels:
    """Channels and outstanding-request counts by worker address."""

    def __init__(self, tls: TlsConfig = PLAINTEXT_TLS) -> None:
        self._tls = tls  # how to reach workers: plaintext, TLS or mTLS
        self._channels: dict[str, grpc.aio.Channel] = {}
        # What the gateway sends workers as itself (auth.own_metadata: nothing under mTLS)
        # and whether it vouches for its callers (auth on) or passes their keys (auth off).
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.is_auth_on = False
        self.outstanding: dict[str, int] = {}
        self._live: set[str] = set()
        self._closing: set[asyncio.Task] = set()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._tls.aio_channel(address)
            self._channels[address] = channel
        return channel

    def inference(self, address: str) -> inference_grpc.InferenceServiceStub:
        """An InferenceService stub on the worker's channel."""
        return inference_grpc.InferenceServiceStub(self._channel(address))

    def health(self, address: str) -> health_pb2_grpc.HealthStub:
        """A health-checking stub on the worker's channel (answers without credentials)."""
        return health_pb2_grpc.HealthStub(self._channel(address))

    def open_addresses(self) -> set[str]:
        """Addresses that have an open channel."""
        return set(self._channels)

    def acquire(self, address: str) -> None:
        """Counts a request going to `address`."""
        self.outstanding[address] = self.outstanding.get(address, 0) + 1

    def release(self, address: str) -> None:
        """Counts a request to `address` as finished; closes the channel of a departed
        worker once nothing is outstanding on it."""
        left = self.outstanding.get(address, 1) - 1
        if left > 0:
            self.outstanding[address] = left
            return
        self.outstanding.pop(address, None)
        if address not in self._live:
            self._close(address)

    def retain(self, addresses: Collection[str]) -> None:
        """Keeps the channels of live workers; closes idle ones of workers that left."""
        self._live = set(addresses)
        for address in list(self._channels):
            if address not in self._live and not self.outstanding.get(address):
                self._close(address)

    def _close(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Closes every channel."""
        channels, self._channels = self._channels, {}
        await asyncio.gather(*(c.close() for c in channels.values()), *self._closing)


class OnDemandLoads:
    """Versions no reachable worker holds, placed on one by the control plane
    (FleetService.PlaceAdapterVersion: it records the placement, then loads the version):
    at most one request at a time per (worker, version), shared by every request that
    waits for it, and remembered until the routing table lists a holder of the version."""

    def __init__(self, place: Place, timeout_seconds: float = 120.0):
        self._place = place
        self._timeout = timeout_seconds
        self._loads: dict[tuple[str, str, int], asyncio.Task] = {}

    def loaded_on(self, adapter: str, version: int) -> set[str]:
        """Ids of workers this gateway had the version placed (or placing) on."""
        return {w for (w, name, number) in self._loads if (name, number) == (adapter, version)}

    async def ensure(self, worker_id: str, adapter: str, version: fleet_pb.VersionRoute,
                     timeout: float | None) -> None:
        """Returns once the worker holds the version; raises UpstreamError. A caller that
        gives up (deadline, cancel) leaves the placement running for the others."""
        key = (worker_id, adapter, version.version)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._load(worker_id, adapter, version.version))
            task.add_done_callback(lambda done: self._forget_failed(key, done))
            self._loads[key] = task
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            raise UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"deadline passed while {worker_id} loaded "
                                f"{adapter}@{version.version}") from None

    async def _load(self, worker_id: str, adapter: str, version: int) -> None:
        request = fleet_pb.PlaceAdapterVersionRequest(adapter=adapter, version=version,
                                                      worker_id=worker_id)
        label = f"{adapter}@{version}"
        try:
            await self._place(request, self._timeout)
        except NoControlPlane as error:
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, f"{label} has no reachable "
                                f"holder and {error}", is_retryable=False) from None
        except grpc.aio.AioRpcError as error:
            code = error.code()
            details = f"placing {label} on {worker_id} failed: {code.name}: {error.details()}"
            # FAILED_PRECONDITION (another base model) is the caller's to know as such; any
            # other refusal means this worker cannot serve the version now: another may.
            shown = code if code == grpc.StatusCode.FAILED_PRECONDITION else grpc.StatusCode.UNAVAILABLE
            raise UpstreamError(shown, details,
                                is_retryable=code != grpc.StatusCode.FAILED_PRECONDITION) from None
        log.info("placed %s on demand on %s", label, worker_id)

    def _forget_failed(self, key: tuple[str, str, int], task: asyncio.Task) -> None:
        # Reading the exception also marks it retrieved (the waiters got it already).
        is_failed = task.cancelled() or task.exception() is not None
        if is_failed and self._loads.get(key) is task:
            del self._loads[key]

    def prune(self, routes: Mapping[str, fleet_pb.AdapterRoute], live_worker_ids: Collection[str]) -> None:
        """Forgets loads of versions that now have holders or no route, or whose worker
        left, so the routing table is the source of truth again."""
        for key in list(self._loads):
            worker_id, adapter, number = key
            route = routes.get(adapter)
            version = find_version(route, number) if route is not None else None
            is_settled = version is None or version.workers or worker_id not in live_worker_ids
            if is_settled and self._loads[key].done():
                del self._loads[key]

    async def close(self) -> None:
        """Cancels loads still running."""
        for task in self._loads.values():
            task.cancel()
        await asyncio.gather(*self._loads.values(), return_exceptions=True)
        self._loads.clear()
