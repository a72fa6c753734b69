"""The bucketed peers of ``tickcast bench operator``: what a capable engineer writes instead of the operator.

:class:`BucketedPeer` holds what every bucketed peer shares: per micro-batch, group ticks by instrument
(arrival order kept), compute the same features (``operators.features``, the project's one feature
function), bucket instruments by their tick count k in the batch, run each bucket's (instruments, k,
features) tensor with the gathered initial states through the model in one call, and scatter the final
states back. Exact for ragged batches without masking. State lives in NumPy arrays with a dict index, as
the operator's used to. No validation (the benchmark's ticks are clean). Subclasses say only how one
bucket runs: :class:`BucketedKeras` (a ``tf.function``-wrapped Keras stack) here,
:class:`benchmarks.onnx_peer.BucketedOnnx` (one ONNX Runtime session run).
"""

from __future__ import annotations

import time
from itertools import repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.workload import tick_batches, warm_table
from operators.bundle import Bundle
from operators.features import FEATURE_NAMES, N_FEATURES, FeatureInputs, compute_features, previous_within_groups
from operators.forecaster import Forecaster


class BucketedPeer:
    """Grouping, features, buckets and per-instrument state of a bucketed peer; :meth:`run_bucket` is the model.

    ``step`` returns the forecast of every tick in batch row order, and counts the seconds spent in the
    model calls alone (``model_seconds``: the bucket tensors in, the numbers out) apart from the whole step.
    """

    def __init__(self, bundle: Bundle, capacity: int = 1024):
        layers, hidden = bundle.shape.layers, bundle.shape.hidden
        self.bundle = bundle
        self.layers, self.hidden = layers, hidden
        self.index: dict[str, int] = {}
        self.h = [np.zeros((capacity, hidden), np.float32) for _ in range(layers)]
        self.c = [np.zeros((capacity, hidden), np.float32) for _ in range(layers)]
        self.last_price = np.full(capacity, np.nan)
        self.last_ts = np.zeros(capacity, np.int64)
        self.tick_count = np.zeros(capacity, np.int64)
        self.model_seconds = 0.0

    def run_bucket(self, x: np.ndarray, h: list[np.ndarray],
                   c: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """x (n, k, features) float32, h and c (n, hidden) per layer -> (y (n, k), final h, final c per layer)."""
        raise NotImplementedError

    def _rows(self, names: list[str]) -> np.ndarray:
        index = self.index
        rows = np.fromiter(map(index.get, names, repeat(-1)), dtype=np.int64, count=len(names))
        new = np.flatnonzero(rows < 0)
        if len(new):
            start = len(index)
            need = start + len(new)
            if need > len(self.last_ts):
                cap = max(need, 2 * len(self.last_ts))
                grow = lambda a, fill: np.concatenate([a, np.full((cap - len(a),) + a.shape[1:], fill, a.dtype)])  # noqa: E731
                self.h = [grow(a, 0) for a in self.h]
                self.c = [grow(a, 0) for a in self.c]
                self.last_price = grow(self.last_price, np.nan)
                self.last_ts = grow(self.last_ts, 0)
                self.tick_count = grow(self.tick_count, 0)
            for i, r in zip(new.tolist(), range(start, need)):
                index[names[i]] = r
            rows[new] = np.arange(start, need)
        return rows

    def step(self, batch: pa.Table) -> np.ndarray:
        enc = pc.dictionary_encode(batch.column("instrument").combine_chunks())
        codes = enc.indices.to_numpy()
        rows_of_code = self._rows(enc.dictionary.to_pylist())
        order = np.argsort(codes, kind="stable")
        starts = np.flatnonzero(np.diff(codes[order], prepend=-1))
        lengths = np.diff(np.append(starts, len(order)))
        rows = rows_of_code[codes[order[starts]]]
        price = batch.column("price").to_numpy()[order]
        ts = batch.column("ts").to_numpy()[order]
        size = batch.column("size").to_numpy()[order]
        prev_price = previous_within_groups(price, starts, self.last_price[rows])
        prev_ts = previous_within_groups(ts, starts, self.last_ts[rows])
        has_prev = np.ones(len(order), dtype=bool)
        has_prev[starts] = self.tick_count[rows] > 0
        nan = np.full(len(order), np.nan)
        x = self.bundle.normalisation.apply(compute_features(FEATURE_NAMES, FeatureInputs(
            price, ts, size, nan, nan, nan, nan, starts, has_prev, prev_price, prev_ts)))
        y = np.empty(len(order), np.float32)
        by_length = np.argsort(lengths, kind="stable")
        bounds = np.flatnonzero(np.diff(lengths[by_length], prepend=-1))
        for lo, hi in zip(bounds.tolist(), [*bounds[1:].tolist(), len(by_length)]):
            groups = by_length[lo:hi]
            k = int(lengths[groups[0]])
            ticks = starts[groups][:, None] + np.arange(k)
            r = rows[groups]
            started = time.perf_counter()
            out, h, c = self.run_bucket(x[ticks], [a[r] for a in self.h], [a[r] for a in self.c])
            self.model_seconds += time.perf_counter() - started
            y[ticks] = out
            for layer in range(self.layers):
                self.h[layer][r] = h[layer]
                self.c[layer][r] = c[layer]
        ends = starts + lengths - 1
        self.last_price[rows] = price[ends]
        self.last_ts[rows] = ts[ends]
        self.tick_count[rows] += lengths
        norm = self.bundle.normalisation
        forecast = np.empty(len(order))
        forecast[order] = y.astype(np.float64) * norm.target_std + norm.target_mean
        return forecast


class BucketedKeras(BucketedPeer):
    """The strongest plain-TensorFlow peer: each bucket is one call of a ``tf.function``-wrapped Keras
    ``LSTM(return_sequences=True, return_state=True)`` stack + ``Dense`` head (the operator's weights). The
    function has a fixed input signature with free batch and time dimensions, so it is traced once and never
    retraced."""

    def __init__(self, bundle: Bundle, capacity: int = 1024):
        super().__init__(bundle, capacity)
        import tensorflow as tf  # noqa: PLC0415

        from operators.bundle import _keras  # noqa: PLC0415

        keras = _keras()
        layers, hidden = self.layers, self.hidden
        x_in = keras.Input(shape=(None, N_FEATURES))
        h_in = [keras.Input(shape=(hidden,)) for _ in range(layers)]
        c_in = [keras.Input(shape=(hidden,)) for _ in range(layers)]
        x, h_out, c_out = x_in, [], []
        for layer in range(layers):
            lstm = keras.layers.LSTM(hidden, return_sequences=True, return_state=True, name=f"lstm_{layer}")
            x, h, c = lstm(x, initial_state=[h_in[layer], c_in[layer]])
            lstm.set_weights(bundle.keras_model.get_layer(f"lstm_{layer}").get_weights())
            h_out.append(h)
            c_out.append(c)
        head = keras.layers.Dense(1, name="forecast")
        y = head(x)
        head.set_weights(bundle.keras_model.get_layer("forecast").get_weights())
        model = keras.Model([x_in, *h_in, *c_in], [y, *h_out, *c_out])
        spec = [tf.TensorSpec([None, None, N_FEATURES], tf.float32)]
        spec += [tf.TensorSpec([None, hidden], tf.float32)] * (2 * layers)

        @tf.function(input_signature=spec)
        def call(x, *hc):
            return model([x, *hc], training=False)

        self._call = call

    def run_bucket(self, x, h, c):
        out = [np.asarray(o) for o in self._call(x, *h, *c)]
        return out[0][:, :, 0], out[1:1 + self.layers], out[1 + self.layers:]


def check_peer(bundle: Bundle, n_instruments: int = 40, n_batches: int = 4, batch_ticks: int = 600,
               peer: type[BucketedPeer] = BucketedKeras, **options) -> float:
    """The peer's forecasts equal the operator's on a small Zipf stream; returns the largest gap in target
    standard deviations. ``options`` go to the peer's constructor.

    Raises AssertionError if any forecast differs by more than float32 rounding.
    """
    batches = tick_batches(n_instruments, "zipf", n_batches, batch_ticks, seed=7)
    fc, other = Forecaster(bundle), peer(bundle, **options)
    warm = warm_table(n_instruments)
    fc.step(warm)
    other.step(warm)
    worst = 0.0
    scale = bundle.normalisation.target_std
    for b in batches:
        res = fc.step(b)
        assert np.array_equal(res.rows, np.arange(b.num_rows)), "benchmark ticks must all be valid"
        mine = other.step(b)
        gap = np.abs(mine - res.forecasts) / scale
        np.testing.assert_allclose(mine, res.forecasts, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f"{peer.__name__} peer disagrees with the operator")
        worst = max(worst, float(gap.max()))
    return worst
