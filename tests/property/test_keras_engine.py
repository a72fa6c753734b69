"""engine = "keras": models with layers the kernel lacks still serve what Keras computes, batch-invariantly.

The operator sees the ticks of several instruments in a random interleaving, cut into random micro-batches;
with the Keras engine (picked by ``auto`` for these models) its forecasts and each instrument's final state
vectors must equal the Keras model run on that instrument's whole sequence alone, to 1e-5 relative. On a
model the kernel computes, engine = "keras" gives the kernel's numbers (1e-5), also with session resets
in the middle of a batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.forecaster import Forecaster, ForecasterConfig
from tests.support.bundles import in_target_units
from tests.support.keras_models import KERAS_ONLY, ChainReference, build, bundled
from tests.support.strategies import reinterleaved, splits, tick_streams

FEW = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
_SERVED: dict = {}


def served(name: str, tmp_path_factory):
    if name not in _SERVED:
        model = build(name, seed=10 + len(_SERVED))
        bundle, _ = bundled(model, tmp_path_factory.mktemp(name))
        _SERVED[name] = (bundle, ChainReference(bundle, model))
    return _SERVED[name]


def _stream(fc: Forecaster, merged, origin, cuts):
    rows, forecasts = [], []
    for a, b in cuts:
        res = fc.step(merged.slice(a, b - a))
        rows.append(origin[res.rows + a])
        forecasts.append(res.forecasts)
    got_rows = np.concatenate(rows)
    got = np.concatenate(forecasts).reshape(len(got_rows), -1) if got_rows.size else np.zeros((0, fc.kernel.outputs))
    by_origin = np.argsort(got_rows, kind="stable")
    return got_rows[by_origin], got[by_origin]


@pytest.mark.parametrize("name", KERAS_ONLY)
def test_keras_engine_equals_keras_on_each_instrument_alone(name, tmp_path_factory):
    bundle, reference = served(name, tmp_path_factory)
    engines = []

    @FEW
    @given(data=st.data())
    def check(data):
        ticks = data.draw(tick_streams(max_ticks=50))
        merged, origin = reinterleaved(ticks, data.draw(st.randoms(use_true_random=False)))
        fc = Forecaster(bundle)
        engines.append(fc.engine.engine)
        got_rows, got = _stream(fc, merged, origin, data.draw(splits(merged.num_rows)))
        ref_rows, ref_out, ref_states = reference.run(ticks)
        np.testing.assert_array_equal(got_rows, ref_rows)
        np.testing.assert_allclose(in_target_units(bundle, got), ref_out, rtol=1e-5, atol=1e-5)
        assert len(fc.state) == len(ref_states)
        for instrument, vectors in ref_states.items():
            row = int(fc.state.lookup(0, [instrument])[0])
            for (column, _), want in zip(bundle.shape.vectors, vectors):
                np.testing.assert_allclose(fc.state.vector(column)[row], want, rtol=1e-5, atol=1e-6)

    check()
    assert set(engines) == {"keras"}  # auto picked Keras: the kernel lacks a layer of each of these models


@pytest.mark.parametrize("name", ["lstm_layernorm_gru_k3", "sequence_to_one", "rnn_dropout_timedistributed"])
def test_keras_engine_gives_the_kernels_numbers_on_a_model_the_kernel_serves(name, tmp_path_factory):
    """Also with session resets (reset_gap 2 s; the streams' gaps reach 3 s), which split an instrument's
    ticks of one batch into segments, the later ones from zero state."""
    bundle, _ = served(name, tmp_path_factory)

    @FEW
    @given(data=st.data(), reset=st.booleans())
    def check(data, reset):
        ticks = data.draw(tick_streams(max_ticks=50))
        merged, origin = reinterleaved(ticks, data.draw(st.randoms(use_true_random=False)))
        cuts = data.draw(splits(merged.num_rows))
        gap = 2_000_000_000 if reset else None
        kernel = Forecaster(bundle, ForecasterConfig(reset_gap_ns=gap, engine="kernel"))
        keras = Forecaster(bundle, ForecasterConfig(reset_gap_ns=gap, engine="keras"))
        assert (kernel.engine.engine, keras.engine.engine) == ("kernel", "keras")
        k_rows, k_out = _stream(kernel, merged, origin, cuts)
        e_rows, e_out = _stream(keras, merged, origin, cuts)
        np.testing.assert_array_equal(e_rows, k_rows)
        np.testing.assert_allclose(e_out, k_out, rtol=1e-5, atol=1e-5 * np.max(bundle.normalisation.target_std))
        assert len(kernel.state) == len(keras.state)
        instruments = sorted(set(ticks.column("instrument").to_pylist()))
        for instrument in instruments:
            a, b = int(kernel.state.lookup(0, [instrument])[0]), int(keras.state.lookup(0, [instrument])[0])
            if a < 0:
                assert b < 0
                continue
            for column, _ in bundle.shape.vectors:
                np.testing.assert_allclose(keras.state.vector(column)[b], kernel.state.vector(column)[a],
                                           rtol=1e-5, atol=1e-6)

    check()


def test_sequence_to_one_model_with_keras_layers_forecasts_what_keras_gives_for_each_prefix(tmp_path):
    """return_sequences=False on the last recurrent layer, then a BatchNormalization built on (batch, features):
    the engine applies it to every tick (its axis is the feature axis), and TimeDistributed(Dense(gelu)) before."""
    from operators.bundle import _keras
    from operators.training import sequences_from_table
    from pipeline.files.synthetic import generate_ticks

    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((None, 4)), L.LSTM(3, return_sequences=True),
                              L.TimeDistributed(L.Dense(3, activation="gelu")), L.GRU(3), L.BatchNormalization(),
                              L.Dense(2)])
    bn = model.layers[3]
    g, b, m, v = bn.get_weights()
    bn.set_weights([g + 0.3, b - 0.2, m + 0.1, v + 0.5])
    bundle, _ = bundled(model, tmp_path)
    ticks = generate_ticks(3, 24, seed=4, bad_fraction=0.0)
    seq = sequences_from_table(ticks, bundle.feature_spec.names)
    x = bundle.model_inputs(seq.raw_features)
    fc = Forecaster(bundle)
    assert fc.engine.engine == "keras"
    got = np.empty((len(seq.order), bundle.outputs))
    position = {row: i for i, row in enumerate(seq.order.tolist())}
    for a in range(0, ticks.num_rows, 13):
        res = fc.step(ticks.slice(a, 13))
        for row, f in zip((res.rows + a).tolist(), in_target_units(bundle, res.forecasts.reshape(len(res.rows), -1))):
            got[position[row]] = f
    bounds = np.append(seq.group_starts, len(seq.order))
    for i in range(len(seq.group_starts)):
        for end in range(bounds[i] + 1, bounds[i + 1] + 1):
            want = np.asarray(model(x[None, bounds[i]:end], training=False))[0]
            np.testing.assert_allclose(got[end - 1], want, rtol=1e-5, atol=1e-5)
