"""Gauges read at scrape time from the engine loop's latest snapshot.

Two sets from one snapshot: lorafleet's own (queue, running, KV blocks, adapters per
tier), and the Kubernetes Gateway API Inference Extension's model-server protocol under
the names vLLM uses, so its endpoint picker's default vLLM configuration reads a worker
unchanged (docs/metrics.md has the mapping):

    vllm:num_requests_waiting, vllm:num_requests_running       queue and running batch
    vllm:kv_cache_usage_perc (and the older vllm:gpu_cache_usage_perc)   KV use, 0..1
    vllm:cache_config_info{block_size, num_gpu_blocks} = 1
    vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}
        = Unix time of the snapshot

Adapters are listed under every `model` a request may use to reach them: `tenant/name@N`,
and `tenant/name` as well when N is the version a bare name gets (see `model_names`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lorafleet.dataplane.engine.outputs import EngineStats
from lorafleet.dataplane.engine.snapshot import EngineSnapshot
from lorafleet.dataplane.server.versions import VersionState, VersionTable

TIERS = ("device", "host")
_IDLE = EngineStats(num_waiting=0, num_running=0, num_used_blocks=0, num_total_blocks=0)


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What the model-server protocol reports about the worker's shape."""

    model_name: str
    max_loras: int
    block_size: int
    num_blocks: int


def model_names(versions: VersionTable) -> Mapping[str, tuple[str, ...]]:
    """digest -> every `model` value that reaches it, from a VersionTable (ready versions)."""
    names: dict[str, list[str]] = {}
    for entry in versions.entries():
        if entry.digest and entry.state is VersionState.READY:
            found = names.setdefault(entry.digest, [])
            found.append(entry.label)
            if versions.is_default(entry):
                found.append(entry.name)
    return types.MappingProxyType({d: tuple(n) for d, n in names.items()})


class SnapshotGauges(Collector):
    """A Prometheus collector over `snapshot()`; limits and names are set once wired."""

    def __init__(self) -> None:
        self._snapshot: Callable[[], EngineSnapshot | None] = lambda: None
        self._limits: ServerLimits | None = None
        self._names: Mapping[str, tuple[str, ...]] = types.MappingProxyType({})

    def observe(self, snapshot: Callable[[], EngineSnapshot | None]) -> None:
        """Reads `snapshot()` (the engine loop's latest) at every scrape."""
        self._snapshot = snapshot

    def set_limits(self, limits: ServerLimits) -> None:
        """The worker's shape, reported by the model-server protocol's info series."""
        self._limits = limits

    def set_names(self, names: Mapping[str, tuple[str, ...]]) -> None:
        """digest -> model names (an immutable mapping; see `model_names`)."""
        self._names = names

    def collect(self):
        """Called by the registry on every scrape (from the HTTP server's thread)."""
        snapshot = self._snapshot()
        stats = snapshot.stats if snapshot is not None else _IDLE
        yield _gauge("lorafleet_queue_depth", "Requests waiting to be scheduled",
                     stats.num_waiting)
        yield _gauge("lorafleet_running_sequences", "Sequences in the running batch",
                     stats.num_running)
        yield _gauge("lorafleet_kv_blocks_used", "KV cache blocks in use", stats.num_used_blocks)
        yield _gauge("lorafleet_kv_blocks_total", "KV cache blocks in all",
                     stats.num_total_blocks)
        yield _gauge("lorafleet_kv_blocks_cached", "KV cache blocks no request holds that "
                     "keep a cached prefix for reuse", stats.num_cached_blocks)
        resident = GaugeMetricFamily("lorafleet_resident_adapters",
                                     "Adapter versions resident per tier", labels=["tier"])
        counts = snapshot.adapter_counts if snapshot is not None else {}
        for tier in TIERS:
            resident.add_metric([tier], counts.get(tier, 0))
        yield resident
        yield from self._model_server(snapshot, stats)

    def _model_server(self, snapshot: EngineSnapshot | None, stats: EngineStats):
        """The model-server protocol's series, under vLLM's names."""
        model = self._limits.model_name if self._limits else ""
        usage = stats.num_used_blocks / stats.num_total_blocks if stats.num_total_blocks else 0.0
        for name, help_text, value in (
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled", stats.num_waiting),
            ("vllm:num_requests_running", "Requests in the running batch", stats.num_running),
            ("vllm:kv_cache_usage_perc", "KV cache use, 0 to 1", usage),
            ("vllm:gpu_cache_usage_perc", "KV cache use, 0 to 1 (older vLLM name)", usage),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["model_name"])
            family.add_metric([model], value)
            yield family
        if self._limits is None or snapshot is None:
            return
        yield self._cache_config(self._limits)
        yield self._lora_info(snapshot, self._limits)

    @staticmethod
    def _cache_config(limits: ServerLimits) -> GaugeMetricFamily:
        family = GaugeMetricFamily("vllm:cache_config_info", "KV cache shape (always 1)",
                                   labels=["block_size", "num_gpu_blocks"])
        family.add_metric([str(limits.block_size), str(limits.num_blocks)], 1.0)
        return family

    def _lora_info(self, snapshot: EngineSnapshot, limits: ServerLimits) -> GaugeMetricFamily:
        device = [d for d, tier in snapshot.tiers.items() if tier == "device"]
        waiting = [d for d in snapshot.waiting_adapters if snapshot.tiers.get(d) != "device"]
        family = GaugeMetricFamily(
            "vllm:lora_requests_info", "Adapters in device slots and adapters waiting for "
            "one; value: Unix time of the engine's snapshot",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        family.add_metric([str(limits.max_loras), self._joined(device),
                           self._joined(waiting)], snapshot.taken_at_unix)
        return family

    def _joined(self, digests: Iterable[str]) -> str:
        names = self._names
        return ",".join(sorted(n for d in digests for n in names.get(d, ())))


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)
