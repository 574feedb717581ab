"""Calling any RPC by its descriptor with a message or raw bytes, and what counts as a
proper answer."""

from __future__ import annotations

import asyncio
import threading

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings

# A status a caller can act on. UNKNOWN means an exception escaped a servicer; INTERNAL a
# server bug; DEADLINE_EXCEEDED a hang (every call has a deadline far above its need).
PROPER = frozenset(grpc.StatusCode) - {
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS,
}


def fuzz_settings(num_examples: int) -> settings:
    """Deterministic (derandomized, no example database), no per-example deadline."""
    return settings(max_examples=num_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


def call(channel: grpc.Channel, method: MethodDescriptor, body, metadata=(),
         timeout: float = 15.0, max_messages: int | None = None) -> grpc.StatusCode:
    """Calls `method` with `body` (a message, or bytes sent as they are) and returns the
    status; a stream is read to its end, or cancelled (OK) after `max_messages`."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = (lambda b: b) if isinstance(body, bytes) else (lambda m: m.SerializeToString())
    parse = message_factory.GetMessageClass(method.output_type).FromString
    try:
        if not method.server_streaming:
            channel.unary_unary(path, request_serializer=serialize,
                                response_deserializer=parse)(body, timeout=timeout,
                                                             metadata=metadata)
            return grpc.StatusCode.OK
        stream = channel.unary_stream(path, request_serializer=serialize,
                                      response_deserializer=parse)(body, timeout=timeout,
                                                                   metadata=metadata)
        for count, _ in enumerate(stream, start=1):
            if max_messages is not None and count >= max_messages:
                stream.cancel()
                break
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def is_serving(channel: grpc.Channel) -> bool:
    """gRPC health says SERVING for the whole server."""
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=10)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


class LoopThread:
    """An asyncio loop on its own thread, for servers the blocking fuzz calls talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 60.0):
        """Runs a coroutine on the loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stops the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
