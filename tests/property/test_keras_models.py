"""Models brought with `tickcast bundle --keras`: the operator equals Keras on each instrument's sequence alone.

For every supported layer and several stacked combinations (tests/support/keras_models.py: tiny models,
random weights), the operator sees the ticks of several instruments in a random interleaving, cut into
random micro-batches; its forecasts and each instrument's final state vectors must equal those of the
Keras model run on that instrument's whole sequence alone, to 1e-5 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.forecaster import Forecaster
from operators.training import sequences_from_table
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import in_target_units
from tests.support.keras_models import MODELS, ChainReference, build, bundled
from tests.support.strategies import reinterleaved, splits, tick_streams

FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
_SERVED: dict = {}


def served(name: str, tmp_path_factory):
    if name not in _SERVED:
        model = build(name, seed=len(_SERVED))
        bundle, _ = bundled(model, tmp_path_factory.mktemp(name))
        _SERVED[name] = (bundle, ChainReference(bundle, model))
    return _SERVED[name]


@pytest.mark.parametrize("name", MODELS)
def test_forecasts_and_final_states_equal_keras_on_each_instrument_alone(name, tmp_path_factory):
    bundle, reference = served(name, tmp_path_factory)

    @FEW
    @given(data=st.data())
    def check(data):
        ticks = data.draw(tick_streams(max_ticks=60))
        merged, origin = reinterleaved(ticks, data.draw(st.randoms(use_true_random=False)))
        fc = Forecaster(bundle)
        rows, forecasts = [], []
        for a, b in data.draw(splits(merged.num_rows)):
            res = fc.step(merged.slice(a, b - a))
            rows.append(origin[res.rows + a])
            forecasts.append(res.forecasts)
        got_rows = np.concatenate(rows)
        got = np.concatenate(forecasts).reshape(len(got_rows), -1) if got_rows.size else np.zeros((0, bundle.outputs))
        ref_rows, ref_out, ref_states = reference.run(ticks)
        by_origin = np.argsort(got_rows, kind="stable")
        np.testing.assert_array_equal(got_rows[by_origin], ref_rows)
        assert got.shape[1] == bundle.outputs
        np.testing.assert_allclose(in_target_units(bundle, got[by_origin]), ref_out, rtol=1e-5, atol=1e-5)
        assert len(fc.state) == len(ref_states)
        for instrument, vectors in ref_states.items():
            row = int(fc.state.lookup(0, [instrument])[0])
            assert len(vectors) == len(bundle.shape.vectors)
            for (column, _), want in zip(bundle.shape.vectors, vectors):
                np.testing.assert_allclose(fc.state.vector(column)[row], want, rtol=1e-5, atol=1e-6)

    check()


def test_forecasts_have_one_column_per_output_and_one_dimension_for_one_output(tmp_path_factory):
    k3, _ = served("lstm_layernorm_gru_k3", tmp_path_factory)
    k1, _ = served("gru", tmp_path_factory)
    ticks = generate_ticks(3, 40, seed=2, bad_fraction=0.0)
    assert Forecaster(k3).step(ticks).forecasts.shape[1:] == (3,)
    assert Forecaster(k1).step(ticks).forecasts.ndim == 1


def test_sequence_to_one_model_forecasts_what_keras_gives_for_each_prefix(tmp_path):
    """return_sequences=False on the last recurrent layer: the forecast after a tick is the model's output
    for the instrument's sequence up to that tick."""
    model = build("sequence_to_one", seed=3)
    bundle, _ = bundled(model, tmp_path)
    ticks = generate_ticks(3, 30, seed=4, bad_fraction=0.0)
    seq = sequences_from_table(ticks, bundle.feature_spec.names)
    x = bundle.model_inputs(seq.raw_features)
    fc = Forecaster(bundle)
    res = fc.step(ticks)
    got = np.empty((len(seq.order), bundle.outputs))
    position = {row: i for i, row in enumerate(seq.order.tolist())}
    for row, f in zip(res.rows.tolist(), in_target_units(bundle, res.forecasts)):
        got[position[row]] = f
    bounds = np.append(seq.group_starts, len(seq.order))
    for g in range(len(seq.group_starts)):
        for end in range(bounds[g] + 1, bounds[g + 1] + 1):
            want = np.asarray(model(x[None, bounds[g]:end], training=False))[0]
            np.testing.assert_allclose(got[end - 1], want, rtol=1e-5, atol=1e-5)
