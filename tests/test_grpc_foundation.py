"""Every lorafleet server exposes health checking and reflection (grpcurl needs no protos)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.control.v1 import (
    adapter_service_pb2,
    adapter_service_pb2_grpc,
    fleet_service_pb2,
    fleet_service_pb2_grpc,
)
from lorafleet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from lorafleet.runtime.rpcserver import ServiceBinding, full_name, start_server
from lorafleet.worker.v1 import worker_service_pb2, worker_service_pb2_grpc
from tests.support.grpcurl import run_grpcurl

SERVICES = [
    (inference_service_pb2_grpc, inference_service_pb2, "InferenceService"),
    (worker_service_pb2_grpc, worker_service_pb2, "WorkerService"),
    (adapter_service_pb2_grpc, adapter_service_pb2, "AdapterService"),
    (fleet_service_pb2_grpc, fleet_service_pb2, "FleetService"),
]


def _bindings():
    # The generated base servicers answer UNIMPLEMENTED: enough to check the wiring.
    return [
        ServiceBinding(
            getattr(grpc_mod, f"add_{name}Servicer_to_server"),
            getattr(grpc_mod, f"{name}Servicer")(),
            full_name(pb2, name),
        )
        for grpc_mod, pb2, name in SERVICES
    ]


async def test_grpcurl_lists_services_and_health_is_serving():
    server = await start_server(_bindings(), "127.0.0.1:0")
    addr = f"127.0.0.1:{server.port}"
    try:
        listed = await asyncio.to_thread(run_grpcurl, addr, "list")
        assert listed.returncode == 0, listed.stderr
        names = set(listed.stdout.split())
        assert {
            "lorafleet.inference.v1.InferenceService",
            "lorafleet.worker.v1.WorkerService",
            "lorafleet.control.v1.AdapterService",
            "lorafleet.control.v1.FleetService",
            "grpc.health.v1.Health",
        } <= names
        check = await asyncio.to_thread(run_grpcurl, addr, "grpc.health.v1.Health/Check")
        assert check.returncode == 0, check.stderr
        assert '"status": "SERVING"' in check.stdout
        described = await asyncio.to_thread(
            run_grpcurl, addr, "describe", "lorafleet.inference.v1.GenerateRequest"
        )
        assert "routing_key" in described.stdout
    finally:
        await server.stop(0)


async def test_health_per_service_and_not_serving_after_stop():
    server = await start_server(_bindings(), "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service="lorafleet.worker.v1.WorkerService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.health.enter_graceful_shutdown()
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.stop(0)
