"""The blocking client: Generate (streamed or whole) and the admin calls.

    from lorafleet.clients.client import Client

    with Client("127.0.0.1:50051") as client:
        for event in client.generate_stream("Hello", adapter="acme/support", max_tokens=20):
            print(event)
        print(client.generate("Hello", adapter="acme/support").text)
"""

from __future__ import annotations

import itertools
import time

import grpc

from lorafleet.clients.connection import ClientBase
from lorafleet.clients.errors import error_from_rpc
from lorafleet.clients.events import CompletionBuilder
from lorafleet.clients.retry import Deadline


class Client(ClientBase):
    """A blocking client for one lorafleet server (see ClientBase for the arguments).

    Use it as a context manager, or call close(); it is safe to share between threads.
    """

    def _open_channel(self, address, credentials, options):
        if credentials is None:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, credentials, options=options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def _responses(self, request, timeout):
        deadline = Deadline(timeout)
        for attempt in itertools.count(1):
            is_started = False
            call = self._stubs["inference"].Generate(request, timeout=deadline.remaining(),
                                                     metadata=self._metadata)
            try:
                for message in call:
                    is_started = True
                    yield message
                return
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                pause = self.retry.pause_before_retry(error, attempt, is_started=is_started,
                                                      deadline=deadline)
                if pause is None:
                    raise error from exc
            finally:
                call.cancel()  # a no-op once the stream ended; frees it if the caller stopped
            time.sleep(pause)

    def _complete(self, events):
        builder = CompletionBuilder()
        for event in events:
            builder.add(event)
        return builder.build()

    def _unary(self, service, rpc, request, timeout):
        method = getattr(self._stubs[service], rpc)
        try:
            return method(request, timeout=self._deadline_of(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
