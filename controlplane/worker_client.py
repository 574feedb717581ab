"""Calls to workers' WorkerService, one cached channel per address, with retries.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried
with exponential backoff a few times; every other status is final and raised at once.
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig
from lorafleet.worker.v1 import worker_service_pb2_grpc as worker_grpc

TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
     grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclasses.dataclass(frozen=True)
class CallPolicy:
    """Deadline and retries of one call to a worker."""

    timeout_seconds: float = 5.0
    num_attempts: int = 3
    first_delay: float = 0.1


def admin_address(worker: fleet_pb.Worker) -> str:
    """Where a worker's WorkerService listens: its admin address (--admin-port), else the
    address of its InferenceService."""
    return worker.admin_address or worker.address


class WorkerClients:
    """WorkerService stubs by worker address, reached with `tls`; `close()` closes every
    channel."""

    def __init__(self, policy: CallPolicy | None = None, tls: TlsConfig = PLAINTEXT_TLS):
        self.policy = policy or CallPolicy()
        self._tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.metadata: tuple[tuple[str, str], ...] = ()  # the replica's key (access.py)

    def stub(self, address: str) -> worker_grpc.WorkerServiceStub:
        """A stub for the worker at `address`, reusing its channel."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._tls.aio_channel(address)
            self._channels[address] = channel
        return worker_grpc.WorkerServiceStub(channel)

    async def call(self, address: str, method: str, request, timeout: float | None = None,
                   num_attempts: int | None = None):
        """Calls `method` on the worker at `address`, retrying transient failures (up to
        `num_attempts` tries, the policy's by default)."""
        delay = self.policy.first_delay
        num_left = num_attempts or self.policy.num_attempts
        while True:
            num_left -= 1
            try:
                rpc = getattr(self.stub(address), method)
                return await rpc(request, timeout=timeout or self.policy.timeout_seconds,
                                 metadata=self.metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() not in TRANSIENT_CODES or num_left <= 0:
                    raise
            await asyncio.sleep(delay)
            delay *= 2

    async def is_answering(self, address: str) -> bool:
        """Whether a server answers a health check at `address` within a second (any
        answer counts; only UNAVAILABLE and DEADLINE_EXCEEDED mean nobody is there)."""
        channel = self._tls.aio_channel(address)
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=1.0)
        except grpc.aio.AioRpcError as error:
            return error.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            await channel.close()
        return True

    async def close(self) -> None:
        """Closes every channel."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
