"""The three approaches from the design, on a changing set of instruments.

1. Keras ``stateful=True`` ties state to batch row positions and a fixed batch size;
2. padding/truncating a positional state tensor hands one instrument's memory to another;
3. one Keras cell call per tick per instrument is correct (and agrees with the operator).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.forecaster import Forecaster
from operators.training import sequences_from_table
from tests.support.bundles import in_target_units

T0 = 1_700_000_000_000_000_000
# Micro-batches with a changing instrument set: {A,B} -> {B,C} -> {A,B,C}
BATCHES = [["A", "B"], ["B", "C"], ["A", "B", "C"]]


@pytest.fixture(scope="module")
def stream():
    names = [n for batch in BATCHES for n in batch]
    rng = np.random.default_rng(5)
    t = pa.table({
        "instrument": pa.array(names),
        "ts": pa.array([T0 + i * 1_000_000 for i in range(len(names))], pa.int64()),
        "price": pa.array(20 * np.exp(np.cumsum(rng.normal(0, 0.01, len(names))))),
        "size": pa.array(rng.integers(1, 500, len(names)).astype(float)),
    })
    return t


@pytest.fixture(scope="module")
def features_by_row(bundle, stream):
    seq = sequences_from_table(stream)
    x = bundle.normalisation.apply(seq.raw_features)
    out = np.empty_like(x)
    out[seq.order] = x
    return out


def _bounds():
    out, start = [], 0
    for b in BATCHES:
        out.append((start, start + len(b)))
        start += len(b)
    return out


def _operator(bundle, stream):
    fc = Forecaster(bundle)
    return np.concatenate([fc.step(stream.slice(a, b - a)).forecasts for a, b in _bounds()])


def _denorm(bundle, y):
    n = bundle.normalisation
    return np.asarray(y, dtype=np.float64).ravel() * n.target_std + n.target_mean


def test_stateful_keras_breaks_on_a_changing_instrument_set(bundle, reference, stream, features_by_row):
    import keras

    _, ref, _ = reference.run(stream)
    f = features_by_row.shape[1]

    def stateful_model(batch_size):
        inp = keras.Input(batch_shape=(batch_size, None, f))
        lstm = keras.layers.LSTM(bundle.shape.hidden, stateful=True, return_sequences=True)
        head = keras.layers.Dense(1)
        model = keras.Model(inp, head(lstm(inp)))
        lstm.set_weights(bundle.keras_model.get_layer("lstm_0").get_weights())
        head.set_weights(bundle.keras_model.get_layer("forecast").get_weights())
        return model, lstm

    model, _ = stateful_model(2)
    (a1, b1), (a2, b2), (a3, b3) = _bounds()
    y1 = _denorm(bundle, model(features_by_row[a1:b1, None, :]))
    np.testing.assert_allclose(in_target_units(bundle, y1), in_target_units(bundle, ref[a1:b1]), atol=1e-5)
    # Batch 2 is {B, C}: row 0 now carries A's memory into B's tick.
    y2 = _denorm(bundle, model(features_by_row[a2:b2, None, :]))
    assert not np.allclose(y2[0], ref[a2], rtol=1e-3, atol=0), "B was stepped from A's state"
    # Batch 3 has three instruments: the fixed batch size refuses it ...
    with pytest.raises(ValueError, match="batch size"):
        model(features_by_row[a3:b3, None, :])
    # ... and rebuilding for size 3 (or reset_states()) throws every instrument's memory away.
    model3, lstm3 = stateful_model(3)
    lstm3.reset_states()
    y3 = _denorm(bundle, model3(features_by_row[a3:b3, None, :]))
    assert not np.allclose(y3[:2], ref[a3:a3 + 2], rtol=1e-3, atol=0), "A and B lost their history"
    # The operator gets every batch right.
    np.testing.assert_allclose(in_target_units(bundle, _operator(bundle, stream)), in_target_units(bundle, ref),
                               atol=1e-5)


def test_padding_or_truncating_positional_state_hands_memory_to_another_instrument(
        bundle, reference, stream, features_by_row):
    cell = bundle.keras_model.get_layer("lstm_0").cell
    head = bundle.keras_model.get_layer("forecast")
    _, ref, _ = reference.run(stream)
    h = np.zeros((0, bundle.shape.hidden), np.float32)
    c = np.zeros_like(h)
    out = []
    for a, b in _bounds():
        n = b - a
        if len(h) < n:  # pad with zeros ...
            pad = np.zeros((n - len(h), h.shape[1]), np.float32)
            h, c = np.vstack([h, pad]), np.vstack([c, pad])
        h, c = h[:n], c[:n]  # ... or truncate
        y, (h, c) = cell(features_by_row[a:b], [h, c])
        h, c = np.asarray(h), np.asarray(c)
        out.append(_denorm(bundle, head(y)))
    naive = np.concatenate(out)
    (a1, b1), (a2, _), (a3, _) = _bounds()
    np.testing.assert_allclose(in_target_units(bundle, naive[a1:b1]), in_target_units(bundle, ref[a1:b1]), atol=1e-5)
    assert not np.isclose(naive[a2], ref[a2], rtol=1e-3, atol=0), "B (row 0) inherited A's memory"
    assert not np.isclose(naive[a3 + 1], ref[a3 + 1], rtol=1e-3, atol=0), "B (row 1) inherited C's memory"


def test_per_tick_cell_calls_are_correct_and_agree_with_the_operator(bundle, stream, features_by_row):
    cell = bundle.keras_model.get_layer("lstm_0").cell
    head = bundle.keras_model.get_layer("forecast")
    state: dict[str, list] = {}
    zero = np.zeros((1, bundle.shape.hidden), np.float32)
    naive = []
    for row, name in enumerate(stream.column("instrument").to_pylist()):
        y, new = cell(features_by_row[row : row + 1], state.get(name, [zero, zero]))
        state[name] = new
        naive.append(_denorm(bundle, head(y))[0])
    np.testing.assert_allclose(in_target_units(bundle, _operator(bundle, stream)),
                               in_target_units(bundle, np.array(naive)), rtol=1e-5, atol=1e-5)
