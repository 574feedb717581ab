"""The `lorafleet gateway` command: no torch, quick start, health, metrics from the start."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.gateway.conftest import generate

METRICS = ("lorafleet_gateway_requests_total", "lorafleet_gateway_picks_total",
           "lorafleet_gateway_retries_total", "lorafleet_gateway_outstanding_requests",
           "lorafleet_gateway_routing_table_age_seconds",
           "lorafleet_gateway_controlplane_connected")


def test_the_gateway_imports_no_torch():
    code = ("import sys, lorafleet.dataplane.gateway.cli, lorafleet.dataplane.gateway.app; "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


async def test_command_starts_fast_serves_health_and_metrics_without_a_control_plane():
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lorafleet.clients.cli", "gateway", "--controlplane",
        "127.0.0.1:1", "--port", "0", "--metrics-port", "0", "--insecure-no-auth",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        address = re.fullmatch(r"lorafleet gateway listening on (\S+)\n", first).group(1)
        lines = [(await asyncio.wait_for(process.stdout.readline(), 10)).decode()
                 for _ in range(2)]
        metrics_url = re.search(r"metrics: (\S+)", lines[1]).group(1)
        async with grpc.aio.insecure_channel(address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="lorafleet.inference.v1.InferenceService"),
                timeout=10)
            seconds = time.monotonic() - started
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            # No control plane has answered: a clear UNAVAILABLE, not a hang.
            reply = await generate(pb_grpc.InferenceServiceStub(channel), "acme/a", timeout=10)
        assert reply.code == grpc.StatusCode.UNAVAILABLE and "routing table" in reply.details
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=10)
                                       .read().decode())
        for name in METRICS:
            assert re.search(rf"^{name}(\{{[^}}]*\}})? ", text, re.M), name
        assert 'lorafleet_gateway_picks_total{tier="on_demand"} 0.0' in text
        assert "lorafleet_gateway_controlplane_connected 0.0" in text
        # Started, healthy and answering within a few seconds on a busy 2-core machine
        # (about one second when idle).
        assert seconds < 8, seconds
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
