"""The engine loop: the one owner of the engine and its host tier of adapters.

The same loop runs on a thread beside the server (server/thread_link.py) or in a process
of its own (main.py); only how commands arrive (`receive`) and how news leaves
(`send`) differ. Between steps it runs the commands that arrived; each step's outputs
leave as one `News`, with the snapshot when it changed and the metric events since the
last News. Loading an adapter from its source runs on a load thread, never in the loop;
the loop sends its answer. Only the loop's thread touches the engine.

A caller can never stop the loop: a failed command answers its caller, a failed step
fails the requests in flight and the loop goes on. Only a bug in the loop itself (or
STOP) ends `run`, which then raises (or returns).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from lorafleet.dataplane.engine_process.messages import (
    AdapterInfo,
    AdapterSource,
    Answer,
    CarriedError,
    Command,
    EngineStepError,
    MetricEvent,
    NewRequest,
    News,
    Op,
)
from lorafleet.dataplane.lora.load_threads import LoadThreads

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 0.05
# While an adapter load runs, the idle loop looks for its answer this often.
LOAD_WAIT_SECONDS = 0.005
# An unchanged snapshot is still resent this often, so its age says the loop is alive.
SNAPSHOT_REFRESH_SECONDS = 1.0

Receive = Callable[[float], list[Command]]  # waits up to `timeout` s (0: never waits)


class MetricEvents:
    """Adapter loads and evictions seen by the loop's owner, until the next News.
    `record_load`/`record_eviction` match HostAdapters' and DeviceAdapters' callbacks."""

    def __init__(self) -> None:
        self._events: list[MetricEvent] = []
        self._lock = threading.Lock()

    def record_load(self, tier: str, seconds: float, is_ok: bool) -> None:
        """Notes one load into `tier` (from any thread)."""
        with self._lock:
            self._events.append(MetricEvent(tier, seconds, is_ok))

    def record_eviction(self, tier: str) -> None:
        """Notes one eviction from `tier` (from any thread)."""
        with self._lock:
            self._events.append(MetricEvent(tier))

    def take(self) -> tuple[MetricEvent, ...]:
        """The events since the last call."""
        with self._lock:
            events, self._events = self._events, []
        return tuple(events)


class EngineLoop:
    """Runs `engine` and answers commands; the engine's own snapshot is what the server
    may read; `send(news)` is called on the loop's thread only. `events`: the adapter
    loads and evictions to forward, when the metrics live in another process."""

    def __init__(self, engine: Any, host: Any, events: MetricEvents | None, *,
                 send: Callable[[News], None]):
        self.engine = engine
        self.host = host
        self._events = events or MetricEvents()  # None: counted elsewhere, never here
        self._send_news = send
        # Evictions that wait for running requests: digest -> [(call id, keep_host)].
        self._evictions: dict[str, list[tuple[int | None, bool]]] = {}
        self._live: set[str] = set()  # requests added and not yet finished
        self._snapshot_key: Any = None
        self._snapshot_at = 0.0
        self._loads = LoadThreads(2, "adapter-load-rpc")
        self._num_loading = 0
        self._loaded: queue.SimpleQueue[Answer] = queue.SimpleQueue()  # from load threads
        self._is_stopping = False

    def first_snapshot(self) -> Any:
        """The snapshot before any command (remembered as sent)."""
        snapshot = self.engine.snapshot()
        self._remember(snapshot)
        return snapshot

    def run(self, receive: Receive) -> None:
        """Runs until STOP; raises whatever breaks the loop itself."""
        try:
            while not self._is_stopping:
                answers = [a for c in receive(self._wait_seconds())
                           if (a := self._run_command(c)) is not None]
                answers += self._finished_loads() + self._finished_evictions()
                if answers:  # before the step: a caller never waits a step for its answer
                    self._send(answers=tuple(answers), with_snapshot=True)
                if self._is_stopping:
                    break
                if self.engine.has_unfinished():
                    self._step()
                else:  # idle: background loads may have changed the tiers
                    self._send(with_snapshot=True)
        finally:
            self._loads.shutdown(wait=False, cancel_futures=True)

    def _wait_seconds(self) -> float:
        if self.engine.has_unfinished():
            return 0.0
        return LOAD_WAIT_SECONDS if self._num_loading else IDLE_WAIT_SECONDS

    # -- commands ---------------------------------------------------------------------

    def _run_command(self, command: Command) -> Answer | None:
        """Runs one command; its answer (None when nobody waits or it comes later)."""
        try:
            result = self._dispatch(command)
        except Exception as exc:  # reported to the caller that asked
            if command.call_id is None:
                log.exception("engine command %s failed", command.op.value)
                return None
            return Answer(command.call_id, error=CarriedError.of(exc))
        if command.call_id is None or result is _LATER:
            return None
        return Answer(command.call_id, result)

    def _dispatch(self, command: Command) -> Any:
        op, arg = command.op, command.arg
        if op is Op.ADD:
            return self._add(arg)
        if op is Op.ABORT:
            return self.engine.abort(*arg)
        if op is Op.PLACE_ADAPTER:
            return self.engine.try_place_adapter(arg)
        if op is Op.EVICT_ADAPTER:
            return self._evict(command.call_id, *arg)
        if op is Op.WITHDRAW_EVICTION:
            return self._withdraw_eviction(*arg)
        if op is Op.LOAD_ADAPTER:
            self._num_loading += 1
            self._loads.submit(self._load, command.call_id, arg)
            return _LATER
        if op is Op.STOP:
            self._is_stopping = True
            return None
        raise ValueError(f"unknown engine command {op!r}")

    def _add(self, request: NewRequest) -> None:
        self.engine.add_request(request.request_id, request.token_ids, params=request.params,
                                adapter=request.adapter, tenant=request.tenant,
                                cache_salt=request.cache_salt)
        self._live.add(request.request_id)

    def _evict(self, call_id: int | None, digest: str, keep_host: bool) -> Any:
        """Empties the adapter's device slot (and, unless `keep_host`, forgets it in the
        host tier) now, or once its last running request ends: then the engine reports
        it after a step (`_finished_evictions`) and the caller is answered."""
        if self.engine.evict_adapter(digest):
            return self._evicted(digest, keep_host)
        self._evictions.setdefault(digest, []).append((call_id, keep_host))
        return _LATER

    def _withdraw_eviction(self, digest: str, call_id: int) -> None:
        """The caller of EVICT `call_id` left before the eviction happened: it does not
        happen, unless another caller still waits for it."""
        waiting = [e for e in self._evictions.pop(digest, ()) if e[0] != call_id]
        if waiting:
            self._evictions[digest] = waiting
        else:
            self.engine.cancel_eviction(digest)

    def _evicted(self, digest: str, keep_host: bool) -> bool:
        if not keep_host:
            self.host.drop(digest)
        return True

    def _finished_evictions(self) -> list[Answer]:
        answers = []
        for digest in self.engine.take_evicted():
            for call_id, keep_host in self._evictions.pop(digest, ()):
                result = self._evicted(digest, keep_host)
                if call_id is not None:
                    answers.append(Answer(call_id, result))
        return answers

    def _load(self, call_id: int, source: AdapterSource) -> None:
        """On a load thread: reads the adapter into the host tier. The loop sends the
        answer, with a snapshot that shows the adapter in the host tier."""
        try:
            loaded = self.host.load(source)
            answer = Answer(call_id, AdapterInfo(loaded.digest, loaded.rank,
                                                 loaded.size_bytes))
        except Exception as exc:  # noqa: BLE001 - the caller gets it, with its type
            answer = Answer(call_id, error=CarriedError.of(exc))
        self._loaded.put(answer)

    def _finished_loads(self) -> list[Answer]:
        answers = []
        while self._num_loading:
            try:
                answers.append(self._loaded.get_nowait())
            except queue.Empty:
                break
            self._num_loading -= 1
        return answers

    # -- steps ------------------------------------------------------------------------

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the requests in flight")
            self._fail_live(EngineStepError(f"engine step failed: {exc}"))
            return
        for output in outputs:
            if output.is_finished:
                self._live.discard(output.request_id)
        self._send(outputs=tuple(outputs), answers=tuple(self._finished_evictions()),
                   with_snapshot=True)

    def _fail_live(self, error: Exception) -> None:
        carried = CarriedError.of(error)
        failures = tuple((request_id, carried) for request_id in sorted(self._live))
        for request_id in self._live:
            self.engine.abort(request_id)
        self._live.clear()
        self._send(failures=failures, with_snapshot=True)

    # -- news -------------------------------------------------------------------------

    def _send(self, *, with_snapshot: bool = False, **fields: Any) -> None:
        """Sends what there is to say; nothing when there is nothing."""
        snapshot = self._changed_snapshot() if with_snapshot else None
        news = News(snapshot=snapshot, events=self._events.take(), **fields)
        if news != _NOTHING:
            self._send_news(news)

    def _changed_snapshot(self) -> Any:
        """A new snapshot when the engine's state changed (or the last one is old)."""
        snapshot = self.engine.snapshot()
        if snapshot.content_key() == self._snapshot_key and \
                time.monotonic() - self._snapshot_at < SNAPSHOT_REFRESH_SECONDS:
            return None
        self._remember(snapshot)
        return snapshot

    def _remember(self, snapshot: Any) -> None:
        self._snapshot_key = snapshot.content_key()
        self._snapshot_at = time.monotonic()


_NOTHING = News()
_LATER = object()  # a command whose answer comes later (a load, a deferred eviction)
