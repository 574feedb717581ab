"""Turning one Generate stream into an HTTP answer: a JSON body, or server-sent events.

A stream waits for the first Generate message before it sends headers, so every refusal
that comes before a token (unknown adapter, full queue, bad field) is still a plain HTTP
error with the right status. A failure after that ends the stream with an error event
and no `[DONE]`, so a client never mistakes it for a complete answer.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from aiohttp import web

from lorafleet.dataplane.openai_http.errors import ApiError, from_rpc_error
from lorafleet.dataplane.openai_http.limits import STALL_SECONDS
from lorafleet.dataplane.openai_http.shapes import FINISH_REASONS, Shape
from lorafleet.inference.v1 import inference_service_pb2 as pb

ADAPTER_VERSION_HEADER = "x-lorafleet-adapter-version"
WORKER_HEADER = "x-lorafleet-worker"
REQUEST_ID_HEADER = "x-request-id"
DONE = b"data: [DONE]\n\n"


async def answer_once(call, shape: Shape) -> web.Response:
    """The whole completion as one JSON body, once the stream has ended."""
    text, logprobs, summary = [], [], None
    async for message in call:
        if message.HasField("delta"):
            text.append(message.delta.text)
            logprobs.extend(message.delta.logprobs)
        else:
            summary = message.summary
    summary = check_finished(summary)
    headers = {WORKER_HEADER: summary.worker_id, REQUEST_ID_HEADER: shape.request_id}
    if summary.adapter_version:
        headers[ADAPTER_VERSION_HEADER] = summary.adapter_version
    return web.json_response(shape.body("".join(text), logprobs, summary), headers=headers)


async def answer_stream(request: web.Request, call, shape: Shape, *,
                        is_chat: bool) -> web.StreamResponse:
    """Server-sent events: `data: {chunk}` per message, then `data: [DONE]`."""
    messages = call.__aiter__()
    message = await anext(messages, None)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # proxies such as nginx would hold the chunks back
        REQUEST_ID_HEADER: shape.request_id})
    await response.prepare(request)
    try:
        await _send_all(response, shape, message, messages, is_chat=is_chat)
        await response.write_eof()
    except ClientStalled:
        if request.transport is not None:
            request.transport.abort()  # it reads nothing: nothing more is sent
    except ConnectionResetError:
        pass  # the client left; the caller cancels the Generate call
    return response


class ClientStalled(Exception):
    """The client read nothing for STALL_SECONDS while its stream had more to send."""


async def _write(response: web.StreamResponse, data: bytes) -> None:
    """Writes one chunk; ClientStalled when the client has not made room for it in time."""
    try:
        await asyncio.wait_for(response.write(data), STALL_SECONDS)
    except asyncio.TimeoutError:
        raise ClientStalled() from None


async def _send_all(response: web.StreamResponse, shape: Shape, message, messages, *,
                    is_chat: bool) -> None:
    """Every chunk, then [DONE]; or an error event in place of the rest."""
    try:
        for chunk in shape.opening_chunks():
            await _send(response, chunk)
        summary = None
        while message is not None:
            summary = await _send_message(response, shape, message) or summary
            message = await anext(messages, None)
        check_finished(summary)  # a stream cut short without its summary is an error
        await _write(response, DONE)
    except grpc.aio.AioRpcError as exc:
        await _send(response, from_rpc_error(exc, is_chat=is_chat).body())
    except ApiError as exc:
        await _send(response, exc.body())


def check_finished(summary: pb.GenerateSummary | None) -> pb.GenerateSummary:
    """The summary of a stream that ended normally; raises ApiError otherwise."""
    if summary is None:
        raise ApiError(502, "the Generate stream ended without a summary",
                       type_="server_error", code="internal")
    if summary.finish_reason in FINISH_REASONS:
        return summary
    if summary.finish_reason == pb.FINISH_REASON_CANCELLED:
        raise ApiError(503, "the request was cancelled by the server (shutting down)",
                       type_="service_unavailable_error", code="unavailable")
    raise ApiError(500, summary.error_message or "generation failed",
                   type_="server_error", code="internal")


async def _send_message(response: web.StreamResponse, shape: Shape,
                        message: pb.GenerateResponse) -> pb.GenerateSummary | None:
    """Sends the chunks of one Generate message; returns the summary when it is one."""
    if message.HasField("delta"):
        delta = message.delta
        # Tokens whose text is held back (a partial character or stop string) carry
        # nothing to show unless the caller asked for their log-probabilities.
        if delta.text or (shape.has_logprobs and delta.logprobs):
            await _send(response, shape.delta_chunk(delta))
        return None
    summary = check_finished(message.summary)
    await _send(response, shape.finish_chunk(summary))
    if shape.include_usage:
        await _send(response, shape.usage_chunk(summary))
    return summary


async def _send(response: web.StreamResponse, chunk: dict) -> None:
    await _write(response, b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
