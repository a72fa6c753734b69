"""`tickcast bench e2e --candidates`: every side drains the whole backlog, the primary's forecasts go to the
output topic and, with k candidates, each candidate's to the shadow topic, and the figures count what is there."""

from __future__ import annotations

import json
from collections import Counter

from benchmarks.e2e_candidates import measure
from benchmarks.operator_candidates import candidate_bundles
from benchmarks.workload import bench_bundle
from tests.support.readers import read_all

N, INSTRUMENTS, LAYERS, HIDDEN = 400, 5, 1, 4


def versions(bootstrap: str, topic: str, expected: int) -> Counter:
    return Counter(json.loads(m.value())["model_version"] for m in read_all(bootstrap, topic, expected=expected))


def test_shadow_forecasts_are_published_for_every_candidate_and_counted(kafka_bootstrap):
    rows = measure(kafka_bootstrap, (1, 2), N, INSTRUMENTS, batch=100, layers=LAYERS, hidden=HIDDEN, rounds=1)
    assert [r["candidates"] for r in rows] == [0, 1, 2]
    primary = bench_bundle(LAYERS, HIDDEN).model_version
    candidates = [b.model_version for b in candidate_bundles(LAYERS, HIDDEN, 2)]
    out = rows[0]["output_messages"]
    assert out > 0
    for r in rows:
        assert r["ticks"] == N
        k = r["candidates"]
        # The same ticks, so the same forecasts on the output topic whatever k, all the primary's.
        assert r["output_messages"] == out
        assert versions(kafka_bootstrap, r["output_topic"], out) == {primary: out}
        # Each candidate forecasts what the primary does (same shape, same ticks), on the shadow topic only.
        assert r["shadow_messages"] == k * out
        if k:
            assert versions(kafka_bootstrap, r["shadow_topic"], k * out) == {c: out for c in candidates[:k]}
        assert r["output_messages_per_second"] == out / r["seconds"]
        assert r["shadow_messages_per_second"] == k * out / r["seconds"]
        assert r["ideal_over_no_candidates"] == 1 / (1 + k)
    assert rows[0]["over_no_candidates"] == 1.0
