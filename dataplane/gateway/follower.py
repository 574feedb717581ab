"""Following the control plane's routing table: list, then watch, and reconnect forever.

WatchRoutingTable sends a snapshot, then changes. When the stream breaks, the follower
keeps the table it has (the gateway serves from it meanwhile), waits a capped, jittered
backoff, and tries the next control-plane replica in its list; the first message of the
new stream is a snapshot that replaces the table, so changes made meanwhile are picked up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.dataplane.gateway.table import RoutingTable
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

log = logging.getLogger(__name__)


class NoControlPlane(Exception):
    """No control-plane replica is followed now, so none can be asked anything."""


class Backoff:
    """Exponential delays from `first` up to `cap` seconds, each drawn from [d/2, d] so
    gateways that lost the same replica do not all come back at once."""

    def __init__(self, first: float = 0.1, cap: float = 5.0, rng: random.Random | None = None):
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={first}, cap={cap}")
        self.first, self.cap = first, cap
        self._rng = rng or random.Random()
        self.num_failures = 0

    def next_delay(self) -> float:
        """The delay before the next try; each call counts one more failure."""
        ceiling = min(self.cap, self.first * 2 ** min(self.num_failures, 32))
        self.num_failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Back to the first delay (after a stream delivered its snapshot)."""
        self.num_failures = 0


class TableFollower:
    """Keeps `table` current from the first control-plane replica that answers."""

    def __init__(self, controlplanes: Sequence[str], *, base_model: str = "",
                 on_change: Callable[[RoutingTable], None] = lambda table: None,
                 backoff: Backoff | None = None, tls: TlsConfig = PLAINTEXT_TLS):
        if not controlplanes:
            raise ValueError("at least one control-plane address is required")
        self.controlplanes = list(controlplanes)
        self.base_model = base_model
        self._tls = tls  # how to reach the control plane
        self.metadata: tuple[tuple[str, str], ...] = ()  # the gateway's own key, if any
        self.table: RoutingTable | None = None
        self.is_connected = False
        self._channel: grpc.aio.Channel | None = None  # of the replica followed now
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._stale_since = time.monotonic()

    def age_seconds(self) -> float:
        """Seconds since the table was last known current: 0 while the stream is up."""
        return 0.0 if self.is_connected else time.monotonic() - self._stale_since

    async def run(self) -> None:
        """Follows the table until cancelled, rotating over the replicas."""
        index = 0
        while True:
            address = self.controlplanes[index % len(self.controlplanes)]
            try:
                await self._follow(address)
                log.warning("routing stream from %s ended; reconnecting", address)
            except (grpc.aio.AioRpcError, ValueError) as error:
                log.log(logging.WARNING if self.is_connected else logging.DEBUG,
                        "routing stream from %s failed: %s", address, _describe(error))
            if self.is_connected:
                self.is_connected = False
                self._stale_since = time.monotonic()
            index += 1
            await asyncio.sleep(self._backoff.next_delay())

    async def _follow(self, address: str) -> None:
        request = fleet_pb.WatchRoutingTableRequest(base_model=self.base_model)
        async with self._tls.aio_channel(address) as channel:
            self._channel = channel
            try:
                await self._read(channel, address, request)
            finally:
                self._channel = None

    async def _read(self, channel: grpc.aio.Channel, address: str,
                    request: fleet_pb.WatchRoutingTableRequest) -> None:
        stream = fleet_grpc.FleetServiceStub(channel).WatchRoutingTable(
            request, metadata=self.metadata)
        has_snapshot = False
        async for message in stream:
            if not has_snapshot and not message.is_snapshot:
                raise ValueError(f"{address} sent a change before its snapshot")
            base = RoutingTable() if message.is_snapshot else self.table
            self._set(base.apply(message))
            if not has_snapshot:
                has_snapshot = True
                self.is_connected = True
                self._backoff.reset()
                log.info("following the routing table of %s (revision %d, %d adapters, "
                         "%d workers)", address, message.revision, len(self.table.routes),
                         len(self.table.workers))

    async def place(self, request: fleet_pb.PlaceAdapterVersionRequest, timeout: float | None
                    ) -> fleet_pb.PlaceAdapterVersionResponse:
        """Asks the replica this follower follows to place a version on a worker
        (FleetService.PlaceAdapterVersion); UNAVAILABLE while no replica is followed."""
        channel = self._channel
        if channel is None:
            raise NoControlPlane("no control plane is reachable to place the version")
        return await fleet_grpc.FleetServiceStub(channel).PlaceAdapterVersion(
            request, timeout=timeout, metadata=self.metadata)

    def _set(self, table: RoutingTable) -> None:
        self.table = table
        self._on_change(table)


def _describe(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name} {error.details()}"
    return str(error)
