"""OpenAI request bodies to `GenerateRequest`s, naming the field of every refusal.

Fields this server does not know are ignored, as OpenAI-compatible servers do; fields it
knows but cannot honour (echo, penalties, tools, several choices) are refused when set to
anything but their "off" value, because ignoring them would silently change the answer.
Ranges the engine checks (temperature, top_p, logprobs, stop strings) are left to it, so
the worker and the gateway give the same message for the same mistake.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lorafleet.dataplane.openai_http import fields
from lorafleet.dataplane.openai_http.errors import bad_request
from lorafleet.inference.v1 import inference_service_pb2 as pb

# OpenAI's documented bound on top_logprobs.
MAX_TOP_LOGPROBS = 20
# field -> the values that mean "off"; anything else is refused.
_UNSUPPORTED = {
    "echo": (False,), "suffix": ("",), "best_of": (1,), "logit_bias": ({},),
    "presence_penalty": (0,), "frequency_penalty": (0,), "tools": ([],), "functions": ([],),
    "response_format": ({"type": "text"},),
}


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """One OpenAI request in gRPC terms, plus how the answer must be shaped."""

    generate: pb.GenerateRequest
    model: str
    is_stream: bool
    include_usage: bool


def parse_completion(body: dict, base_model: str) -> ParsedRequest:
    """A POST /v1/completions body."""
    request = _common(body, base_model, max_tokens_field="max_tokens")
    _set_prompt(request, body.get("prompt"))
    logprobs = fields.integer(body, "logprobs")
    if logprobs is not None:
        request.sampling.logprobs = logprobs
    return _parsed(body, request)


def parse_chat(body: dict, base_model: str) -> ParsedRequest:
    """A POST /v1/chat/completions body."""
    has_new_name = body.get("max_completion_tokens") is not None
    request = _common(body, base_model, max_tokens_field="max_completion_tokens"
                      if has_new_name else "max_tokens")
    request.chat.CopyFrom(_chat_messages(body.get("messages")))
    is_logprobs = fields.boolean(body, "logprobs")
    top = fields.integer(body, "top_logprobs", high=MAX_TOP_LOGPROBS)
    if top is not None and not is_logprobs:
        raise bad_request("top_logprobs", "needs logprobs set to true")
    if is_logprobs:
        request.sampling.logprobs = top or 0
    return _parsed(body, request)


def _common(body: dict, base_model: str, *, max_tokens_field: str) -> pb.GenerateRequest:
    """The fields completions and chat share: model, n, sampling, user, and vLLM's
    cache_salt (GenerateRequest.cache_salt)."""
    _refuse_unsupported(body)
    model = fields.string(body, "model")
    if not model:
        raise bad_request("model", "required: the base model's name or an adapter "
                                   "('tenant/name' or 'tenant/name@N')")
    n = fields.integer(body, "n")
    if n is not None and n != 1:
        raise bad_request("n", f"only 1 choice per request is supported, got {n}")
    request = pb.GenerateRequest(adapter="" if model == base_model else model,
                                 routing_key=fields.string(body, "user") or "",
                                 cache_salt=fields.string(body, "cache_salt") or "")
    _set_sampling(request.sampling, body, max_tokens_field)
    return request


def _set_sampling(sampling: pb.SamplingParams, body: dict, max_tokens_field: str) -> None:
    """Copies the sampling fields that are set; unset ones keep the proto's defaults."""
    max_tokens = fields.integer(body, max_tokens_field, low=1)
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    readers: dict[str, Callable] = {"temperature": fields.number, "top_p": fields.number,
                                    "seed": _seed, "top_k": fields.integer,
                                    "ignore_eos": fields.boolean}
    for name, read in readers.items():
        value = read(body, name)
        if value is not None:
            setattr(sampling, name, value)
    sampling.stop.extend(fields.strings(body, "stop"))
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None and stop_ids != []:
        ids = fields.token_ids(stop_ids, "stop_token_ids")
        if ids is None:
            raise bad_request("stop_token_ids", "must be a list of token ids")
        sampling.stop_token_ids.extend(ids)


def _seed(body: dict, name: str) -> int | None:
    return fields.integer(body, name, high=fields.MAX_UINT64)


def _set_prompt(request: pb.GenerateRequest, prompt) -> None:
    """A string, a list of one string, token ids, or a list of one list of token ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        request.text = prompt
        return
    ids = fields.token_ids(prompt, "prompt")
    if ids is None:
        raise bad_request("prompt", "must be a string, a list of one string, or a list of "
                                    "token ids (one prompt per request)")
    request.token_ids.ids.extend(ids)


def _chat_messages(messages) -> pb.ChatMessages:
    """`messages`: a non-empty list of {role, content}; content is text or text parts."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages", "must be a non-empty list of {role, content} objects")
    out = pb.ChatMessages()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(where, "must be an object with role and content")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise bad_request(f"{where}.role", "required: a string such as 'user'")
        out.messages.add(role=role, content=_content(message.get("content"), where))
    return out


def _content(content, where: str) -> str:
    """A message's text: a string, null (an empty turn), or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise bad_request(f"{where}.content",
                      "must be a string or a list of {type: text, text} parts")


def _refuse_unsupported(body: dict) -> None:
    for name, off_values in _UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value not in off_values:
            raise bad_request(name, f"not supported by lorafleet (got {value!r})")


def _parsed(body: dict, request: pb.GenerateRequest) -> ParsedRequest:
    is_stream = bool(fields.boolean(body, "stream"))
    options = fields.obj(body, "stream_options") or {}
    # Read under its full name so a wrong type is reported as stream_options.include_usage.
    name = "stream_options.include_usage"
    include_usage = bool(fields.boolean({name: options.get("include_usage")}, name))
    return ParsedRequest(request, body["model"], is_stream, is_stream and include_usage)
