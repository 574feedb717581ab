"""OpenAI-style error bodies, and the one table from gRPC status codes to HTTP statuses.

Every failure the HTTP layer reports goes through `ApiError`, so a body always reads
`{"error": {"message", "type", "param", "code"}}`, as OpenAI's SDKs expect.
"""

from __future__ import annotations

import re

import grpc
from aiohttp import web

# gRPC code -> (HTTP status, OpenAI error type). FAILED_PRECONDITION is 422, not 400: the
# request is well formed but this adapter or model cannot serve it (trained for another
# base model, failed to load, no chat template), which a client should not "fix" by
# editing fields. The OpenAI SDK raises UnprocessableEntityError for it.
STATUS_OF_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (422, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
FALLBACK_STATUS = (500, "server_error")

# An INVALID_ARGUMENT message starts with the field it is about ("sampling.top_p: ...",
# "adapter 'x' must be ..."); these are the names of the same fields in an OpenAI request.
_PARAM_OF_FIELD = {
    "adapter": "model", "text": "prompt", "token_ids": "prompt", "prompt": "prompt",
    "chat": "messages", "max_tokens": "max_tokens", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "seed": "seed", "stop": "stop",
    "stop_token_ids": "stop_token_ids", "logprobs": "logprobs", "ignore_eos": "ignore_eos",
}
_FIELD = re.compile(r"^(?:sampling\.)?([a-z_]+)[.:\s]")
# Only an adapter can be missing or forbidden.
_PARAM_OF_CODE = {grpc.StatusCode.NOT_FOUND: "model", grpc.StatusCode.PERMISSION_DENIED: "model"}


class ApiError(Exception):
    """A failure to report as an OpenAI-style error body with an HTTP status."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type_, param, code

    def body(self) -> dict:
        """The JSON body: {"error": {...}}."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        """The error as an HTTP response."""
        return web.json_response(self.body(), status=self.status)


def bad_request(param: str, message: str) -> ApiError:
    """A 400 about one field of the request; the message starts with the field's name."""
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_argument")


def from_rpc_error(error: grpc.aio.AioRpcError, *, is_chat: bool = False) -> ApiError:
    """The ApiError for a failed gRPC call, through STATUS_OF_CODE."""
    code = error.code()
    status, type_ = STATUS_OF_CODE.get(code, FALLBACK_STATUS)
    message = error.details() or code.name.lower()
    param = _PARAM_OF_CODE.get(code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        param = param_of(message, is_chat=is_chat)
    return ApiError(status, message, type_=type_, param=param, code=code.name.lower())


def param_of(message: str, *, is_chat: bool = False) -> str | None:
    """The OpenAI request field an INVALID_ARGUMENT message names, if any."""
    match = _FIELD.match(message)
    param = _PARAM_OF_FIELD.get(match.group(1)) if match else None
    return "messages" if is_chat and param == "prompt" else param
