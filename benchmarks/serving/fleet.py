"""A gateway in front of workers this benchmark started, without etcd or a control plane:
a FleetService that serves one fixed routing table (every adapter on every worker, in its
device slots), and `lorafleet gateway` following it, as a user would start it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import time

import grpc

from benchmarks.serving.worker_process import BASE_MODEL_NAME, WorkerProcess, start_lorafleet
from lorafleet.control.v1 import fleet_service_pb2 as fleet_pb
from lorafleet.control.v1 import fleet_service_pb2_grpc as fleet_grpc
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc

_LISTENING = re.compile(r"listening on (\S+)")


class StaticFleet(fleet_grpc.FleetServiceServicer):
    """WatchRoutingTable: one snapshot, then the stream stays open and quiet."""

    def __init__(self, snapshot: fleet_pb.WatchRoutingTableResponse):
        self.snapshot = snapshot

    def WatchRoutingTable(self, request, context):
        """The snapshot, then nothing until the gateway hangs up."""
        yield self.snapshot
        while context.is_active():
            time.sleep(0.2)


def routing_snapshot(workers: list[WorkerProcess]) -> fleet_pb.WatchRoutingTableResponse:
    """Every default adapter version of the first worker, held on the device tier by every
    worker (they were started with the same --adapter options)."""
    with grpc.insecure_channel(workers[0].address) as channel:
        listed = wpb_grpc.WorkerServiceStub(channel).ListAdapters(wpb.ListAdaptersRequest(),
                                                                  timeout=30)
    ids = [f"w-{i}" for i in range(len(workers))]
    endpoints = [fleet_pb.WorkerEndpoint(worker_id=i, address=w.address, tier=wpb.TIER_DEVICE)
                 for i, w in zip(ids, workers, strict=True)]
    routes = [fleet_pb.AdapterRoute(adapter=a.adapter, base_model=BASE_MODEL_NAME, versions=[
        fleet_pb.VersionRoute(version=a.version, digest=a.digest, weight=1, workers=endpoints)])
        for a in listed.adapters if a.is_default]
    live = [fleet_pb.WorkerRoute(worker_id=i, address=w.address, base_model=BASE_MODEL_NAME)
            for i, w in zip(ids, workers, strict=True)]
    return fleet_pb.WatchRoutingTableResponse(revision=1, is_snapshot=True, routes=routes,
                                              workers=live)


@contextlib.contextmanager
def gateway_over(workers: list[WorkerProcess]):
    """A `lorafleet gateway` process routing to `workers` by a fixed table; yields it."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    fleet_grpc.add_FleetServiceServicer_to_server(StaticFleet(routing_snapshot(workers)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gateway = None
    try:
        gateway = start_lorafleet(
            ["gateway", "--controlplane", f"127.0.0.1:{port}", "--port", "0",
             "--metrics-port", "-1", "--insecure-no-auth", "--grace-seconds", "1"],
            {"address": _LISTENING}, timeout=120)
        _wait_routable(gateway.address)
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop(0)


def _wait_routable(address: str, timeout: float = 60.0) -> None:
    """Until the gateway has its table: a one-token base-model request answers."""
    request = ipb.GenerateRequest(token_ids=ipb.TokenIds(ids=[11, 12]),
                                  sampling=ipb.SamplingParams(max_tokens=1))
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        while True:
            try:
                for _ in stub.Generate(request, timeout=30):
                    pass
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
