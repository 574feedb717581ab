"""The state of one request as the scheduler and the engine see it."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable

from lorafleet.dataplane.engine.params import SamplingParams


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    """Why generation ended (mirrors FinishReason in inference_service.proto)."""

    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclasses.dataclass
class RequestTimings:
    """Monotonic timestamps (seconds) of a request's milestones; None until reached."""

    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None


@dataclasses.dataclass(eq=False)
class Request:
    """A prompt being completed: its tokens, its KV blocks and how far the model has read it.

    `num_computed_tokens` catches up to `num_tokens` (prompt + output so far); the gap is
    prefill (possibly chunked) or, when it is one token, decode. Preemption resets it to 0.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    arrival_time: float
    adapter: Hashable | None = None
    # Who the request is served for, for fair share (see fairness.py): the adapter's
    # tenant, or the caller's principal once auth names one; "" for the base model.
    tenant: str = ""
    # Requests share cached prompt KV only with requests of the same salt (prefix_cache.py).
    cache_salt: str = ""
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    num_computed_tokens: int = 0
    # Tokens the step being planned will compute; set by the scheduler.
    num_scheduled_tokens: int = 0
    block_table: list[int] = dataclasses.field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    # Out of KV blocks, taken off its seat; it goes back before any other waiting request.
    is_preempted: bool = False
    # Prompt tokens already computed when it was first admitted: the prefix cache's saving.
    num_cached_tokens: int | None = None
    # Content keys of its full blocks, in order, once the prefix cache computed them.
    block_keys: list[bytes] = dataclasses.field(default_factory=list)
    timings: RequestTimings = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.timings = RequestTimings(arrival=self.arrival_time)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens whose KV is not computed yet."""
        return self.num_tokens - self.num_computed_tokens

    def token_ids(self, start: int, stop: int) -> tuple[int, ...]:
        """All tokens (prompt then output) in [start, stop)."""
        num_prompt = len(self.prompt_token_ids)
        if stop <= num_prompt:
            return self.prompt_token_ids[start:stop]
        head = self.prompt_token_ids[start:] if start < num_prompt else ()
        tail = self.output_token_ids[max(start - num_prompt, 0) : stop - num_prompt]
        return tuple(head) + tuple(tail)
