"""A worker's heartbeat to the control plane: identity, limits, load and adapters.

Sent every `interval` seconds (the control plane may ask for another interval) to the
first control-plane replica that answers; a worker whose heartbeats stop is dropped by the
control plane after its lease TTL and its adapters are placed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.dataplane.server.worker_service import WorkerServicer
from lorafleet.runtime.auth import bearer
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

log = logging.getLogger(__name__)

# Answers that mean "not this worker", not "not now": logged as errors, not retried
# against the other replicas.
_REFUSALS = (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


class Heartbeat:
    """Background task reporting this worker to the control plane."""

    def __init__(self, servicer: WorkerServicer, controlplanes: Sequence[str], *,
                 interval: float = 2.0, rpc_timeout: float = 2.0,
                 tls: TlsConfig = PLAINTEXT_TLS, api_key: str | None = None):
        if not controlplanes:
            raise ValueError("at least one control-plane address is required")
        self._servicer = servicer
        self._controlplanes = list(controlplanes)
        self.interval = interval
        self._rpc_timeout = rpc_timeout
        self._tls = tls  # how to reach the control plane: plaintext, TLS or mTLS
        self._metadata = bearer(api_key)  # the worker key its id is bound to
        self._task: asyncio.Task | None = None
        self.is_draining = False  # the control plane is moving adapters off this worker
        self.refusal = ""  # why the control plane refuses this worker, while it does

    def describe(self) -> fleet_pb.Worker:
        """This worker as a heartbeat reports it."""
        status = self._servicer.status()
        adapters = [self._servicer.residency(e) for e in self._servicer.worker.versions.entries()]
        return fleet_pb.Worker(
            worker_id=status.worker_id, address=status.address,
            admin_address=status.admin_address, base_model=status.base_model,
            capacities=status.capacities, load=status.load, adapters=adapters)

    async def send_once(self) -> bool:
        """One heartbeat to the first replica that answers; False if none did."""
        request = fleet_pb.SendHeartbeatRequest(worker=self.describe())
        for address in self._controlplanes:
            try:
                async with self._tls.aio_channel(address) as channel:
                    reply = await fleet_grpc.FleetServiceStub(channel).SendHeartbeat(
                        request, timeout=self._rpc_timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REFUSALS:  # every replica would say the same
                    self._note_refusal(exc.details())
                    return False
                log.debug("heartbeat to %s failed: %s", address, exc.code().name)
                continue
            self.refusal = ""
            self.is_draining = reply.is_draining
            if reply.heartbeat_interval_seconds:
                self.interval = float(reply.heartbeat_interval_seconds)
            return True
        return False

    def _note_refusal(self, details: str) -> None:
        if details != self.refusal:
            log.error("the control plane refused this worker's heartbeat: %s", details)
        self.refusal = details

    def start(self) -> None:
        """Starts heartbeating in the background."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        was_ok = True
        while True:
            is_ok = await self.send_once()
            if is_ok != was_ok:
                log.warning("control plane %s", "reachable again" if is_ok else
                            f"unreachable at {', '.join(self._controlplanes)}; retrying")
            was_ok = is_ok
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Stops heartbeating."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
