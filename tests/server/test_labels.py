"""Per-adapter metric labels stay bounded however many adapters a worker sees."""

from __future__ import annotations

from lorafleet.dataplane.server.labels import BASE, OTHER, AdapterLabeler


def test_busiest_adapters_keep_their_names_and_the_rest_is_other():
    labeler = AdapterLabeler(max_labels=2)
    assert labeler.observe("a/one") == "a/one"
    assert labeler.observe("a/two") == "a/two"
    assert labeler.observe("a/three") == OTHER
    assert labeler.observe(None) == BASE


def test_an_adapter_that_becomes_busy_is_promoted():
    labeler = AdapterLabeler(max_labels=2)
    labeler.observe("a/one")
    labeler.observe("a/two")
    labels = [labeler.observe("a/hot") for _ in range(3)]
    assert labels[-1] == "a/hot"
    assert [labeler.label("a/one"), labeler.label("a/two")].count(OTHER) == 1


def test_distinct_label_values_are_bounded_under_churn():
    labeler = AdapterLabeler(max_labels=3)
    seen = set()
    for round_ in range(50):
        for i in range(20):
            for _ in range(round_ % 5 + 1):
                seen.add(labeler.observe(f"t/a{(i + round_) % 40}"))
    assert len(seen - {OTHER}) <= 2 * 3
