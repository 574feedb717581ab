"""The prompt and length rules, in one place.

The frontend refuses by them before a request reaches the engine (dataplane/server/
frontend.py); the engine refuses by the part it needs (`check_servable`) whatever reaches
it anyway from a direct caller, as a finished output, never by raising across its loop.
Messages start with the field at fault.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lorafleet.dataplane.engine.params import SamplingParams

# No tokenizer we serve packs more than this many characters into one token on ordinary
# text, so a prompt longer than context x this cannot fit and is refused untokenized.
MAX_CHARS_PER_TOKEN = 32


class InvalidRequestError(ValueError):
    """A request that cannot be served; the message names the field and says why."""

    status_code_name = "INVALID_ARGUMENT"


class PromptTooLong(InvalidRequestError):
    """The prompt cannot fit the model's context."""


@dataclasses.dataclass(frozen=True)
class PromptLimits:
    """What one worker's model and KV cache accept; `max_kv_tokens` is what the whole
    KV cache holds (None: not limited beyond the context)."""

    max_model_len: int
    vocab_size: int
    max_kv_tokens: int | None = None

    @property
    def max_chars(self) -> int:
        """The longest prompt, in characters, worth tokenizing."""
        return self.max_model_len * MAX_CHARS_PER_TOKEN

    def check(self, ids: Sequence[int], params: SamplingParams) -> None:
        """The frontend's rules: servable, and room in the context for max_tokens."""
        self.check_servable(ids, params)
        if len(ids) + params.max_tokens > self.max_model_len:
            raise InvalidRequestError(
                f"sampling.max_tokens: prompt ({len(ids)} tokens) plus max_tokens "
                f"({params.max_tokens}) exceeds the context of {self.max_model_len}")

    def check_servable(self, ids: Sequence[int], params: SamplingParams) -> None:
        """What the engine cannot run: an empty prompt, ids outside the vocabulary, a
        prompt that fills the context, or one whose longest completion (capped at the
        context) the whole KV cache could not hold."""
        if not ids:
            raise InvalidRequestError("prompt: the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"token_ids: prompt token ids {bad[:5]} are outside [0, {self.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise PromptTooLong(
                f"prompt: {len(ids)} tokens; the model's context is {self.max_model_len}")
        longest = min(len(ids) + params.max_tokens, self.max_model_len)
        if self.max_kv_tokens is not None and longest > self.max_kv_tokens:
            raise InvalidRequestError(
                f"sampling.max_tokens: prompt plus max_tokens ({longest} tokens) exceeds "
                f"the KV cache ({self.max_kv_tokens} tokens)")
