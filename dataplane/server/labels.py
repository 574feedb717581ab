"""Bounded adapter labels for metrics: the busiest adapters by name, the rest as "other".

Per-adapter metrics are what operators ask for, but a label per adapter on a worker that
has seen ten thousand adapters would swamp Prometheus. Each adapter keeps a request count;
the `max_labels` busiest get their own label and everything else reports as "other". An
adapter is promoted when its count passes the quietest labelled one (which is then
reported as "other" from there on). Promotions stop once `2 * max_labels` distinct labels
have been used, so the number of series stays bounded however traffic shifts.
"""

from __future__ import annotations

import threading

OTHER = "other"
BASE = "base"


class AdapterLabeler:
    """Maps adapter names to metric label values with bounded cardinality. Thread-safe."""

    def __init__(self, max_labels: int = 20):
        if max_labels < 1:
            raise ValueError("max_labels must be at least 1")
        self.max_labels = max_labels
        self._counts: dict[str, int] = {}
        self._labelled: set[str] = set()
        self._num_labels_used = 0
        self._lock = threading.Lock()

    def observe(self, adapter: str | None) -> str:
        """Counts one request for `adapter` (None = base model) and returns its label."""
        if not adapter:
            return BASE
        with self._lock:
            count = self._counts.get(adapter, 0) + 1
            if adapter in self._counts or len(self._counts) < 8 * self.max_labels:
                self._counts[adapter] = count
            if adapter not in self._labelled:
                self._try_promote(adapter, count)
            return adapter if adapter in self._labelled else OTHER

    def label(self, adapter: str | None) -> str:
        """The current label of `adapter` without counting a request."""
        if not adapter:
            return BASE
        with self._lock:
            return adapter if adapter in self._labelled else OTHER

    def _try_promote(self, adapter: str, count: int) -> None:
        if self._num_labels_used >= 2 * self.max_labels:
            return
        if len(self._labelled) < self.max_labels:
            self._labelled.add(adapter)
            self._num_labels_used += 1
            return
        quietest = min(self._labelled, key=lambda name: self._counts.get(name, 0))
        if count > self._counts.get(quietest, 0):
            self._labelled.discard(quietest)
            self._labelled.add(adapter)
            self._num_labels_used += 1


class VersionLabeler:
    """(adapter, version) label pairs with bounded cardinality. Thread-safe.

    The adapter label is AdapterLabeler's ("base", the name, or "other"). A labelled
    adapter's version gets its number as label while "tenant/name@N" is among the
    busiest `max_versions` versions (same promotion rule), else "other"; "base" and
    "other" adapters have version "".
    """

    def __init__(self, max_adapters: int = 20, max_versions: int = 40):
        self.adapters = AdapterLabeler(max_adapters)
        self.versions = AdapterLabeler(max_versions)

    def observe(self, adapter: str | None, version: int | None) -> tuple[str, str]:
        """Counts one request for adapter@version and returns its (adapter, version) labels."""
        name = self.adapters.observe(adapter)
        if name in (BASE, OTHER) or version is None:
            return name, ""
        is_labelled = self.versions.observe(f"{adapter}@{version}") != OTHER
        return name, str(version) if is_labelled else OTHER

    def label(self, adapter: str | None) -> str:
        """The current adapter label of `adapter` without counting a request."""
        return self.adapters.label(adapter)
