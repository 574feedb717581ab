"""The worker's frontend: it owns text. Prompts become token ids here and output tokens
become text here (detokenize.py), never in the engine loop.

Cheap checks come first (characters before tokens), tokenizing and chat rendering run on
a small thread pool of their own, and the engine is handed token ids that pass the
prompt rules (engine/prompt_rules.py, their one home). A prompt that cannot fit the
model's context is refused before it costs the tokenizer anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.prompt_rules import PromptLimits, PromptTooLong
from lorafleet.dataplane.server.detokenize import Detokenizer
from lorafleet.dataplane.server.requests import PromptInput


class Frontend:
    """Turns a request's prompt into checked token ids, and its output tokens into text,
    outside the engine loop."""

    def __init__(self, tokenizer, limits: PromptLimits, *, num_threads: int = 2):
        self.tokenizer = tokenizer
        self.limits = limits
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, "lorafleet-tokenize")

    async def token_ids(self, prompt: PromptInput, params: SamplingParams) -> tuple[int, ...]:
        """The prompt's token ids; raises InvalidRequestError (naming the field) when
        they cannot be served: too long, outside the vocabulary, or no room for
        max_tokens in the context or the KV cache."""
        self._check_chars(prompt)
        if prompt.token_ids is not None:
            ids = prompt.token_ids
        else:
            loop = asyncio.get_running_loop()
            ids = tuple(await loop.run_in_executor(self._pool, prompt.token_ids_for,
                                                   self.tokenizer))
        self.limits.check(ids, params)
        return ids

    def detokenizer(self, prompt_token_ids: tuple[int, ...],
                    params: SamplingParams) -> Detokenizer:
        """What turns one request's outputs into text and applies its stop strings."""
        return Detokenizer(self.tokenizer, prompt_token_ids, params.stop)

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

    def close(self) -> None:
        """Stops the tokenizer threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
