"""The benchmark's bucketed-Keras peer computes what the operator computes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.operator import BucketedKeras, _bundle, _stream, _warm_table, check_peer


@pytest.mark.parametrize("layers", [1, 2])
def test_bucketed_keras_peer_gives_the_operators_forecasts(layers):
    assert check_peer(_bundle(layers), n_instruments=12, n_batches=3, batch_ticks=200) < 1e-4


def test_bucketed_keras_peer_keeps_state_per_instrument_across_batches():
    # Without the scatter back, a second batch would start from zero state and differ.
    bundle = _bundle(1)
    batches = _stream(5, "uniform", 2, 50, seed=3)
    carried, fresh = BucketedKeras(bundle), BucketedKeras(bundle)
    for peer in (carried, fresh):
        peer.step(_warm_table(5))
    carried.step(batches[0])
    assert not np.allclose(carried.step(batches[1]), fresh.step(batches[1]))
