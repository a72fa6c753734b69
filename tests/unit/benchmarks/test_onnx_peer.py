"""The bucketed ONNX Runtime peer of `tickcast bench operator` computes what the operator computes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX Runtime peer needs the bench extra: pip install -e '.[bench]'")
pytest.importorskip("onnx", reason="the ONNX Runtime peer needs the bench extra: pip install -e '.[bench]'")

from benchmarks.onnx_peer import BucketedOnnx, lstm_graph, onnx_gates, session  # noqa: E402
from benchmarks.peers import check_peer  # noqa: E402
from benchmarks.workload import bench_bundle, tick_batches, warm_table  # noqa: E402


@pytest.mark.parametrize("layers, hidden, threads", [(1, 8, 1), (2, 6, 1), (1, 8, 2)])
def test_onnx_peer_gives_the_operators_forecasts(layers, hidden, threads):
    # check_peer raises when any forecast differs from the operator's by more than float32 rounding
    gap = check_peer(bench_bundle(layers, hidden), n_instruments=12, n_batches=3, batch_ticks=200, peer=BucketedOnnx,
                     threads=threads)
    assert gap < 1e-4


def test_onnx_peer_keeps_state_per_instrument_across_batches():
    # Two peers that differ only in h and c (the carried one has stepped a batch, the other has zeros
    # with the same previous ticks): without the scatter back of Y_h/Y_c their next forecasts would agree.
    bundle = bench_bundle(1, 8)
    batches = tick_batches(5, "zipf", 2, 60, seed=3)
    carried, fresh = BucketedOnnx(bundle, capacity=2), BucketedOnnx(bundle, capacity=2)  # rows grow
    carried.step(warm_table(5))
    carried.step(batches[0])
    fresh.index = dict(carried.index)
    fresh.last_price, fresh.last_ts = carried.last_price.copy(), carried.last_ts.copy()
    fresh.tick_count = carried.tick_count.copy()
    fresh.h, fresh.c = [np.zeros_like(a) for a in carried.h], [np.zeros_like(a) for a in carried.c]
    assert not np.allclose(carried.step(batches[1]), fresh.step(batches[1]))


def test_keras_gate_blocks_go_to_onnx_order():
    h = 2
    keras = np.repeat(np.array([[1.0, 2.0, 3.0, 4.0]]), h, axis=1)  # i, f, c, o blocks of width 2
    assert onnx_gates(keras, h).tolist() == [[1.0, 1.0, 4.0, 4.0, 2.0, 2.0, 3.0, 3.0]]  # i, o, f, c


def test_the_graph_takes_and_returns_every_layers_state():
    bundle = bench_bundle(2, 4)
    model = lstm_graph(bundle.weights)
    assert [i.name for i in model.graph.input] == ["x", "h0", "c0", "h1", "c1"]
    assert [o.name for o in model.graph.output] == ["y", "h0_out", "c0_out", "h1_out", "c1_out"]
    assert [n.op_type for n in model.graph.node] == ["Transpose", "LSTM", "Squeeze", "LSTM", "Squeeze", "MatMul", "Add"]
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((3, 5, bundle.weights.n_inputs), dtype=np.float32)}
    feed.update({f"{v}{l}": np.zeros((1, 3, 4), np.float32) for l in range(2) for v in "hc"})
    y, *states = session(model).run(None, feed)
    assert y.shape == (5, 3, 1) and all(s.shape == (1, 3, 4) for s in states)
