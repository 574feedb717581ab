"""Per-request output state between steps: new tokens, logprobs, token stops."""

from __future__ import annotations

import dataclasses

from lorafleet.dataplane.engine.outputs import (
    ErrorKind,
    RequestOutput,
    SampledToken,
    TokenLogprob,
    Usage,
)
from lorafleet.dataplane.engine.request import FinishReason, Request


class RequestStream:
    """Collects what a request produced since its last output and decides when it stops
    by token (EOS, a stop token id, length); stop strings are the frontend's."""

    def __init__(self, request: Request, eos_token_ids: frozenset[int]) -> None:
        self.request = request
        self._eos_ids = eos_token_ids
        self._new_ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []

    def mark_scheduled(self, now: float) -> None:
        """Records the first time the request was scheduled."""
        if self.request.timings.first_scheduled is None:
            self.request.timings.first_scheduled = now

    def accept(self, token: SampledToken, now: float, max_model_len: int) -> FinishReason | None:
        """Takes a sampled token (already appended to the request); returns why the request
        stops now, or None to continue."""
        timings = self.request.timings
        if timings.first_token is None:
            timings.first_token = now
        self._new_ids.append(token.token_id)
        if token.logprob is not None:
            self._logprobs.append(token.logprob)
        return self._token_stop(token.token_id, max_model_len)

    def _token_stop(self, token_id: int, max_model_len: int) -> FinishReason | None:
        """Stop by token id or EOS, or by length."""
        params = self.request.params
        if token_id in params.stop_token_ids or (
            not params.ignore_eos and token_id in self._eos_ids
        ):
            return FinishReason.STOP
        if len(self.request.output_token_ids) >= params.max_tokens:
            return FinishReason.LENGTH
        if self.request.num_tokens >= max_model_len:
            return FinishReason.LENGTH
        return None

    def output(self, reason: FinishReason | None = None, error: str | None = None,
               error_kind: ErrorKind | None = None) -> RequestOutput:
        """Everything new since the last output; the final one when `reason` is set."""
        request = self.request
        out = RequestOutput(
            request_id=request.request_id,
            new_token_ids=tuple(self._new_ids),
            logprobs=tuple(self._logprobs) if request.params.logprobs is not None else None,
            finish_reason=reason,
            usage=Usage(len(request.prompt_token_ids), len(request.output_token_ids),
                        request.num_cached_tokens or 0),
            timings=dataclasses.replace(request.timings),
            error=error,
            error_kind=error_kind,
        )
        self._new_ids, self._logprobs = [], []
        return out
