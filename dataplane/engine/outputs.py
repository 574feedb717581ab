"""What one engine step reports for each request it touched."""

from __future__ import annotations

import dataclasses
import enum

from lorafleet.dataplane.engine.request import FinishReason, RequestTimings


@dataclasses.dataclass(frozen=True)
class TopLogprob:
    """One alternative token at a step and its natural-log probability."""

    token_id: int
    logprob: float


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's log-probability (before temperature) and the most likely tokens."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclasses.dataclass(frozen=True)
class SampledToken:
    """What the runner returns per sampling request: the token and, if asked, its logprobs."""

    token_id: int
    logprob: TokenLogprob | None = None


@dataclasses.dataclass(frozen=True)
class Usage:
    """Token counts of a request so far."""

    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class ErrorKind(enum.Enum):
    """Why a request ended with FinishReason.ERROR."""

    STEP_FAILED = "step_failed"  # the model step it was part of raised
    INVALID_REQUEST = "invalid_request"  # refused when added (engine/prompt_rules.py)
    ADAPTER_LOAD_FAILED = "adapter_load_failed"  # its adapter could not be loaded


@dataclasses.dataclass(frozen=True)
class RequestOutput:
    """A request's news from one step. `finish_reason` is set on the last output of a
    request only.

    The engine reports token ids; `text` and `stop_string` are the frontend's
    (dataplane/server/detokenize.py), empty as the engine leaves them. `text` is the text
    the new tokens complete; it never splits a UTF-8 character and never holds a prefix
    of a stop string that may still match. `stop_string` names the stop string that
    ended the request.
    """

    request_id: str
    new_token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: FinishReason | None
    usage: Usage
    timings: RequestTimings
    error: str | None = None
    error_kind: ErrorKind | None = None
    text: str = ""
    stop_string: str | None = None

    @property
    def is_finished(self) -> bool:
        """True on the last output of the request."""
        return self.finish_reason is not None


@dataclasses.dataclass(frozen=True)
class EngineStats:
    """Load indicators for heartbeats and admission control."""

    num_waiting: int
    num_running: int
    num_used_blocks: int
    num_total_blocks: int
    num_cached_blocks: int = 0  # free blocks that keep a cached prefix for reuse
