"""The OpenAI-compatible endpoints: each translates to one gRPC call and back."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.dataplane.openai_http.answers import REQUEST_ID_HEADER, answer_once, answer_stream
from lorafleet.dataplane.openai_http.errors import ApiError, from_rpc_error
from lorafleet.dataplane.openai_http.limits import BODY_SECONDS, MAX_BODY_BYTES
from lorafleet.dataplane.openai_http.models import ModelCard, ModelLister
from lorafleet.dataplane.openai_http.parse import ParsedRequest, parse_chat, parse_completion
from lorafleet.dataplane.openai_http.shapes import ChatShape, CompletionShape, Shape
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.runtime.auth.interceptor import AuthInterceptor, VerifierUnavailable
from lorafleet.runtime.auth.principals import Principal

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class OpenAIApi:
    """Handlers of /v1/completions, /v1/chat/completions, /v1/models and /health."""

    def __init__(self, channel: grpc.aio.Channel, models: ModelLister,
                 base_model: str | Callable[[], str], auth: AuthInterceptor | None = None):
        self._inference = ipb_grpc.InferenceServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._models = models
        self._auth = auth  # who may see which models (None: auth off)
        self._base_model = base_model if callable(base_model) else (lambda: base_model)
        self._created = int(time.time())

    def add_routes(self, app: web.Application) -> None:
        """Registers every endpoint on `app`."""
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.retrieve_model)
        app.router.add_get("/health", self.health)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        parsed = parse_completion(await read_body(request), self._base_model())
        return await self._generate(request, parsed, CompletionShape, is_chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        parsed = parse_chat(await read_body(request), self._base_model())
        return await self._generate(request, parsed, ChatShape, is_chat=True)

    async def _generate(self, request: web.Request, parsed: ParsedRequest,
                        shape_class: type[Shape], *, is_chat: bool) -> web.StreamResponse:
        # The call below leaves this process with its own TLS identity; only the caller's
        # key may speak for the caller, so a caller without one never gets that far.
        await self._authenticate(request)
        parsed.generate.request_id = request_id_of(request)
        shape = shape_class(parsed.model, parsed.generate.request_id,
                            has_logprobs=parsed.generate.sampling.HasField("logprobs"),
                            include_usage=parsed.include_usage)
        call = self._inference.Generate(parsed.generate, metadata=metadata_of(request))
        try:
            if parsed.is_stream:
                return await answer_stream(request, call, shape, is_chat=is_chat)
            return await answer_once(call, shape)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, is_chat=is_chat)
            if error.param == "model" and error.status == 400:  # not a model name at all
                error = ApiError(404, f"The model {parsed.model!r} does not exist: give the base "
                                      f"model's name {self._base_model()!r} or an adapter "
                                      "'tenant/name[@N]'", param="model", code="model_not_found")
            raise error from exc
        finally:
            call.cancel()  # a no-op once the stream has ended; frees the sequence otherwise

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the base model, then every servable adapter reference."""
        cards = await self._visible_cards(request)
        return web.json_response({"object": "list", "data": [self._card(c) for c in cards]})

    async def retrieve_model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}."""
        wanted = request.match_info["model"]
        for card in await self._visible_cards(request):
            if card.id == wanted:
                return web.json_response(self._card(card))
        raise ApiError(404, f"model {wanted!r} is neither the base model nor a servable "
                            "adapter", type_="not_found_error", param="model", code="not_found")

    async def _authenticate(self, request: web.Request) -> Principal | None:
        """The caller's principal from its own API key (None: auth is off). With auth on,
        no key or a bad one is 401 here, before any call leaves this process."""
        if self._auth is None:
            return None
        try:
            principal = await self._auth.principal_of(metadata_of(request))
        except VerifierUnavailable as exc:
            raise ApiError(503, f"cannot check the API key: {exc}",
                           type_="service_unavailable_error", code="unavailable") from exc
        if principal is None:
            raise ApiError(401, "invalid or missing API key: send 'Authorization: "
                                "Bearer <key>'", type_="authentication_error",
                           code="invalid_api_key")
        return principal

    async def _visible_cards(self, request: web.Request) -> list[ModelCard]:
        """The models the caller may see: with auth on, a valid key is required and a
        tenant sees the base models and its own adapters only."""
        principal = await self._authenticate(request)
        try:
            cards = await self._models.list_models(metadata_of(request))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        return [c for c in cards if principal is None or c.parent is None or principal.owns(c.id)]

    async def health(self, request: web.Request) -> web.Response:
        """GET /health: 200 while the gRPC server reports SERVING, else 503."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            is_serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            is_serving = False
        if not is_serving:
            raise ApiError(503, "not serving", type_="service_unavailable_error",
                           code="unavailable")
        return web.json_response({"status": "serving"})

    def _card(self, card: ModelCard) -> dict:
        return {"id": card.id, "object": "model", "created": self._created,
                "owned_by": card.owned_by, "parent": card.parent}


async def read_body(request: web.Request) -> dict:
    """The request's JSON object; 400 when it is not one (nested too deeply included), 413
    past the size limit (announced or sent), 408 when it does not arrive in time."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body announces {request.content_length} bytes; the limit "
                            f"is {MAX_BODY_BYTES}", code="request_too_large")
    try:  # raises HTTPRequestEntityTooLarge past client_max_size
        raw = await asyncio.wait_for(request.read(), BODY_SECONDS)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_SECONDS:.0f} s",
                       code="request_timeout") from None
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply",
                       code="invalid_json") from None
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id, or a new id."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is None:
        return uuid.uuid4().hex
    if not _REQUEST_ID.match(given):
        raise ApiError(400, "X-Request-Id header: 1-128 letters, digits or ._:-",
                       code="invalid_argument")
    return given


def metadata_of(request: web.Request) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for the call: the caller's Authorization header, passed through."""
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return ()
    if not (authorization.isascii() and authorization.isprintable()):
        raise ApiError(400, "Authorization header: printable ASCII only",
                       type_="authentication_error", code="invalid_argument")
    return (("authorization", authorization),)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
