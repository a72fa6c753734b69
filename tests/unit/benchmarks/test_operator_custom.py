"""The custom-model case of `tickcast bench operator`: each chain served by the engine auto picks, its
bucketed-Keras peer checked to give the operator's forecasts before anything is timed."""

from __future__ import annotations

import numpy as np

from benchmarks.workload import tick_batches, warm_table
from benchmarks.operator_custom import BucketedChain, _peer_forecasts, custom_bundle, measure_custom_models


def test_each_custom_chain_runs_on_its_engine_against_both_baselines():
    rows = measure_custom_models(12, batch_ticks=120, rounds=1, batches_per_round=1, cell_ticks=8,
                                 printer=lambda _: None)
    assert [(r["case"], r["engine"], r["outputs"]) for r in rows] == [("keras engine", "keras", 1),
                                                                      ("kernel", "kernel", 3)]
    for r in rows:
        assert r["operator_ticks_per_second"] > 0 and r["peer_ticks_per_second"] > 0
        assert r["keras_cell_ticks_per_second"] > 0


def test_the_chain_peer_keeps_state_per_instrument_across_batches(tmp_path):
    bundle = custom_bundle("lstm_gelu_gru", tmp_path, hidden=4)
    batches = tick_batches(5, "uniform", 2, 50, seed=3)
    carried, fresh = BucketedChain(bundle, capacity=2), BucketedChain(bundle, capacity=2)  # rows grow
    for peer in (carried, fresh):
        _peer_forecasts(peer, warm_table(5))
    _peer_forecasts(carried, batches[0])
    assert not np.allclose(_peer_forecasts(carried, batches[1]), _peer_forecasts(fresh, batches[1]))
