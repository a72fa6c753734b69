"""Bundles over any features of the registry without Keras, ticks that exercise every feature's edge cases,
and the raw features a Forecaster computes batch by batch."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

import operators.forecaster as forecaster_module
from operators.bundle import Bundle
from operators.features import FeatureSpec, Normalisation
from operators.forecaster import Forecaster
from operators.grouping import raw_features
from operators.lstm import LSTMLayerWeights, LSTMWeights
from operators.state import StateShape
from tests.support.strategies import START


def numpy_bundle(names, hidden: int = 4, seed: int = 0) -> Bundle:
    """A built-in-architecture bundle (one LSTM, a linear head) with random weights over features ``names``."""
    rng = np.random.default_rng(seed)
    n = len(names)
    layer = LSTMLayerWeights(rng.normal(0, 0.3, (n, 4 * hidden)).astype(np.float32),
                             rng.normal(0, 0.3, (hidden, 4 * hidden)).astype(np.float32),
                             rng.normal(0, 0.1, 4 * hidden).astype(np.float32))
    weights = LSTMWeights((layer,), rng.normal(0, 0.3, hidden).astype(np.float32), 0.01)
    norm = Normalisation(np.zeros(n), np.ones(n), 0.0, 1e-3)
    return Bundle(None, f"numpy-{seed}", FeatureSpec(names=tuple(names)), norm, 5, StateShape(1, hidden), weights)


@st.composite
def edgy_ticks(draw, max_ticks: int = 100):
    """A few instruments; prices on a grid that often stay unchanged (the tick test's carried sign); quotes
    and sizes absent now and then; gaps now and then long enough to reset a session (over a minute), event
    times stepping back now and then (late ticks), a price refused now and then; and a day boundary to cross."""
    n_inst = draw(st.integers(1, 4))
    n = draw(st.integers(0, max_ticks))

    def column(strategy):
        return draw(st.lists(strategy, min_size=n, max_size=n))

    inst = column(st.integers(0, n_inst - 1))
    steps = np.array(column(st.sampled_from([0, 1, 2, -1, 50, 90, -3]) if n else st.just(0)), dtype=np.int64)
    moves = np.array(column(st.sampled_from([-1, 0, 0, 0, 1])), dtype=np.float64)
    price = 100.0 + 0.5 * np.cumsum(moves)
    price[np.array(column(st.sampled_from([False] * 9 + [True])), dtype=bool)] = np.nan  # refused
    present = np.array(column(st.sampled_from([True, True, True, False])), dtype=bool)
    half = np.array(column(st.sampled_from([0.0, 0.25, 0.5])))
    bid_size = np.array(column(st.sampled_from([0.0, 1.0, 3.0])))
    ask_size = np.array(column(st.sampled_from([0.0, 2.0, 5.0])))
    size = np.array(column(st.sampled_from([np.nan, 0.0, 1.0, 40.0])))
    day = 86_400 * 10**9
    base = (START // day + 1) * day - 120 * 10**9  # two minutes before a UTC midnight
    ts = base + np.cumsum(steps) * 10**9
    return pa.table({
        "instrument": pa.array([f"I{i}" for i in inst], pa.string()),
        "ts": pa.array(ts, pa.int64()),
        "price": pa.array(price, pa.float64()),
        "size": pa.array(size, pa.float64(), from_pandas=True),
        "bid": pa.array(np.where(present, price - half, np.nan), pa.float64(), from_pandas=True),
        "ask": pa.array(np.where(present & (half > 0), price + half, np.nan), pa.float64(), from_pandas=True),
        "bid_size": pa.array(np.where(present, bid_size, np.nan), pa.float64(), from_pandas=True),
        "ask_size": pa.array(ask_size, pa.float64()),
    })


def streamed_raw(fc: Forecaster, ticks: pa.Table, bounds, between=None) -> tuple[np.ndarray, np.ndarray]:
    """Reasons and raw features per source row as ``fc.step`` computes them over the batches ``bounds``
    (NaN rows for refused ticks). ``between(fc, i)``, if given, runs before batch i and returns the
    Forecaster to go on with (a restore from a checkpoint, say)."""
    reasons = np.zeros(ticks.num_rows, dtype=np.uint8)
    raw = np.full((ticks.num_rows, len(fc.bundle.feature_spec.names)), np.nan)
    seen = []

    def recording(cols, groups, preceding, *args):
        out = raw_features(cols, groups, preceding, *args)
        seen.append((groups.order, out[0]))
        return out

    with mock.patch.object(forecaster_module, "raw_features", recording):
        for i, (a, b) in enumerate(bounds):
            if between is not None:
                fc = between(fc, i)
            seen.clear()
            res = fc.step(ticks.slice(a, b - a))
            reasons[a:b] = res.reasons
            for order, features in seen:
                raw[a + order] = features
    return reasons, raw
