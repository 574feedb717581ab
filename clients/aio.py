"""The asyncio client (grpc.aio): the same calls as Client, awaited.

    from lorafleet.clients.aio import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as client:
        async for event in client.generate_stream("Hello", adapter="acme/support"):
            print(event)
        completion = await client.generate("Hello", adapter="acme/support")
"""

from __future__ import annotations

import asyncio
import itertools

import grpc

from lorafleet.clients.connection import ClientBase
from lorafleet.clients.errors import error_from_rpc
from lorafleet.clients.events import CompletionBuilder, event_of
from lorafleet.clients.retry import Deadline


class AsyncClient(ClientBase):
    """An asyncio client for one lorafleet server (see ClientBase for the arguments).

    Create it inside a running event loop; use `async with`, or `await close()`.
    `generate_stream` returns an async iterator; every other call returns an awaitable.
    """

    def _open_channel(self, address, credentials, options):
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, credentials, options=options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def _responses(self, request, timeout):
        deadline = Deadline(timeout)
        for attempt in itertools.count(1):
            is_started = False
            call = self._stubs["inference"].Generate(request, timeout=deadline.remaining(),
                                                     metadata=self._metadata)
            try:
                async for message in call:
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
            await asyncio.sleep(pause)

    async def _events(self, responses):
        async for message in responses:
            yield event_of(message)

    async def _complete(self, events):
        builder = CompletionBuilder()
        async for event in events:
            builder.add(event)
        return builder.build()

    async def _unary(self, service, rpc, request, timeout):
        method = getattr(self._stubs[service], rpc)
        try:
            return await method(request, timeout=self._deadline_of(timeout),
                                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
