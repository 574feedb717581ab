"""A real worker (the same `start_worker` as `lorafleet serve`) on its own event loop
thread, so tests can call it with ordinary blocking gRPC stubs from many threads."""

from __future__ import annotations

import asyncio
import threading

import grpc

from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.server.app import start_worker
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from lorafleet.worker.v1 import worker_service_pb2_grpc as wpb_grpc


class WorkerThread:
    """Starts a worker on 127.0.0.1 with free ports; `stop()` shuts it down."""

    def __init__(self, config: WorkerConfig, adapters=(), **start_options):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running = self.run(start_worker(config, port=0, metrics_port=0,
                                             adapters=tuple(adapters), **start_options))
        self.channel = grpc.insecure_channel(self.address)
        self.inference = ipb_grpc.InferenceServiceStub(self.channel)
        self.admin = wpb_grpc.WorkerServiceStub(self.channel)

    @property
    def address(self) -> str:
        """host:port of the gRPC server."""
        return self.running.address

    def run(self, coro, timeout: float = 120.0):
        """Runs a coroutine on the worker's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def generate(self, adapter: str = "", prompt=None, *, max_tokens: int = 10, timeout=60,
                 cache_salt: str = "", **sampling) -> tuple[list[int], ipb.GenerateSummary]:
        """Greedy (unless sampling says otherwise) completion: (token ids, summary)."""
        sampling.setdefault("temperature", 0.0)
        request = ipb.GenerateRequest(adapter=adapter, cache_salt=cache_salt,
                                      sampling=ipb.SamplingParams(max_tokens=max_tokens,
                                                                  **sampling))
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        tokens, summary = [], None
        for message in self.inference.Generate(request, timeout=timeout):
            if message.HasField("delta"):
                tokens.extend(message.delta.token_ids)
            else:
                summary = message.summary
        return tokens, summary

    def status(self) -> wpb.GetWorkerStatusResponse:
        """GetWorkerStatus."""
        return self.admin.GetWorkerStatus(wpb.GetWorkerStatusRequest())

    def stop(self) -> None:
        """Stops the worker and its loop."""
        self.channel.close()
        self.run(self.running.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
