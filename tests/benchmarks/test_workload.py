"""The benchmark's workload generator and statistics: seeded, shaped as asked."""

from __future__ import annotations

import argparse
import collections
import statistics

import pytest

from benchmarks.serving.report import percentile
from benchmarks.serving.workload import (
    Lengths,
    Popularity,
    WorkloadSpec,
    make_requests,
    parse_lengths,
)

ADAPTERS = ("t/a", "t/b", "t/c", "t/d")


def _spec(**fields) -> WorkloadSpec:
    options = dict(popularity=Popularity(ADAPTERS), prompt_lengths=Lengths("fixed", 8),
                   output_lengths=Lengths("fixed", 4), vocab=100, num_requests=4000)
    options.update(fields)
    return WorkloadSpec(**options)


def test_zipf_popularity_and_base_share():
    requests = make_requests(_spec(popularity=Popularity(ADAPTERS, "zipf", 1.0, 0.25)))
    counts = collections.Counter(r.adapter for r in requests)
    assert counts[""] / 4000 == pytest.approx(0.25, abs=0.03)
    named = 4000 - counts[""]
    harmonic = 1 + 1 / 2 + 1 / 3 + 1 / 4
    for k, name in enumerate(ADAPTERS):  # weight 1/(k+1)
        assert counts[name] / named == pytest.approx(1 / (k + 1) / harmonic, abs=0.03)


def test_cycle_popularity_and_fixed_lengths():
    requests = make_requests(_spec(popularity=Popularity(ADAPTERS, "cycle"), num_requests=8))
    assert [r.adapter for r in requests] == list(ADAPTERS) * 2
    assert all(len(r.prompt) == 8 and r.max_tokens == 4 for r in requests)
    assert all(10 <= t < 100 for r in requests for t in r.prompt)


def test_lengths_and_poisson_arrivals_are_seeded():
    spec = _spec(prompt_lengths=parse_lengths("lognormal:50:0.5"),
                 output_lengths=parse_lengths("uniform:3:9"), rate=20.0, max_len=120)
    first, again = make_requests(spec), make_requests(spec)
    assert first == again
    assert statistics.median(len(r.prompt) for r in first) == pytest.approx(50, rel=0.1)
    # Outputs are uniform in [3, 9], cut where prompt + output would pass max_len.
    assert all(len(r.prompt) + r.max_tokens <= 120 for r in first)
    assert all(3 <= r.max_tokens <= 9 or len(r.prompt) + r.max_tokens == 120 for r in first)
    assert {r.max_tokens for r in first if len(r.prompt) < 100} == set(range(3, 10))
    gaps = [b.send_at - a.send_at for a, b in zip(first, first[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(1 / 20, rel=0.1)
    assert make_requests(_spec(seed=1, rate=20.0)) != make_requests(_spec(seed=2, rate=20.0))


@pytest.mark.parametrize("text, message", [
    ("", "expected fixed:N"), ("fixed", "expected fixed:N"), ("lognormal:0:1", "positive"),
    ("zipf:3", "expected fixed:N"), ("a:b", "expected fixed:N"), ("uniform:9:3", "LOW <= HIGH"),
])
def test_bad_lengths_are_refused(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_lengths(text)


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 50) is None
    assert percentile([3.0], 90) == 3.0
