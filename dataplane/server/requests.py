"""Translates a GenerateRequest into engine terms, naming the field of any problem."""

from __future__ import annotations

import dataclasses

from lorafleet.dataplane.engine.params import InvalidParamsError, SamplingParams
from lorafleet.inference.v1 import inference_service_pb2 as pb

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_PROMPT_CHARS = 1_000_000
MAX_CACHE_SALT_CHARS = 256


class BadRequest(ValueError):
    """A malformed request; the message starts with the field's name."""

    status_code_name = "INVALID_ARGUMENT"


@dataclasses.dataclass(frozen=True)
class PromptInput:
    """Exactly one prompt form: token ids, text, or chat messages."""

    token_ids: tuple[int, ...] | None = None
    text: str | None = None
    messages: tuple[dict, ...] | None = None

    def token_ids_for(self, tokenizer) -> tuple[int, ...]:
        """The prompt as token ids (text and chat through the model's tokenizer)."""
        if self.token_ids is not None:
            return self.token_ids
        if self.text is not None:
            return tuple(tokenizer.encode(self.text))
        return tuple(tokenizer.encode_chat(list(self.messages)))


def prompt_of(request: pb.GenerateRequest) -> PromptInput:
    """The request's prompt; raises BadRequest when it is missing or empty."""
    form = request.WhichOneof("prompt")
    if form is None:
        raise BadRequest("prompt: set one of text, token_ids or chat")
    if form == "text":
        if not request.text:
            raise BadRequest("text: the prompt is empty")
        if len(request.text) > MAX_PROMPT_CHARS:
            raise BadRequest(f"text: longer than {MAX_PROMPT_CHARS} characters")
        return PromptInput(text=request.text)
    if form == "token_ids":
        if not request.token_ids.ids:
            raise BadRequest("token_ids: the prompt is empty")
        return PromptInput(token_ids=tuple(request.token_ids.ids))
    messages = tuple({"role": m.role, "content": m.content} for m in request.chat.messages)
    if not messages:
        raise BadRequest("chat: no messages")
    if any(not m["role"] for m in messages):
        raise BadRequest("chat.messages.role: every message needs a role")
    return PromptInput(messages=messages)


def cache_salt_of(request: pb.GenerateRequest) -> str:
    """The request's prefix-cache salt ("" when none); raises BadRequest when too long."""
    if len(request.cache_salt) > MAX_CACHE_SALT_CHARS:
        raise BadRequest(f"cache_salt: at most {MAX_CACHE_SALT_CHARS} characters, "
                         f"got {len(request.cache_salt)}")
    return request.cache_salt


def sampling_of(request: pb.GenerateRequest) -> SamplingParams:
    """The request's sampling parameters, with the proto's defaults applied."""
    s = request.sampling
    _check_stops(s)
    kwargs = {
        "top_k": s.top_k or None,
        "stop": tuple(s.stop),
        "stop_token_ids": tuple(s.stop_token_ids),
        "ignore_eos": s.ignore_eos,
    }
    if s.max_tokens:
        kwargs["max_tokens"] = s.max_tokens
    for field in ("temperature", "top_p", "seed", "logprobs"):
        if s.HasField(field):
            kwargs[field] = getattr(s, field)
    try:
        return SamplingParams(**kwargs)
    except InvalidParamsError as exc:
        raise BadRequest(f"sampling.{exc}") from exc


def _check_stops(s: pb.SamplingParams) -> None:
    if len(s.stop) > MAX_STOP_STRINGS:
        raise BadRequest(f"sampling.stop: at most {MAX_STOP_STRINGS} stop strings, got {len(s.stop)}")
    for text in s.stop:
        if not text:
            raise BadRequest("sampling.stop: stop strings must not be empty")
        if len(text) > MAX_STOP_STRING_CHARS:
            raise BadRequest(
                f"sampling.stop: stop strings are at most {MAX_STOP_STRING_CHARS} characters")
    if len(s.stop_token_ids) > MAX_STOP_STRINGS * 4:
        raise BadRequest(f"sampling.stop_token_ids: at most {MAX_STOP_STRINGS * 4} ids")
