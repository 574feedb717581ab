"""The HTTP layer over a scripted InferenceService: framing, errors, translation."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import openai
import pytest

from tests.openai_http.fakes import BASE


async def _post(scripted, path, body, **kwargs):
    async with scripted.session.post(scripted.url + path, json=body, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


def _events(raw: bytes) -> list[str]:
    """The data of each server-sent event, checking the framing on the way."""
    assert raw.endswith(b"\n\n")
    events = raw.decode().split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def _client(scripted) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=scripted.url, api_key="sk-test", max_retries=0)


TABLE = [
    ("INVALID_ARGUMENT", 400, openai.BadRequestError),
    ("UNAUTHENTICATED", 401, openai.AuthenticationError),
    ("PERMISSION_DENIED", 403, openai.PermissionDeniedError),
    ("NOT_FOUND", 404, openai.NotFoundError),
    ("FAILED_PRECONDITION", 422, openai.UnprocessableEntityError),
    ("RESOURCE_EXHAUSTED", 429, openai.RateLimitError),
    ("UNAVAILABLE", 503, openai.InternalServerError),
    ("DEADLINE_EXCEEDED", 504, openai.InternalServerError),
    ("INTERNAL", 500, openai.InternalServerError),
    ("UNKNOWN", 500, openai.InternalServerError),
]


@pytest.mark.parametrize("is_stream", [False, True])
@pytest.mark.parametrize(("code", "status", "error_class"), TABLE)
async def test_grpc_codes_become_http_statuses_and_sdk_errors(
        scripted, code, status, error_class, is_stream):
    with pytest.raises(error_class) as info:
        await _client(scripted).completions.create(
            model="acme/x", prompt=f"abort:{code}:it went wrong", stream=is_stream)
    assert info.value.status_code == status
    assert info.value.body["message"] == "it went wrong"
    assert info.value.body["code"] == code.lower()


@pytest.mark.parametrize(("path", "body", "message", "param"), [
    ("/completions", {"prompt": "x"}, "sampling.top_p: must be in (0, 1]", "top_p"),
    ("/completions", {"prompt": "x"}, "text: the prompt is empty", "prompt"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}]},
     "chat.messages.role: every message needs a role", "messages"),
])
async def test_engine_refusals_name_the_openai_field(scripted, path, body, message, param):
    key = "prompt" if "prompt" in body else "messages"
    if key == "prompt":
        body = {"prompt": f"abort:INVALID_ARGUMENT:{message}"}
    else:
        body = {"messages": [{"role": "user", "content": f"abort:INVALID_ARGUMENT:{message}"}]}
    status, _, raw = await _post(scripted, path, {"model": "acme/x", **body})
    assert status == 400
    assert json.loads(raw)["error"]["param"] == param


async def test_completion_stream_is_sse_with_usage_and_done(scripted):
    status, headers, raw = await _post(scripted, "/completions", {
        "model": "acme/x", "prompt": "hello big world", "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = _events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "hello big world "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["lorafleet"]["adapter_version"] == "acme/x@7"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                                   "prompt_tokens_details": {"cached_tokens": 0}}


async def test_chat_stream_opens_with_the_role_and_ends_with_finish_reason(scripted):
    stream = await _client(scripted).chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "hi there"}], stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hi there "
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert chunks[0].object == "chat.completion.chunk"
    assert scripted.inference.requests[-1].adapter == ""  # the base model's name: no adapter


async def test_error_after_tokens_ends_the_stream_with_an_error_event(scripted):
    status, _, raw = await _post(scripted, "/completions", {
        "model": "acme/x", "prompt": "fail-after-tokens", "stream": True})
    assert status == 200
    events = _events(raw)
    assert "[DONE]" not in events
    assert json.loads(events[0])["choices"][0]["text"] == "partial "
    error = json.loads(events[-1])["error"]
    assert error["code"] == "internal" and "engine process died" in error["message"]
    with pytest.raises(openai.APIError, match="engine process died"):
        stream = await _client(scripted).completions.create(
            model="acme/x", prompt="fail-after-tokens", stream=True)
        [chunk async for chunk in stream]


async def test_non_streaming_bodies_and_headers(scripted):
    client = _client(scripted)
    raw = await client.completions.with_raw_response.create(
        model="acme/x", prompt="one two", extra_headers={"X-Request-Id": "abc-123"})
    completion = raw.parse()
    assert raw.headers["x-lorafleet-adapter-version"] == "acme/x@7"
    assert raw.headers["x-lorafleet-worker"] == "fake-worker"
    assert raw.headers["x-request-id"] == "abc-123"
    assert completion.id == "cmpl-abc-123" and completion.model == "acme/x"
    assert completion.choices[0].text == "one two " and completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 5
    chat = await client.chat.completions.create(
        model="acme/x@2", messages=[{"role": "user", "content": [{"type": "text", "text": "a b"}]}])
    assert chat.object == "chat.completion" and chat.model == "acme/x@2"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == "a b "


async def test_request_fields_reach_generate(scripted):
    await _client(scripted).completions.create(
        model="acme/x@2", prompt=[[11, 12, 13]], max_tokens=7, temperature=0, top_p=0.5,
        seed=2**63, stop="\n", user="user-42", logprobs=2,
        extra_body={"top_k": 4, "ignore_eos": True, "stop_token_ids": [9], "unknown": {"a": 1},
                    "cache_salt": "salt-1"},
        extra_headers={"Authorization": "Bearer sk-abc"})
    request = scripted.inference.requests[-1]
    assert request.adapter == "acme/x@2" and list(request.token_ids.ids) == [11, 12, 13]
    assert request.routing_key == "user-42"
    assert request.cache_salt == "salt-1"
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed) == (7, 0.0, 0.5, 2**63)
    assert (list(s.stop), s.logprobs, s.top_k, s.ignore_eos) == (["\n"], 2, 4, True)
    assert list(s.stop_token_ids) == [9]
    assert scripted.inference.metadata[-1]["authorization"] == "Bearer sk-abc"
    await _client(scripted).chat.completions.create(
        model=BASE, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        max_tokens=3, max_completion_tokens=9, logprobs=True, top_logprobs=3)
    request = scripted.inference.requests[-1]
    assert [(m.role, m.content) for m in request.chat.messages] == [("system", "s"), ("user", "u")]
    assert request.sampling.max_tokens == 9 and request.sampling.logprobs == 3
    assert not request.sampling.HasField("temperature")  # unset keeps the engine's default


async def test_logprobs_name_tokens_by_id(scripted):
    client = _client(scripted)
    completion = await client.completions.create(model="acme/x", prompt="a b", logprobs=1)
    logprobs = completion.choices[0].logprobs
    assert logprobs.tokens == ["token_id:100", "token_id:101"]
    assert logprobs.token_logprobs == [-0.5, -0.5]
    assert logprobs.top_logprobs == [{"token_id:7": -1.0}] * 2
    chat = await client.chat.completions.create(
        model="acme/x", messages=[{"role": "user", "content": "a"}], logprobs=True, top_logprobs=1)
    entry = chat.choices[0].logprobs.content[0]
    assert (entry.token, entry.logprob, entry.top_logprobs[0].token) == (
        "token_id:100", -0.5, "token_id:7")
    plain = await client.completions.create(model="acme/x", prompt="a b")
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(("path", "change", "param"), [
    ("/completions", {"n": 2}, "n"),
    ("/completions", {"temperature": "hot"}, "temperature"),
    ("/completions", {"max_tokens": 0}, "max_tokens"),
    ("/completions", {"max_tokens": 1.5}, "max_tokens"),
    ("/completions", {"seed": -1}, "seed"),
    ("/completions", {"stop": 5}, "stop"),
    ("/completions", {"prompt": {"text": "x"}}, "prompt"),
    ("/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/completions", {"prompt": [1, -2]}, "prompt"),
    ("/completions", {"logprobs": True}, "logprobs"),
    ("/completions", {"echo": True}, "echo"),
    ("/completions", {"model": ""}, "model"),
    ("/completions", {"user": 7}, "user"),
    ("/completions", {"cache_salt": 7}, "cache_salt"),
    ("/completions", {"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ("/chat/completions", {"messages": []}, "messages"),
    ("/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ("/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
    ("/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
])
async def test_bad_fields_are_400_naming_the_field(scripted, path, change, param):
    body = {"model": "acme/x", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    status, _, raw = await _post(scripted, path, {**body, **change})
    error = json.loads(raw)["error"]
    assert status == 400, error
    assert error["param"] == param and error["message"].startswith(param)
    assert error["type"] == "invalid_request_error"
    assert scripted.inference.requests == []  # refused before any gRPC call


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'{"temperature": NaN}', b"\xff"])
async def test_malformed_bodies_are_400(scripted, data):
    async with scripted.session.post(scripted.url + "/completions", data=data) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["code"] == "invalid_json"


async def test_body_over_the_limit_is_413_and_routes_answer_in_json(scripted):
    status, _, raw = await _post(scripted, "/completions",
                                 {"model": "acme/x", "prompt": "x" * (5 << 20)})
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    async with scripted.session.get(scripted.url + "/nothing") as response:
        assert response.status == 404 and "error" in await response.json()
    async with scripted.session.get(scripted.url + "/completions") as response:
        assert response.status == 405 and "error" in await response.json()


async def test_models_list_and_retrieve(scripted):
    client = _client(scripted)
    listed = [(m.id, m.model_extra["parent"]) async for m in client.models.list()]
    assert listed == [(BASE, None), ("acme/x", BASE), ("acme/x@2", BASE)]
    assert (await client.models.retrieve("acme/x@2")).id == "acme/x@2"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("acme/nope")


async def test_health_follows_grpc_health(scripted):
    async with scripted.session.get(f"http://127.0.0.1:{scripted.http.port}/health") as response:
        assert response.status == 200
    await scripted.grpc_server.health.enter_graceful_shutdown()
    async with scripted.session.get(f"http://127.0.0.1:{scripted.http.port}/health") as response:
        assert response.status == 503


async def test_server_cancelled_summary_is_503(scripted):
    with pytest.raises(openai.InternalServerError) as info:
        await _client(scripted).completions.create(model="acme/x",
                                                   prompt="summary:FINISH_REASON_CANCELLED")
    assert info.value.status_code == 503


@pytest.mark.slow
@pytest.mark.parametrize("is_stream", [True, False])
async def test_client_disconnect_cancels_the_grpc_call(scripted, is_stream):
    url = scripted.url + "/completions"
    body = {"model": "acme/x", "prompt": "hang", "stream": is_stream}
    if is_stream:
        async with scripted.session.post(url, json=body) as response:
            assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
    else:
        with pytest.raises(asyncio.TimeoutError):
            await scripted.session.post(url, json=body, timeout=0.5)
    await asyncio.wait_for(scripted.inference.cancelled.wait(), 5)


async def test_grpc_down_is_503(scripted):
    await scripted.grpc_server.server.stop(0)
    status, _, raw = await _post(scripted, "/completions", {"model": "acme/x", "prompt": "x"})
    assert status == 503 and json.loads(raw)["error"]["code"] == grpc.StatusCode.UNAVAILABLE.name.lower()


async def test_stop_lets_requests_in_flight_finish_and_refuses_new_ones(scripted):
    url = scripted.url + "/completions"
    async with scripted.session.post(url, json={"model": "acme/x", "prompt": "slow",
                                                "stream": True}) as response:
        first = await response.content.readuntil(b"\n\n")
        stopping = asyncio.create_task(scripted.http.stop(5.0))
        rest = await response.read()
    await stopping
    assert b'"slow "' in first and rest.endswith(b"data: [DONE]\n\n")
    with pytest.raises(aiohttp.ClientConnectionError):
        await scripted.session.post(url, json={"model": "acme/x", "prompt": "x"})


async def test_an_unknown_model_is_404_model_not_found_naming_the_base_model(scripted):
    # OpenAI answers an unknown model (gpt-4o) with 404 model_not_found; so does lorafleet.
    status, _, raw = await _post(scripted, "/completions", {
        "model": "acme/x", "prompt": "abort:INVALID_ARGUMENT:adapter 'gpt-4' must be 'tenant/name'"})
    error = json.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (404, "model_not_found", "model")
    assert repr(BASE) in error["message"]
