"""Sampling parameters of one request, mirroring `SamplingParams` in inference_service.proto."""

from __future__ import annotations

import dataclasses

# Proto default for max_tokens == 0.
DEFAULT_MAX_TOKENS = 16
# Logprob alternatives are bounded so a request cannot make the sampler sort the vocabulary.
MAX_LOGPROBS = 20
# Below this temperature, logits / temperature overflows float32: such requests are greedy.
GREEDY_BELOW_TEMPERATURE = 1e-5


class InvalidParamsError(ValueError):
    """A sampling parameter is out of range; the message names the field."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature 0 (or below GREEDY_BELOW_TEMPERATURE) is greedy; top_k None means no
    limit; seed None means a random seed; logprobs None returns none, 0 the sampled
    token's, N also the N most likely tokens.
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # Accept lists from callers but store tuples so the params stay hashable and frozen.
        if isinstance(self.stop, str):
            raise InvalidParamsError("stop must be a list of strings, not one string")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _validate(self)

    @property
    def is_greedy(self) -> bool:
        """True when tokens are picked by argmax."""
        return self.temperature < GREEDY_BELOW_TEMPERATURE


def _validate(p: SamplingParams) -> None:
    """Raises InvalidParamsError naming the first field out of range."""
    if not isinstance(p.max_tokens, int) or p.max_tokens < 1:
        raise InvalidParamsError(f"max_tokens must be a positive integer, got {p.max_tokens!r}")
    if not p.temperature >= 0.0:
        raise InvalidParamsError(f"temperature must be >= 0, got {p.temperature!r}")
    if not 0.0 < p.top_p <= 1.0:
        raise InvalidParamsError(f"top_p must be in (0, 1], got {p.top_p!r}")
    if p.top_k is not None and (not isinstance(p.top_k, int) or p.top_k < 1):
        raise InvalidParamsError(f"top_k must be a positive integer or None, got {p.top_k!r}")
    if p.seed is not None and (not isinstance(p.seed, int) or not 0 <= p.seed < 2**64):
        raise InvalidParamsError(f"seed must be an integer in [0, 2**64), got {p.seed!r}")
    if any(not isinstance(s, str) or not s for s in p.stop):
        raise InvalidParamsError(f"stop strings must be non-empty strings, got {p.stop!r}")
    if any(not isinstance(t, int) or t < 0 for t in p.stop_token_ids):
        raise InvalidParamsError(
            f"stop_token_ids must be non-negative integers, got {p.stop_token_ids!r}"
        )
    if p.logprobs is not None and not 0 <= p.logprobs <= MAX_LOGPROBS:
        raise InvalidParamsError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {p.logprobs!r}")
