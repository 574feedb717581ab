"""Builds a GenerateRequest from Python arguments.

Only the shape is checked here (one prompt form, types the message can hold); what the
values mean (lengths, ranges, the adapter's existence) is the server's to judge, so the
rules live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from lorafleet.clients.errors import InvalidArgument
from lorafleet.inference.v1 import inference_service_pb2 as pb

# A chat turn: {"role": ..., "content": ...} or (role, content).
Message = Mapping[str, str] | tuple[str, str]


def generate_request(
    prompt: str | None = None,
    *,
    messages: Iterable[Message] | None = None,
    token_ids: Sequence[int] | None = None,
    adapter: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    logprobs: int | None = None,
    ignore_eos: bool = False,
    routing_key: str = "",
    request_id: str = "",
) -> pb.GenerateRequest:
    """The request for one prompt; InvalidArgument names the argument that does not fit.

    None leaves a sampling field unset, so the server's documented default applies.
    """
    request = pb.GenerateRequest(adapter=adapter, routing_key=routing_key,
                                 request_id=request_id)
    _set_prompt(request, prompt, messages, token_ids)
    sampling = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, logprobs=logprobs, ignore_eos=ignore_eos or None,
                    stop=[stop] if isinstance(stop, str) else list(stop),
                    stop_token_ids=list(stop_token_ids))
    for field, value in sampling.items():
        if value is None or value == []:
            continue
        try:
            if isinstance(value, list):
                getattr(request.sampling, field).extend(value)
            else:
                setattr(request.sampling, field, value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{field}: {exc}") from None
    return request


def _set_prompt(request: pb.GenerateRequest, prompt, messages, token_ids) -> None:
    given = [name for name, value in (("prompt", prompt), ("messages", messages),
                                      ("token_ids", token_ids)) if value is not None]
    if len(given) != 1:
        raise InvalidArgument("give exactly one of prompt, messages or token_ids "
                              f"(got {', '.join(given) or 'none'})")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidArgument(f"prompt: must be a str, not {type(prompt).__name__}")
        request.text = prompt
    elif token_ids is not None:
        try:
            request.token_ids.ids.extend(token_ids)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"token_ids: {exc}") from None
    else:
        for index, message in enumerate(messages):
            role, content = _turn(index, message)
            request.chat.messages.add(role=role, content=content)


def _turn(index: int, message: Message) -> tuple[str, str]:
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    elif isinstance(message, tuple) and len(message) == 2:
        role, content = message
    else:
        role = content = None
    if not isinstance(role, str) or not isinstance(content, str):
        raise InvalidArgument(f"messages[{index}]: must be {{'role': str, 'content': str}} "
                              "or a (role, content) pair")
    return role, content
