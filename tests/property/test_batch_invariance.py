"""Batch invariance: forecasts and final states do not depend on batching or interleaving.

Reference: each instrument's sequence stepped alone through the trained Keras
model (``KerasReference``). The operator sees the same ticks in random
micro-batches and random interleavings of instruments.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.forecaster import Forecaster
from tests.support.bundles import in_target_units
from tests.support.strategies import SETTINGS, splits, tick_streams


def run_in_batches(bundle, ticks: pa.Table, bounds) -> tuple[np.ndarray, np.ndarray, Forecaster]:
    fc = Forecaster(bundle)
    rows, forecasts = [], []
    for a, b in bounds:
        res = fc.step(ticks.slice(a, b - a))
        rows.append(res.rows + a)
        forecasts.append(res.forecasts)
    return np.concatenate(rows), np.concatenate(forecasts), fc


def assert_matches_reference(bundle, ref, ticks, bounds):
    rows, forecasts, fc = run_in_batches(bundle, ticks, bounds)
    ref_rows, ref_forecasts, ref_states = ref.run(ticks)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(in_target_units(bundle, forecasts), in_target_units(bundle, ref_forecasts),
                               rtol=1e-5, atol=1e-5)
    st = fc.state
    assert len(st) == len(ref_states)
    for name, states in ref_states.items():
        row = int(st.lookup(0, [name])[0])
        for layer in range(bundle.shape.layers):
            np.testing.assert_allclose(st.h(layer)[row], states[2 * layer], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(st.c(layer)[row], states[2 * layer + 1], rtol=1e-5, atol=1e-6)




@SETTINGS
@given(data=st.data())
def test_forecasts_and_states_match_each_instrument_alone(bundle, reference, data):
    ticks = data.draw(tick_streams())
    bounds = data.draw(splits(ticks.num_rows))
    assert_matches_reference(bundle, reference, ticks, bounds)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_two_layer_model_is_batch_invariant(bundle2, reference2, data):
    ticks = data.draw(tick_streams(max_ticks=80))
    bounds = data.draw(splits(ticks.num_rows))
    assert_matches_reference(bundle2, reference2, ticks, bounds)


@SETTINGS
@given(data=st.data())
def test_interleaving_and_batching_do_not_change_any_instruments_forecasts(bundle, data):
    """Same per-instrument sequences, merged in another order and cut elsewhere."""
    a, b = _merged_elsewhere(bundle, data)
    np.testing.assert_allclose(in_target_units(bundle, b), in_target_units(bundle, a), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(data=st.data())
def test_the_compiled_loop_gives_the_same_forecasts_to_the_bit_however_ticks_are_batched(bundle, bundle2, data):
    """On the compiled path every product is formed row by row (operators.compiled): another merge
    and other batch boundaries give the same float64 forecasts exactly, for one and two layers."""
    model = bundle2 if data.draw(st.booleans()) else bundle
    assert Forecaster(model).kernel.compiled, Forecaster(model).kernel.why_not_compiled
    a, b = _merged_elsewhere(model, data)
    np.testing.assert_array_equal(b, a)


def _merged_elsewhere(bundle, data) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts of a random tick stream, and of the same per-instrument sequences merged in another
    order and cut into other batches, both in the first stream's order."""
    ticks = data.draw(tick_streams())
    n = ticks.num_rows
    rnd = data.draw(st.randoms(use_true_random=False))
    inst = ticks.column("instrument").to_pylist()
    # A random merge that keeps each instrument's own order: shuffle the
    # positions, then hand each instrument's positions back to its ticks in order.
    perm = np.array(sorted(range(n), key=lambda _: rnd.random()), dtype=np.int64)
    order_in_merge = np.empty(n, dtype=np.int64)
    for name in set(inst):
        idx = np.array([i for i, s in enumerate(inst) if s == name])
        slots = np.sort(np.flatnonzero(np.isin(perm, idx)))
        order_in_merge[slots] = idx
    other = ticks.take(pa.array(order_in_merge, pa.int64()))
    # Event times travel with the ticks; per-instrument order is unchanged, so no tick is "late".
    a_rows, a_fc, _ = run_in_batches(bundle, ticks, data.draw(splits(n)))
    b_rows, b_fc, _ = run_in_batches(bundle, other, data.draw(splits(n)))
    by_origin = np.empty(n)
    by_origin[a_rows] = a_fc
    mapped = np.empty(n)
    mapped[order_in_merge[b_rows]] = b_fc
    return by_origin[a_rows], mapped[a_rows]
