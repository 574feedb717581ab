"""The control plane driving real workers (tiny model, real engine) over real gRPC.

Greedy float32 outputs through the placed versions must equal peft, token for token.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from lorafleet.control.v1 import adapter_service_pb2 as pb
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.dataplane.server.app import start_worker
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc
from tests.controlplane.conftest import LEASE_TTL, RESYNC, eventually
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts
from tests.support.tiny_adapters import make_adapter

pytestmark = pytest.mark.slow

BASE_MODEL = "tiny-llama"


@pytest.fixture
async def real_workers(plane, lora_suite):
    """Two real workers heartbeating to `plane`; stopped after the test."""
    started = []

    async def start(worker_id: str):
        config = worker_config(lora_suite[0], worker_id=worker_id, model_name=BASE_MODEL,
                               max_loras=2, max_cpu_loras=4)
        running = await start_worker(config, controlplanes=(f"127.0.0.1:{plane.port}",),
                                     heartbeat_seconds=0.3)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0.5)


async def _resident(running) -> set[tuple[str, int]]:
    async with grpc.aio.insecure_channel(running.address) as channel:
        reply = await wpb_grpc.WorkerServiceStub(channel).ListAdapters(wpb.ListAdaptersRequest())
    return {(a.adapter, a.version) for a in reply.adapters if a.state == wpb.LOAD_STATE_READY}


async def _generate(address: str, adapter: str, prompt: list[int]) -> tuple[list[int], str]:
    request = ipb.GenerateRequest(adapter=adapter, token_ids=ipb.TokenIds(ids=prompt),
                                  sampling=ipb.SamplingParams(max_tokens=10, temperature=0))
    tokens, version = [], ""
    async with grpc.aio.insecure_channel(address) as channel:
        async for message in ipb_grpc.InferenceServiceStub(channel).Generate(request, timeout=30):
            if message.HasField("delta"):
                tokens.extend(message.delta.token_ids)
            else:
                version = message.summary.adapter_version
    return tokens, version


async def test_rollout_places_both_versions_on_real_workers_and_serves_them(
        stubs, real_workers, lora_suite, peft_reference, tmp_path):
    adapters = lora_suite[1]
    workers = [await real_workers("real-0"), await real_workers("real-1")]
    await eventually(lambda: _num_workers(stubs, 2))
    await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(
        adapter=pb.Adapter(name="acme/support", base_model=BASE_MODEL)))
    versions = []
    for source in (adapters["acme/qv8"], adapters["beta/ko16"]):
        reply = await stubs.adapters.CreateAdapterVersion(pb.CreateAdapterVersionRequest(
            adapter="acme/support", source_uri=str(source)))
        assert reply.version.state == pb.VERSION_STATE_READY, reply.version.reasons
        assert len(reply.version.digest) == 64
        versions.append(reply.version)
    bad_source = make_adapter(lora_suite[0], tmp_path / "r128", r=128, alpha=8,
                              target_modules=["q_proj"])
    refused = await stubs.adapters.CreateAdapterVersion(pb.CreateAdapterVersionRequest(
        adapter="acme/support", source_uri=str(bad_source)))
    assert refused.version.state == pb.VERSION_STATE_REJECTED
    assert any("rank" in reason for reason in refused.version.reasons)
    await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(adapter="acme/support", weights=[
        pb.VersionWeight(version=1, weight=90), pb.VersionWeight(version=2, weight=10)]))

    async def both_resident():
        held = set()
        for running in workers:
            held |= await _resident(running)
        return {("acme/support", 1), ("acme/support", 2)} <= held

    await eventually(both_resident, timeout=20)
    stream = stubs.fleet.WatchRoutingTable(fleet_pb.WatchRoutingTableRequest())
    table = {}
    while not (table.get("acme/support") and all(v.workers for v in table["acme/support"].versions)):
        message = await asyncio.wait_for(stream.read(), 10)
        table.update({route.adapter: route for route in message.routes})
    stream.cancel()
    routed = {(v.version, v.weight, v.digest): {w.worker_id for w in v.workers}
              for v in table["acme/support"].versions}
    assert set(routed) == {(1, 90, versions[0].digest), (2, 10, versions[1].digest)}
    assert set().union(*routed.values()) <= {"real-0", "real-1"}
    prompt = prompts(3)[2]
    for version, reference in ((1, "acme/qv8"), (2, "beta/ko16")):
        holder = await _holder(workers, ("acme/support", version))
        tokens, served = await _generate(holder.address, f"acme/support@{version}", prompt)
        assert served == f"acme/support@{version}"
        assert tokens == peft_reference.greedy(reference, prompt)


async def test_killed_real_worker_adapters_move_to_the_survivor(stubs, real_workers, lora_suite):
    adapters = lora_suite[1]
    workers = [await real_workers("kill-0"), await real_workers("kill-1")]
    await eventually(lambda: _num_workers(stubs, 2))
    for name, source in (("acme/a", adapters["acme/qv8"]), ("acme/b", adapters["beta/q8"])):
        await stubs.adapters.CreateAdapter(pb.CreateAdapterRequest(
            adapter=pb.Adapter(name=name, base_model=BASE_MODEL)))
        await stubs.adapters.CreateAdapterVersion(pb.CreateAdapterVersionRequest(
            adapter=name, source_uri=str(source)))
        await stubs.adapters.UpdateRollout(pb.UpdateRolloutRequest(
            adapter=name, weights=[pb.VersionWeight(version=1, weight=1)]))
    wanted = {("acme/a", 1), ("acme/b", 1)}

    async def placed():
        held = [await _resident(w) for w in workers]
        return wanted <= held[0] | held[1]

    await eventually(placed, timeout=20)
    victim = workers[0] if await _resident(workers[0]) else workers[1]
    survivor = workers[1] if victim is workers[0] else workers[0]
    await victim.stop(0)
    workers.remove(victim)

    async def moved():
        return wanted <= await _resident(survivor)

    await eventually(moved, timeout=LEASE_TTL + RESYNC + 10)


async def _num_workers(stubs, count) -> bool:
    reply = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
    return len(reply.workers) == count


async def _holder(workers, key):
    for running in workers:
        if key in await _resident(running):
            return running
    raise AssertionError(f"no worker holds {key}")


async def test_lorafleet_worker_command_registers_and_leaves(stubs, plane, lora_suite):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lorafleet.clients.cli", "worker", "--model", str(lora_suite[0]),
        "--model-name", BASE_MODEL, "--controlplane", f"127.0.0.1:{plane.port}",
        "--port", "0", "--metrics-port", "-1", "--device", "cpu",
        "--kv-cache-bytes", str(8 << 20), "--worker-id", "cli-worker",
        "--heartbeat-seconds", "0.3", "--insecure-no-auth", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        async def registered():
            reply = await stubs.fleet.ListWorkers(fleet_pb.ListWorkersRequest())
            return [w for w in reply.workers if w.worker_id == "cli-worker"]

        (worker,) = await eventually(registered, timeout=30)
        assert worker.base_model.name == BASE_MODEL and worker.capacities.max_loras == 8
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0

        async def gone():
            return not await registered()

        await eventually(gone, timeout=LEASE_TTL + 5)
    finally:
        if process.returncode is None:
            process.kill()
