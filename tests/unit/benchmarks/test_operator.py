"""The benchmark's bucketed-Keras peer computes what the operator computes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.peers import BucketedKeras, check_peer
from benchmarks.workload import bench_bundle, tick_batches, warm_table


@pytest.mark.parametrize("layers", [1, 2])
def test_bucketed_keras_peer_gives_the_operators_forecasts(layers):
    assert check_peer(bench_bundle(layers), n_instruments=12, n_batches=3, batch_ticks=200) < 1e-4


def test_bucketed_keras_peer_keeps_state_per_instrument_across_batches():
    # Without the scatter back, a second batch would start from zero state and differ.
    bundle = bench_bundle(1)
    batches = tick_batches(5, "uniform", 2, 50, seed=3)
    carried, fresh = BucketedKeras(bundle), BucketedKeras(bundle)
    for peer in (carried, fresh):
        peer.step(warm_table(5))
    carried.step(batches[0])
    assert not np.allclose(carried.step(batches[1]), fresh.step(batches[1]))


def test_gru_case_measures_a_gru_and_the_same_size_lstm_over_the_same_batches():
    from benchmarks.operator import _recurrent_bundle, measure_gru_vs_lstm

    gru, lstm = _recurrent_bundle("gru", 8), _recurrent_bundle("lstm", 8)
    assert gru.shape.cells == (("gru", 8),) and lstm.shape.cells == (("lstm", 8),)
    (row,) = measure_gru_vs_lstm([20], batch_ticks=100, rounds=1, batches_per_round=1, hidden=8)
    assert row["instruments"] == 20 and row["gru_ticks_per_second"] > 0 and row["lstm_ticks_per_second"] > 0
    assert row["lstm_over_gru"] == round(row["lstm_ticks_per_second"] / row["gru_ticks_per_second"], 2)
