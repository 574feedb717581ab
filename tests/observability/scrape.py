"""Reading a live /metrics endpoint the way Prometheus does (the text format parser)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """Every sample of one /metrics scrape, by sample name."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[str, list[Sample]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(sample)

    def values(self, name: str, **labels: str) -> list[float]:
        """Values of the `name` samples whose labels include `labels`."""
        return [s.value for s in self.samples.get(name, ())
                if labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with exactly-these-or-more `labels`."""
        found = self.values(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def labels_of(self, name: str) -> list[dict[str, str]]:
        """The label sets of every `name` sample."""
        return [s.labels for s in self.samples.get(name, ())]


def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    """GET http://host:port/metrics, parsed."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        return Scrape(response.read().decode())
