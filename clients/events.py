"""What a Generate stream yields, as plain Python objects.

A stream is zero or more `TokenEvent`s, then exactly one `Summary`. `Completion` is the
whole stream gathered: the text, the token ids and the summary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lorafleet.clients.errors import Internal
from lorafleet.inference.v1 import inference_service_pb2 as pb


class FinishReason(str, enum.Enum):
    """Why generation ended."""

    STOP = "stop"            # a stop string, a stop token or end-of-sequence
    LENGTH = "length"        # max_tokens or the model's context was reached
    CANCELLED = "cancelled"  # the caller or a server shutdown cancelled it
    ERROR = "error"          # the request failed; see Summary.error_message
    UNSPECIFIED = "unspecified"  # a server that broke the protocol; never sent otherwise


_FINISH = {
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
    pb.FINISH_REASON_ERROR: FinishReason.ERROR,
}


@dataclass(frozen=True)
class TopLogprob:
    """One likely alternative at a step."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's natural-log probability and the likeliest alternatives."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """Tokens generated since the previous event, and the text they complete."""

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Summary:
    """The last event of every stream: why it ended, token counts, who served it."""

    finish_reason: FinishReason
    num_prompt_tokens: int
    num_completion_tokens: int
    adapter_version: str      # "tenant/name@N" that served every token; "" for the base model
    adapter_digest: str       # sha256 of that version's weights; "" for the base model
    worker_id: str
    request_id: str
    time_to_first_token: float  # seconds from arrival at the worker to the first token
    queued: float = 0.0         # seconds from arrival to the first scheduled step
    total: float = 0.0          # seconds from arrival to the last token
    matched_stop: str = ""
    error_message: str = ""


Event = TokenEvent | Summary


@dataclass(frozen=True)
class Completion:
    """A whole completion: the text, its token ids (and log-probabilities), the summary."""

    text: str
    token_ids: tuple[int, ...]
    summary: Summary
    logprobs: tuple[TokenLogprob, ...] = ()


def event_of(message: pb.GenerateResponse) -> Event:
    """The typed event for one stream message."""
    if message.HasField("summary"):
        return summary_of(message.summary)
    delta = message.delta
    logprobs = tuple(
        TokenLogprob(lp.token_id, lp.logprob, tuple(TopLogprob(t.token_id, t.logprob)
                                                    for t in lp.top))
        for lp in delta.logprobs)
    return TokenEvent(tuple(delta.token_ids), delta.text, logprobs)


def summary_of(summary: pb.GenerateSummary) -> Summary:
    """A Summary from its message; durations in seconds."""
    timings = summary.timings
    return Summary(
        finish_reason=_FINISH.get(summary.finish_reason, FinishReason.UNSPECIFIED),
        num_prompt_tokens=summary.usage.prompt_tokens,
        num_completion_tokens=summary.usage.completion_tokens,
        adapter_version=summary.adapter_version,
        adapter_digest=summary.adapter_digest,
        worker_id=summary.worker_id,
        request_id=summary.request_id,
        time_to_first_token=timings.time_to_first_token.ToNanoseconds() / 1e9,
        queued=timings.queued.ToNanoseconds() / 1e9,
        total=timings.total.ToNanoseconds() / 1e9,
        matched_stop=summary.matched_stop,
        error_message=summary.error_message,
    )


class CompletionBuilder:
    """Gathers a stream's events into a Completion."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._token_ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []
        self._summary: Summary | None = None

    def add(self, event: Event) -> None:
        """Takes the next event of the stream."""
        if isinstance(event, Summary):
            self._summary = event
            return
        self._texts.append(event.text)
        self._token_ids.extend(event.token_ids)
        self._logprobs.extend(event.logprobs)

    def build(self) -> Completion:
        """The Completion; Internal when the stream ended without its summary."""
        if self._summary is None:
            raise Internal("the Generate stream ended without a summary")
        return Completion("".join(self._texts), tuple(self._token_ids), self._summary,
                          tuple(self._logprobs))
