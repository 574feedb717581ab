"""One request's output text, in the frontend: detokenizing and stop strings.

The engine returns token ids only; here they become text (server/text.py holds back what
may still turn into a stop string or is half a UTF-8 character). When a stop string
matches, the request ends here, exactly at the token that completed it: the output is cut
there (its tokens, logprobs and usage count no further) and finished with
FinishReason.STOP; the caller then tells the engine to end the request, which frees its
KV blocks (tokens the engine made meanwhile are dropped).
"""

from __future__ import annotations

import dataclasses

from lorafleet.dataplane.engine.outputs import RequestOutput, Usage
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.server.text import OutputText


class Detokenizer:
    """Turns a request's engine outputs into outputs with text, and decides when a stop
    string ends it."""

    def __init__(self, decoder, prompt_token_ids, stop: tuple[str, ...]) -> None:
        self._text = OutputText(decoder, prompt_token_ids, stop)
        self._num_output_tokens = 0
        self.is_stopped = False  # a stop string ended the request here

    def process(self, output: RequestOutput) -> RequestOutput:
        """`output` with its text; finished with the stop string when one matched."""
        text = []
        for index, token_id in enumerate(output.new_token_ids):
            self._num_output_tokens += 1
            delta, stop = self._text.push([token_id])
            text.append(delta)
            if stop is not None:
                self.is_stopped = True
                return self._stopped(output, index + 1, "".join(text), stop)
        if output.is_finished:
            text.append(self._text.flush())
        return dataclasses.replace(output, text="".join(text))

    def _stopped(self, output: RequestOutput, num_tokens: int, text: str,
                 stop: str) -> RequestOutput:
        """The final output of a request a stop string ended at its `num_tokens`th new
        token: as the engine would have reported it had it stopped there."""
        usage = output.usage
        return dataclasses.replace(
            output, new_token_ids=output.new_token_ids[:num_tokens], text=text,
            logprobs=None if output.logprobs is None else output.logprobs[:num_tokens],
            finish_reason=FinishReason.STOP, stop_string=stop,
            usage=Usage(usage.num_prompt_tokens, self._num_output_tokens,
                        usage.num_cached_tokens),
            error=None, error_kind=None)
