"""Batch invariance under the instrument limit: which instruments are refused, and every forecast,
do not depend on how the stream is cut into micro-batches."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from operators.forecaster import Forecaster, ForecasterConfig
from operators.validation import RejectReason
from tests.support.bundles import in_target_units
from tests.support.strategies import SETTINGS, splits, tick_streams


def run(bundle, ticks, bounds, limit):
    fc = Forecaster(bundle, ForecasterConfig(max_instruments=limit))
    reasons, rows, forecasts = [], [], []
    for a, b in bounds:
        res = fc.step(ticks.slice(a, b - a))
        reasons.append(res.reasons)
        rows.append(res.rows + a)
        forecasts.append(res.forecasts)
    return np.concatenate(reasons), np.concatenate(rows), np.concatenate(forecasts), fc


@SETTINGS
@given(data=st.data(), limit=st.integers(1, 6))
def test_limit_verdicts_and_forecasts_do_not_depend_on_batching(bundle, data, limit):
    ticks = data.draw(tick_streams(max_ticks=80))
    n = len(ticks)
    bounds = data.draw(splits(n))
    reasons, rows, forecasts, fc = run(bundle, ticks, bounds, limit)
    # The policy: the first `limit` distinct instruments of the stream are served, later ones refused.
    names = ticks.column("instrument").to_pylist()
    served = list(dict.fromkeys(names))[:limit]
    want = np.array([0 if nm in served else RejectReason.INSTRUMENT_LIMIT for nm in names], dtype=np.uint8)
    np.testing.assert_array_equal(reasons, want)
    assert sorted(fc.state.instruments) == sorted(served)
    # Served instruments' forecasts are what an unlimited operator gives them, in one batch.
    whole = Forecaster(bundle).step(ticks)
    keep = np.isin(whole.rows, rows)
    np.testing.assert_array_equal(rows, whole.rows[keep])
    np.testing.assert_allclose(in_target_units(bundle, forecasts), in_target_units(bundle, whole.forecasts[keep]),
                               rtol=1e-5, atol=1e-5)
