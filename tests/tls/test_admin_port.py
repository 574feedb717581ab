"""WorkerService on its own port (--admin-port): the inference port then exposes no
adapter loading, and the control plane and gateway reach WorkerService at the admin
address the worker reports in its heartbeat."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.controlplane.server import ControlPlane
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc
from tests.controlplane.conftest import Stubs, eventually, fast_config
from tests.gateway.conftest import add_adapter, generate
from tests.server.conftest import worker_config

BASE_MODEL = "tiny-llama"


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_the_inference_port_serves_no_worker_service(lora_suite):
    running = await start_worker(worker_config(lora_suite[0], model_name=BASE_MODEL),
                                 admin_port=0, http_port=0)
    try:
        assert running.admin_address != running.address
        async with grpc.aio.insecure_channel(running.address) as channel:
            admin_here = wpb_grpc.WorkerServiceStub(channel)
            assert await _code(admin_here.LoadAdapter(wpb.LoadAdapterRequest(
                adapter="acme/qv8", source_uri=str(lora_suite[1]["acme/qv8"])))) == \
                grpc.StatusCode.UNIMPLEMENTED
            assert await _code(admin_here.GetWorkerStatus(wpb.GetWorkerStatusRequest())) == \
                grpc.StatusCode.UNIMPLEMENTED
            reply = await generate(ipb_grpc.InferenceServiceStub(channel), max_tokens=2)
            assert reply.code == grpc.StatusCode.OK and len(reply.tokens) == 2
        async with grpc.aio.insecure_channel(running.admin_address) as channel:
            status = await wpb_grpc.WorkerServiceStub(channel).GetWorkerStatus(
                wpb.GetWorkerStatusRequest())
            assert (status.address, status.admin_address) == (running.address,
                                                              running.admin_address)
            inference_here = ipb_grpc.InferenceServiceStub(channel).Generate(
                ipb.GenerateRequest(token_ids=ipb.TokenIds(ids=[1, 2])))
            assert await _code(inference_here.read()) == grpc.StatusCode.UNIMPLEMENTED
        url = f"http://127.0.0.1:{running.http.port}/v1/models"  # models from the admin port
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert BASE_MODEL in [m["id"] for m in (await response.json())["data"]]
    finally:
        await running.stop(0.5)


@pytest.fixture
async def plane(etcd):
    replica = ControlPlane(fast_config(etcd))
    await replica.start()
    yield replica
    await replica.stop()


async def test_control_plane_and_gateway_load_through_the_admin_port(plane, lora_suite):
    controlplane = f"127.0.0.1:{plane.port}"
    running = await start_worker(
        worker_config(lora_suite[0], worker_id="split-0", model_name=BASE_MODEL),
        controlplanes=(controlplane,), heartbeat_seconds=0.3, admin_port=0)
    gateway = await start_gateway(GatewayConfig(controlplanes=(controlplane,), port=0,
                                                backoff_first_seconds=0.05))
    stubs = Stubs(controlplane)
    try:
        workers = await eventually(lambda: _workers(stubs))
        assert workers[0].admin_address == running.admin_address
        await add_adapter(stubs, "acme/qv8", [lora_suite[1]["acme/qv8"]], {1: 1})
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            reply = await eventually(lambda: _served(channel), timeout=20)
        assert reply.version == "acme/qv8@1"
        async with grpc.aio.insecure_channel(running.admin_address) as channel:
            listed = await wpb_grpc.WorkerServiceStub(channel).ListAdapters(
                wpb.ListAdaptersRequest())
        assert ("acme/qv8", 1) in {(a.adapter, a.version) for a in listed.adapters}
    finally:
        await stubs.channel.close()
        await gateway.stop(0.5)
        await running.stop(0.5)


async def _workers(stubs: Stubs):
    return list((await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())).workers)


async def _served(channel):
    reply = await generate(ipb_grpc.InferenceServiceStub(channel), "acme/qv8", max_tokens=2)
    return reply if reply.code == grpc.StatusCode.OK else None
