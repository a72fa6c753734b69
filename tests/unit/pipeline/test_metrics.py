"""Metrics: names, units and the series that exist before the first event (a fresh registry per test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from operators.validation import REASON_LABELS
from pipeline.metrics import Metrics


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
