"""The worker's frontend: prompts become token ids here, never in the engine loop.

Cheap checks come first (characters before tokens), tokenizing and chat rendering run on
a small thread pool of their own, and the engine is handed token ids it can accept as
they are. A prompt that cannot fit the model's context is refused before it costs the
tokenizer anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses

from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.server.requests import BadRequest, PromptInput

# No tokenizer we serve packs more than this many characters into one token on ordinary
# text, so a prompt longer than context x this cannot fit and is refused untokenized.
MAX_CHARS_PER_TOKEN = 32


class PromptTooLong(BadRequest):
    """The prompt cannot fit the model's context."""


@dataclasses.dataclass(frozen=True)
class PromptLimits:
    """What one worker's model accepts."""

    max_model_len: int
    vocab_size: int

    @property
    def max_chars(self) -> int:
        """The longest prompt, in characters, worth tokenizing."""
        return self.max_model_len * MAX_CHARS_PER_TOKEN


class Frontend:
    """Turns a request's prompt into checked token ids, outside the engine loop."""

    def __init__(self, tokenizer, limits: PromptLimits, *, num_threads: int = 2):
        self.tokenizer = tokenizer
        self.limits = limits
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, "lorafleet-tokenize")

    async def token_ids(self, prompt: PromptInput, params: SamplingParams) -> tuple[int, ...]:
        """The prompt's token ids; raises BadRequest (naming the field) when they cannot
        be served: too long, outside the vocabulary, or no room for max_tokens."""
        self._check_chars(prompt)
        if prompt.token_ids is not None:
            ids = prompt.token_ids
        else:
            loop = asyncio.get_running_loop()
            ids = tuple(await loop.run_in_executor(self._pool, prompt.token_ids_for,
                                                   self.tokenizer))
        self._check_tokens(ids, params)
        return ids

    def _check_chars(self, prompt: PromptInput) -> None:
        if prompt.text is not None:
            num_chars, field = len(prompt.text), "text"
        elif prompt.messages is not None:
            num_chars, field = sum(len(m["content"]) for m in prompt.messages), "chat"
        else:
            num_chars, field = 0, "token_ids"
        if num_chars > self.limits.max_chars:
            raise PromptTooLong(
                f"{field}: the prompt has {num_chars} characters; this model's context of "
                f"{self.limits.max_model_len} tokens takes at most {self.limits.max_chars} "
                "characters")

    def _check_tokens(self, ids: tuple[int, ...], params: SamplingParams) -> None:
        max_len = self.limits.max_model_len
        if not ids:
            raise BadRequest("prompt: the prompt is empty after tokenizing")
        bad = [t for t in ids if not 0 <= t < self.limits.vocab_size]
        if bad:
            raise BadRequest(f"token_ids: prompt token ids {bad[:5]} are outside "
                             f"[0, {self.limits.vocab_size})")
        if len(ids) >= max_len:
            raise PromptTooLong(
                f"prompt: {len(ids)} tokens; the model's context is {max_len}")
        if len(ids) + params.max_tokens > max_len:
            raise BadRequest(
                f"sampling.max_tokens: prompt ({len(ids)} tokens) plus max_tokens "
                f"({params.max_tokens}) exceeds the context of {max_len}")

    def close(self) -> None:
        """Stops the tokenizer threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
