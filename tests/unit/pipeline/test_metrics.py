"""Metrics: names, units and the series that exist before the first event (a fresh registry per test)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from operators.validation import REASON_LABELS
from pipeline.metrics import _LATENCY_BUCKETS, ArrayHistogram, Metrics


def test_every_dead_letter_reason_has_a_series_at_zero_from_the_start():
    metrics = Metrics(CollectorRegistry())
    for reason in REASON_LABELS:
        assert metrics.registry.get_sample_value("tickcast_dead_letters_total", {"reason": reason}) == 0, reason
    metrics.dead_letters.labels("bad_json").inc()
    assert metrics.registry.get_sample_value("tickcast_dead_letters_total", {"reason": "bad_json"}) == 1


def test_every_metrics_object_has_its_own_registry():
    a, b = Metrics(CollectorRegistry()), Metrics()
    a.forecasts_published.inc(3)
    assert a.registry.get_sample_value("tickcast_forecasts_published_total") == 3
    assert b.registry.get_sample_value("tickcast_forecasts_published_total") == 0


_FINITE = st.floats(-1e6, 1e6, allow_nan=False)
_NEAR_BOUNDS = st.sampled_from([b + d for b in _LATENCY_BUCKETS for d in (-1e-12, 0.0, 1e-12)])


@given(st.lists(st.lists(st.one_of(_FINITE, _NEAR_BOUNDS), max_size=50), max_size=5))
def test_an_array_histogram_exposes_what_a_histogram_observed_one_value_at_a_time_would(batches):
    """The end-to-end latency is observed a batch at a time; a scrape must not tell the difference: same
    series, same bucket per value (a value on a bound belongs to that bound's bucket), same sum."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    array = ArrayHistogram("x_seconds", "doc", _LATENCY_BUCKETS, registry=ours)
    one_by_one = Histogram("x_seconds", "doc", buckets=_LATENCY_BUCKETS, registry=theirs)
    for values in batches:
        array.observe_many(np.array(values))
        for v in values:
            one_by_one.observe(v)

    def samples(registry):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")}

    got, expected = samples(ours), samples(theirs)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-6), key


def test_the_end_to_end_latency_scrapes_as_a_histogram():
    metrics = Metrics(CollectorRegistry())
    metrics.e2e_seconds.observe_many(np.array([0.003, 0.02, 0.02, 7.0]))
    value = metrics.registry.get_sample_value
    assert value("tickcast_end_to_end_latency_seconds_bucket", {"le": "0.005"}) == 1
    assert value("tickcast_end_to_end_latency_seconds_bucket", {"le": "0.025"}) == 3
    assert value("tickcast_end_to_end_latency_seconds_bucket", {"le": "+Inf"}) == 4
    assert value("tickcast_end_to_end_latency_seconds_count") == 4
    assert value("tickcast_end_to_end_latency_seconds_sum") == pytest.approx(7.043)
