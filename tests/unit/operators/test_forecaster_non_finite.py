"""Non-finite model outputs never leave the operator as forecasts: the tick is refused with
``non_finite_forecast``, its instrument's recurrent state is zeroed (counted), and the rule is per tick, so
verdicts, forecasts and states do not depend on how the stream was cut into batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.forecaster import Forecaster
from operators.validation import RejectReason, reject_labels
from pipeline.checkpoint import CheckpointStore
from pipeline.checkpoint_format import Manifest, check_state
from pipeline.files.synthetic import generate_ticks
from tests.support.strategies import SETTINGS, splits, tick_streams

NON_FINITE = RejectReason.NON_FINITE_FORECAST
FLOAT64_MAX = float(np.finfo(np.float64).max)


def nan_weights(bundle):
    """The bundle with one NaN in the first layer's recurrent kernel: every state and output becomes NaN."""
    layer = bundle.weights.layers[0]
    recurrent = layer.recurrent.copy()
    recurrent[0, 0] = np.nan
    layers = (dataclasses.replace(layer, recurrent=recurrent), *bundle.weights.layers[1:])
    return dataclasses.replace(bundle, weights=dataclasses.replace(bundle.weights, layers=layers))


def overflowing(bundle, threshold: float):
    """The bundle with its output layer scaled by 1/``threshold`` and a target scale of float64's largest
    number: every output above ``threshold`` (in the original's normalised units, in absolute value) overflows
    to an infinity once scaled. A head that explodes for some ticks only; the state is the original's."""
    w = bundle.weights
    weights = dataclasses.replace(w, dense_kernel=w.dense_kernel / np.float32(threshold),
                                  dense_bias=float(w.dense_bias) / threshold)
    norm = dataclasses.replace(bundle.normalisation, target_mean=0.0, target_std=FLOAT64_MAX)
    return dataclasses.replace(bundle, weights=weights, normalisation=norm)


def one_at_a_time(bundle, ticks: pa.Table):
    fc = Forecaster(bundle)
    reasons, forecasts = [], {}
    for i in range(ticks.num_rows):
        res = fc.step(ticks.slice(i, 1))
        reasons.append(int(res.reasons[0]))
        for row, f in zip(res.rows.tolist(), res.forecasts.tolist()):
            forecasts[i + row] = f
    return np.array(reasons), forecasts, fc


def in_batches(bundle, ticks: pa.Table, bounds):
    fc = Forecaster(bundle)
    reasons, forecasts, resets = [], {}, 0
    for a, b in bounds:
        res = fc.step(ticks.slice(a, b - a))
        reasons.append(res.reasons)
        resets += res.n_non_finite_resets
        for row, f in zip(res.rows.tolist(), res.forecasts.tolist()):
            forecasts[a + row] = f
    return np.concatenate(reasons) if reasons else np.zeros(0, np.uint8), forecasts, fc, resets


def _threshold(bundle, ticks: pa.Table) -> float | None:
    """A threshold in a wide gap between the outputs (none near it) under which some ticks, not all, overflow
    (a refused tick's instrument steps on from zero state, whose outputs may overflow too)."""
    res = Forecaster(bundle).step(ticks)
    norm = bundle.normalisation
    y = np.sort(np.abs((res.forecasts - norm.target_mean) / norm.target_std))
    if len(y) < 2:
        return None
    for k in range(len(y) - 2, max(len(y) - 42, -1), -1):  # from the top: zero-state outputs may be large
        if y[k + 1] - y[k] <= 1e-4 * y[k + 1]:
            continue
        threshold = float((y[k] + y[k + 1]) / 2)
        refused = (Forecaster(overflowing(bundle, threshold)).step(ticks).reasons == NON_FINITE).sum()
        if 0 < refused < len(y):
            return threshold
    return None


def _states(fc: Forecaster, bundle) -> dict[str, np.ndarray]:
    st_ = fc.state
    names = st_.partition_to_arrow(0).column("instrument").to_pylist()
    out = {}
    for name in names:
        row = int(st_.lookup(0, [name])[0])
        out[name] = np.concatenate([st_.vector(v)[row] for v, _ in st_.shape.vectors])
    return out


