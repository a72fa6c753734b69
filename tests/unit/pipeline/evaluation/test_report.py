"""Bootstrap intervals, breakdowns, paired comparison, the HTML report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.evaluation.report import bootstrap_scores, breakdown, compare, write_report
from pipeline.evaluation.scores import score


def test_bootstrap_points_equal_the_scores_and_intervals_are_deterministic():
    rng = np.random.default_rng(1)
    r = rng.normal(0, 1e-3, 20_000)
    f = 0.5 * r + rng.normal(0, 3e-4, 20_000)
    a, b = bootstrap_scores(f, r), bootstrap_scores(f, r)
    assert a == b
    s, rw = score(f, r), score(np.zeros_like(r), r)
    assert a["mae"]["value"] == pytest.approx(s.mae) and a["mae_random_walk"]["value"] == pytest.approx(rw.mae)
    assert a["hit_rate"]["value"] == pytest.approx(s.hit_rate) and a["ic"]["value"] == pytest.approx(s.ic)
    for key in ("mae", "rmse", "mae_minus_random_walk", "hit_rate", "r2_vs_random_walk"):
        lo, hi = a[key]["ci95"]
        assert lo < a[key]["value"] < hi, key
    # A forecast with real skill: the interval of "model - random walk" lies below zero; pure noise: above.
    assert a["mae_minus_random_walk"]["ci95"][1] < 0
    noise = bootstrap_scores(rng.normal(0, 1e-3, 20_000), r)
    assert noise["mae_minus_random_walk"]["ci95"][0] > 0


def _forecasts(f, r, names=None, ts=None):
    n = len(f)
    return pa.table({"instrument": names or ["A", "B"] * (n // 2), "ts": ts if ts is not None else
                     np.arange(n, dtype=np.int64) * 3_600_000_000_000 // 7, "seq": np.arange(n, dtype=np.int64),
                     "price": np.ones(n), "forecast": f, "realized": r})


def test_breakdowns_by_instrument_and_hour():
    t = _forecasts(np.array([0.1, 0.0, 0.3, 0.0, 0.2, 0.0]), np.array([0.2, 0.1, 0.1, -0.1, np.nan, 0.3]))
    per = breakdown(t, "instrument").to_pylist()
    assert [p["instrument"] for p in per] == ["A", "B"]
    assert per[0]["n"] == 2 and per[0]["mae"] == pytest.approx(0.15) and per[0]["mae_random_walk"] == pytest.approx(0.15)
    assert per[1]["n"] == 3 and per[1]["mae"] == pytest.approx(per[1]["mae_random_walk"])
    hours = breakdown(t, "hour").to_pylist()
    assert sum(h["n"] for h in hours) == 5 and [h["hour"] for h in hours] == [0]


def test_compare_tells_skill_from_luck():
    rng = np.random.default_rng(2)
    r = rng.normal(0, 1e-3, 10_000)
    noise = _forecasts(rng.normal(0, 1e-3, 10_000), r)
    skilled = _forecasts(0.5 * r + rng.normal(0, 5e-4, 10_000), r)
    c = compare(noise, skilled)
    assert c.diff < 0 and c.ci95[1] < 0 and c.p_value < 0.01 and c.verdict.startswith("B is better")
    same = compare(noise, noise)
    assert same.diff == 0 and same.verdict.startswith("no significant difference")
    with pytest.raises(ValueError, match="share 0 scored ticks"):
        compare(noise, skilled.set_column(2, "seq", pa.array(np.arange(10_000) + 10**6)))


def test_report_is_self_contained_html_with_plots_and_tables(tmp_path):
    rng = np.random.default_rng(3)
    r = rng.normal(0, 1e-3, 4000)
    t = _forecasts(0.3 * r + rng.normal(0, 1e-3, 4000), r)
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "forecasts.parquet")
    (tmp_path / "summary.json").write_text(json.dumps({"model_version": "abc123", "input": "x.parquet",
                                                       "ticks": 4000, "forecasts": 4000, "horizon_ticks": 10}))
    page = write_report(tmp_path).read_text()
    assert page.count('src="data:image/png;base64,') == 4
    for text in ("Backtest of model abc123", "95 % interval", "Per instrument", "Per hour of day (UTC)",
                 "Hit rate over time", "Cumulative error vs the random walk", "Forecast vs realised"):
        assert text in page, text
