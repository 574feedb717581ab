"""What the server and the engine loop say to each other, whether the loop runs on a
thread beside the server or in a process of its own.

Everything here is plain data (picklable) so it can cross a process: the server sends
named `Command`s, the loop answers with `News` — at most one per step carrying every
output of that step, the answers to commands, the snapshot when it changed and the
metric events since the last News. Errors cross as `CarriedError`, which rebuilds the
same exception type (so it declares the same gRPC code) with the same message.
"""

from __future__ import annotations

import dataclasses
import enum
import pickle
from typing import Any

from lorafleet.dataplane.engine.outputs import RequestOutput
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.prompt_rules import PromptLimits


class EngineStepError(RuntimeError):
    """The engine failed a step; the requests in flight were failed with it."""

    status_code_name = "INTERNAL"


class EngineDead(RuntimeError):
    """The engine loop has stopped; this worker can no longer generate."""

    status_code_name = "INTERNAL"


class Op(enum.Enum):
    """The named operations the engine loop runs between steps."""

    ADD = "add"  # NewRequest -> (no answer; a refusal is the request's final output)
    ABORT = "abort"  # (request id, FinishReason) -> (no answer)
    PLACE_ADAPTER = "place_adapter"  # digest -> bool
    EVICT_ADAPTER = "evict_adapter"  # (digest, keep_host) -> True, once evicted
    WITHDRAW_EVICTION = "withdraw_eviction"  # (digest, call id of the EVICT) -> (no answer)
    LOAD_ADAPTER = "load_adapter"  # AdapterSource -> AdapterInfo (on a load thread)
    STOP = "stop"  # -> (no answer); the loop ends


@dataclasses.dataclass(frozen=True)
class Command:
    """One operation for the engine loop; `call_id` None: nobody waits for an answer."""

    op: Op
    arg: Any = None
    call_id: int | None = None


@dataclasses.dataclass(frozen=True)
class NewRequest:
    """A request for the engine, as token ids, with the adapter digest it runs on."""

    request_id: str
    token_ids: tuple[int, ...]
    params: SamplingParams
    adapter: str | None = None
    tenant: str = ""
    cache_salt: str = ""


@dataclasses.dataclass(frozen=True)
class AdapterSource:
    """Where to (re)load one adapter version from, and the digest it must have (the
    server sends it with LOAD_ADAPTER; the host tier keeps it to reload from)."""

    label: str  # "tenant/name@N", for messages and metrics
    source_uri: str
    digest: str  # "" when the caller does not know it yet (a first load learns it)


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    """What a load into the host tier learned about an adapter (no tensors)."""

    digest: str
    rank: int
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class Answer:
    """The result of the command `call_id`, or the error it raised."""

    call_id: int
    result: Any = None
    error: CarriedError | None = None


@dataclasses.dataclass(frozen=True)
class MetricEvent:
    """An adapter load (`seconds`, `is_ok`) or eviction (`seconds` None) in a tier."""

    tier: str
    seconds: float | None = None
    is_ok: bool = True


@dataclasses.dataclass(frozen=True)
class News:
    """What the loop reports at once. Applied in field order: the snapshot first, so a
    caller woken by an answer or an output never reads an older state."""

    snapshot: Any = None  # EngineSnapshot, when it changed
    events: tuple[MetricEvent, ...] = ()
    answers: tuple[Answer, ...] = ()
    outputs: tuple[RequestOutput, ...] = ()
    failures: tuple[tuple[str, CarriedError], ...] = ()  # (request id, why it ended)


@dataclasses.dataclass(frozen=True)
class EngineFacts:
    """What the engine's owner reports once the engine is built: the sizes the server
    needs, the prompt rules' limits the engine refuses by (the frontend refuses by the
    same ones first) and the first snapshot."""

    num_kv_blocks: int
    max_model_len: int
    lora_slot_bytes: int
    prompt_limits: PromptLimits
    snapshot: Any


@dataclasses.dataclass(frozen=True)
class CarriedError:
    """An exception that can cross a process: its type, message and attributes."""

    error_type: type
    message: str
    attributes: dict

    @classmethod
    def of(cls, error: BaseException) -> CarriedError:
        """Captures `error`; attributes that do not pickle are left behind."""
        attributes = {}
        for key, value in getattr(error, "__dict__", {}).items():
            try:
                pickle.dumps(value)
            except Exception:  # noqa: BLE001 - anything unpicklable stays behind
                continue
            attributes[key] = value
        error_type = type(error) if _is_importable(type(error)) else RuntimeError
        return cls(error_type, str(error), attributes)

    def rebuild(self) -> BaseException:
        """The same type with the same message, without calling its __init__ (whose
        arguments may differ from the message, e.g. AdapterInvalid's reasons)."""
        error = self.error_type.__new__(self.error_type)
        BaseException.__init__(error, self.message)
        error.__dict__.update(self.attributes)
        return error


def _is_importable(error_type: type) -> bool:
    try:
        pickle.dumps(error_type)
    except Exception:  # noqa: BLE001 - a local class: sent as RuntimeError
        return False
    return True
