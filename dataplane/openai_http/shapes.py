"""The JSON of OpenAI responses and stream chunks, built from Generate messages.

One `Shape` per endpoint: completions answer with `text`, chat with a `message` (or a
`delta` when streaming). The HTTP layer has no tokenizer (the gateway has none), so a
log-probability names its token as "token_id:N", like vLLM's return_tokens_as_token_ids.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from lorafleet.inference.v1 import inference_service_pb2 as pb

FINISH_REASONS = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


def token_name(token_id: int) -> str:
    """How a token is named in log-probabilities."""
    return f"token_id:{token_id}"


def usage_of(summary: pb.GenerateSummary) -> dict:
    """OpenAI's usage object, with the prompt tokens the prefix cache supplied."""
    prompt, completion = summary.usage.prompt_tokens, summary.usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": summary.usage.cached_tokens}}


def served_by(summary: pb.GenerateSummary) -> dict:
    """lorafleet's extension object: what actually served the request."""
    return {"adapter_version": summary.adapter_version or None,
            "adapter_digest": summary.adapter_digest or None,
            "worker_id": summary.worker_id, "request_id": summary.request_id}


class Shape:
    """Response and chunk bodies of one request; subclasses fill in the choice."""

    object_name = ""
    chunk_object_name = ""
    id_prefix = ""

    def __init__(self, model: str, request_id: str, *, has_logprobs: bool,
                 include_usage: bool = False):
        self.request_id, self.id = request_id, f"{self.id_prefix}-{request_id}"
        self.model, self.created = model, int(time.time())
        self.has_logprobs, self.include_usage = has_logprobs, include_usage

    def body(self, text: str, logprobs: Sequence[pb.TokenLogprob],
             summary: pb.GenerateSummary) -> dict:
        """The whole (non-streaming) response."""
        choice = {"index": 0, **self._full_choice(text),
                  "logprobs": self._logprobs(logprobs),
                  "finish_reason": FINISH_REASONS[summary.finish_reason]}
        return {**self._head(self.object_name), "choices": [choice],
                "usage": usage_of(summary), "lorafleet": served_by(summary)}

    def opening_chunks(self) -> list[dict]:
        """Chunks sent before the first tokens."""
        return []

    def delta_chunk(self, delta: pb.TokenDelta) -> dict:
        """One chunk of new text."""
        return self._chunk(self._delta_choice(delta.text), self._logprobs(delta.logprobs), None)

    def finish_chunk(self, summary: pb.GenerateSummary) -> dict:
        """The chunk that carries finish_reason (and lorafleet's extension object)."""
        chunk = self._chunk(self._delta_choice(""), None, FINISH_REASONS[summary.finish_reason])
        chunk["lorafleet"] = served_by(summary)
        return chunk

    def usage_chunk(self, summary: pb.GenerateSummary) -> dict:
        """The last chunk when stream_options.include_usage: no choices, the usage."""
        return {**self._head(self.chunk_object_name), "choices": [], "usage": usage_of(summary)}

    def _chunk(self, choice: dict, logprobs: dict | None, finish_reason: str | None) -> dict:
        chunk = {**self._head(self.chunk_object_name), "choices": [
            {"index": 0, **choice, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model}

    def _logprobs(self, entries: Sequence[pb.TokenLogprob]) -> dict | None:
        return self._format_logprobs(entries) if self.has_logprobs else None

    def _full_choice(self, text: str) -> dict:
        raise NotImplementedError

    def _delta_choice(self, text: str) -> dict:
        raise NotImplementedError

    def _format_logprobs(self, entries: Sequence[pb.TokenLogprob]) -> dict:
        raise NotImplementedError


class CompletionShape(Shape):
    """POST /v1/completions."""

    object_name = chunk_object_name = "text_completion"
    id_prefix = "cmpl"

    def _full_choice(self, text: str) -> dict:
        return {"text": text}

    def _delta_choice(self, text: str) -> dict:
        return {"text": text}

    def _format_logprobs(self, entries: Sequence[pb.TokenLogprob]) -> dict:
        return {"tokens": [token_name(e.token_id) for e in entries],
                "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{token_name(t.token_id): t.logprob for t in e.top}
                                 for e in entries]}


class ChatShape(Shape):
    """POST /v1/chat/completions."""

    object_name, chunk_object_name = "chat.completion", "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def opening_chunks(self) -> list[dict]:
        return [self._chunk({"delta": {"role": "assistant", "content": ""}}, None, None)]

    def _full_choice(self, text: str) -> dict:
        return {"message": {"role": "assistant", "content": text}}

    def _delta_choice(self, text: str) -> dict:
        return {"delta": {"content": text} if text else {}}

    def _format_logprobs(self, entries: Sequence[pb.TokenLogprob]) -> dict:
        return {"content": [
            {"token": token_name(e.token_id), "logprob": e.logprob, "bytes": None,
             "top_logprobs": [{"token": token_name(t.token_id), "logprob": t.logprob,
                               "bytes": None} for t in e.top]}
            for e in entries]}
