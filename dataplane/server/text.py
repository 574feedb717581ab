"""Incremental detokenization with stop strings, for one request's output stream."""

from __future__ import annotations

from typing import Protocol

# Prompt tokens decoded with the output so tokenizers that drop a leading space at the
# start of a decode (sentencepiece) still produce the right first characters.
_NUM_CONTEXT_TOKENS = 4
_REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    """The part of a tokenizer detokenization needs."""

    def decode(self, token_ids: list[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""
        ...


class OutputText:
    """Turns sampled tokens into safe text deltas and detects stop strings.

    Text is held back while it ends in an incomplete UTF-8 character (the decoder yields
    U+FFFD) or in a prefix of a stop string; `flush()` releases what is held at the end.
    """

    def __init__(self, decoder: Decoder, prompt_token_ids, stop: tuple[str, ...]) -> None:
        self._decoder = decoder
        self._tokens = list(prompt_token_ids[-_NUM_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)
        self._stop = stop
        self._text = ""
        self._num_emitted = 0

    def push(self, token_ids: list[int]) -> tuple[str, str | None]:
        """Adds tokens; returns (text safe to emit now, the stop string matched or None)."""
        self._tokens.extend(token_ids)
        self._text += self._decode_new()
        return self._release()

    def flush(self) -> str:
        """The text still held back, emitted because generation ended without a stop match."""
        prefix = self._decoder.decode(self._tokens[self._prefix_offset : self._read_offset])
        tail = self._decoder.decode(self._tokens[self._prefix_offset :])[len(prefix) :]
        self._read_offset = len(self._tokens)
        self._text += tail
        rest = self._text[self._num_emitted :]
        self._num_emitted = len(self._text)
        return rest

    def _decode_new(self) -> str:
        """Text the new tokens add, or "" while they end inside a UTF-8 character."""
        prefix = self._decoder.decode(self._tokens[self._prefix_offset : self._read_offset])
        full = self._decoder.decode(self._tokens[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT_CHAR):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        return full[len(prefix) :]

    def _release(self) -> tuple[str, str | None]:
        """Cuts at the earliest stop string, else holds back a possible stop prefix."""
        match = self._earliest_stop()
        if match is not None:
            index, stop = match
            self._text = self._text[:index]
            out = self._text[self._num_emitted :]
            self._num_emitted = len(self._text)
            return out, stop
        safe_end = max(len(self._text) - self._held_back(), self._num_emitted)
        out = self._text[self._num_emitted : safe_end]
        self._num_emitted = safe_end
        return out, None

    def _earliest_stop(self) -> tuple[int, str] | None:
        """(index, stop string) of the first stop string in the unemitted text, if any."""
        found = None
        for stop in self._stop:
            # A match may start in emitted text only if that text was never released whole,
            # which _held_back prevents; so searching from the emitted mark is enough.
            index = self._text.find(stop, self._num_emitted)
            if index >= 0 and (found is None or index < found[0]):
                found = (index, stop)
        return found

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