@SETTINGS
@given(data=st.data())
def test_non_finite_forecasts_are_refused_per_tick_whatever_the_batches(bundle, data):
    ticks = data.draw(tick_streams(max_ticks=120))
    threshold = _threshold(bundle, ticks)
    exploding = overflowing(bundle, threshold) if threshold is not None else nan_weights(bundle)
    bounds = data.draw(splits(ticks.num_rows))
    ref_reasons, ref_forecasts, ref_fc = one_at_a_time(exploding, ticks)
    reasons, forecasts, fc, resets = in_batches(exploding, ticks, bounds)
    np.testing.assert_array_equal(reasons, ref_reasons)
    assert forecasts.keys() == ref_forecasts.keys()
    assert all(np.isfinite(f) for f in forecasts.values())
    # every tick accounted for: a forecast, or a reason
    assert sorted(forecasts) == np.flatnonzero(reasons == 0).tolist()
    assert resets >= int((reasons == NON_FINITE).sum())
    keys = sorted(forecasts)
    scale = exploding.normalisation.target_std
    np.testing.assert_allclose(np.array([forecasts[k] for k in keys]) / scale,
                               np.array([ref_forecasts[k] for k in keys]) / scale, rtol=1e-5, atol=1e-5)
    got, want = _states(fc, exploding), _states(ref_fc, exploding)
    assert got.keys() == want.keys()
    for name in want:
        assert np.isfinite(got[name]).all()
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_an_exploding_head_is_refused_and_the_state_after_it_is_zero(bundle):
    ticks = generate_ticks(4, 400, seed=3, bad_fraction=0.0)
    threshold = _threshold(bundle, ticks)
    exploding = overflowing(bundle, threshold)
    fc = Forecaster(exploding)
    res = fc.step(ticks)
    refused = int((res.reasons == NON_FINITE).sum())
    assert 0 < refused < ticks.num_rows and len(res.rows) == ticks.num_rows - refused
    assert np.isfinite(res.forecasts).all() and res.n_non_finite_resets >= refused
    assert set(reject_labels(res.reasons[res.reasons != 0])) == {"non_finite_forecast"}
    # The next tick of an instrument whose last tick was refused steps from zero state: as a lone tick would.
    alone = Forecaster(exploding)
    for i in range(ticks.num_rows):
        alone.step(ticks.slice(i, 1))
    for name, vector in _states(fc, exploding).items():
        np.testing.assert_allclose(vector, _states(alone, exploding)[name], rtol=1e-5, atol=1e-6)


def test_nan_weights_refuse_every_tick_keep_the_state_finite_and_checkpoints_usable(bundle, tmp_path):
    broken = nan_weights(bundle)
    fc = Forecaster(broken)
    ticks = generate_ticks(5, 300, seed=2, bad_fraction=0.0)
    res = fc.step(ticks)
    assert len(res.rows) == 0 and (res.reasons == NON_FINITE).all()
    assert res.n_non_finite_resets == ticks.num_rows
    table = fc.export_partition(0)
    for v, _ in fc.state.shape.vectors:
        assert np.all(fc.state.vector(v)[: len(fc.state)] == 0.0)
    check_state(table, Manifest(1, "ticks", 0, 10**6, table.num_rows, "v", {}, broken.shape.layers,
                                broken.shape.hidden, 0.0, "x.arrow", 0, "0" * 64))
    store = CheckpointStore(str(tmp_path / "store"))
    store.write("ticks", 0, table, 10**6, broken.model_version, {})
    assert store.latest("ticks", 0).manifest.rows == 5


def test_non_finite_forecast_reason_code_is_stable():
    assert int(NON_FINITE) == 14 and NON_FINITE.label == "non_finite_forecast"


@pytest.mark.parametrize("outputs", [1])
def test_finite_models_are_untouched(bundle, outputs):
    ticks = generate_ticks(6, 500, seed=9, bad_fraction=0.0)
    res = Forecaster(bundle).step(ticks)
    assert res.n_non_finite_resets == 0 and not (res.reasons == NON_FINITE).any()
