"""Scores against hand-computed values, the random-walk baseline on a known series."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.evaluation.scores import realized_returns, score

F = np.array([0.1, -0.2, 0.3, 0.0])
R = np.array([0.2, -0.1, -0.1, 0.05])


def test_scores_match_hand_computed_values():
    s = score(F, R)
    assert s.n == 4
    assert s.mae == pytest.approx(0.65 / 4)
    assert s.rmse == pytest.approx(math.sqrt(0.1825 / 4))
    assert s.hit_rate == pytest.approx(2 / 3)  # the zero forecast has no direction
    # Spearman: forecast ranks [3, 1, 4, 2], realised ranks [4, 1.5, 1.5, 3] (a tie).
    assert s.ic == pytest.approx(0.5 / math.sqrt(5 * 4.5))
    rw = score(np.zeros(4), R)
    assert (rw.mae, rw.rmse, rw.hit_rate, rw.ic) == (pytest.approx(0.1125), pytest.approx(0.125), None, None)


def test_random_walk_baseline_on_a_known_series():
    prices = [100.0, 101.0, 102.0, 103.0, 101.0]
    t = pa.table({"instrument": ["X"] * 5, "seq": list(range(5)), "price": prices})
    realized = realized_returns(t, horizon=2)
    expect = [math.log(102 / 100), math.log(103 / 101), math.log(101 / 102)]
    np.testing.assert_allclose(realized[:3], expect)
    assert np.isnan(realized[3:]).all()
    rw = score(np.zeros(5), realized)
    assert rw.n == 3 and rw.mae == pytest.approx(np.mean(np.abs(expect)))
