"""`tickcast bench operator`, custom-model case: models brought with `tickcast bundle --keras`.

Two chains of hidden size 32, each served by the engine ``auto`` picks, over the same micro-batches:
- *keras engine*: LSTM -> Dense(gelu) -> GRU -> Dense(1); the kernel lacks gelu, so the Keras engine
  (:mod:`operators.keras_engine`) steps it;
- *kernel*: LSTM -> LayerNormalization -> GRU -> Dense(3), which the NumPy kernel computes.

Each against the same two baselines as the built-in model: the bucketed-Keras peer
(:class:`BucketedChain`: what a capable TensorFlow user writes for such a chain, as
:class:`benchmarks.peers.BucketedKeras` does for the stacked LSTM), alternating round by round, best
round each, checked to give the operator's forecasts first; and one eager Keras cell (or layer) call per
tick and layer with each instrument's state in a dict.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.peers import BucketedKeras
from benchmarks.workload import tick_batches, warm_table
from operators.bundle import Bundle, load_bundle, save_bundle
from operators.features import FEATURE_NAMES
from operators.forecaster import Forecaster
from operators.layers import Recurrent

HIDDEN = 32
CHAINS = {"keras engine": "lstm_gelu_gru", "kernel": "lstm_layernorm_gru_k3"}


def _model(name: str, hidden: int):
    from operators.bundle import _keras  # noqa: PLC0415

    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(7)
    body = {"lstm_gelu_gru": [L.LSTM(hidden, return_sequences=True), L.Dense(hidden, activation="gelu"),
                              L.GRU(hidden, return_sequences=True), L.Dense(1)],
            "lstm_layernorm_gru_k3": [L.LSTM(hidden, return_sequences=True), L.LayerNormalization(),
                                      L.GRU(hidden, return_sequences=True), L.Dense(3)]}[name]
    return keras.Sequential([keras.Input((None, len(FEATURE_NAMES))), *body])


def custom_bundle(name: str, folder: Path, hidden: int = HIDDEN) -> Bundle:
    """The chain saved as a .keras file and bundled as `tickcast bundle --keras` does, loaded with Keras."""
    from operators.bundle_from_keras import bundle_keras_model  # noqa: PLC0415

    model_file = folder / f"{name}.keras"
    _model(name, hidden).save(model_file)
    ticks = pa.concat_tables(tick_batches(50, "uniform", 2, 2_000, seed=1))
    save_bundle(bundle_keras_model(model_file, list(FEATURE_NAMES), ticks, horizon=10), folder / name,
                model_file=model_file)
    return load_bundle(folder / name, with_keras=True)


class BucketedChain(BucketedKeras):
    """The bucketed-Keras peer for any chain: the user's layers with recurrent copies that take and return
    their states, one ``tf.function`` call per bucket of instruments with the same tick count."""

    def __init__(self, bundle: Bundle, capacity: int = 1024):
        import tensorflow as tf  # noqa: PLC0415

        from operators.bundle import _keras  # noqa: PLC0415

        keras = _keras()
        stack, source = bundle.stack, bundle.keras_model
        x_in = keras.Input((None, stack.n_inputs))
        s_in = [keras.Input((w,)) for _, w in stack.state_vectors]
        x, finals, k = x_in, [], 0
        for layer in stack.layers:
            user = source.get_layer(layer.name)
            if isinstance(layer, Recurrent):
                rnn = user.__class__.from_config(user.get_config() | {"return_state": True, "name": f"peer_{k}"})
                n = len(layer.state_names)
                x, *final = rnn(x, initial_state=s_in[k: k + n])
                rnn.set_weights(user.get_weights())
                finals += final
                k += n
            else:
                x = user(x)
        model = keras.Model([x_in, *s_in], [x, *finals])
        spec = [tf.TensorSpec([None, None, stack.n_inputs], tf.float32)]
        spec += [tf.TensorSpec([None, w], tf.float32) for _, w in stack.state_vectors]

        @tf.function(input_signature=spec)
        def call(x, *states):
            return model([x, *states], training=False)

        self._call, self.bundle, self.outputs = call, bundle, stack.outputs
        self.index: dict[str, int] = {}
        # BucketedKeras's row bookkeeping (_rows) grows h and c; here h holds every state vector, c none.
        self.h = [np.zeros((capacity, w), np.float32) for _, w in stack.state_vectors]
        self.c, self.layers = [], len(self.h)
        self.last_price = np.full(capacity, np.nan)
        self.last_ts = np.zeros(capacity, np.int64)
        self.tick_count = np.zeros(capacity, np.int64)
        self.model_seconds = 0.0

    def _bucket(self, x: np.ndarray, rows: np.ndarray, ticks: np.ndarray, y: np.ndarray) -> None:
        started = time.perf_counter()
        out = [np.asarray(o) for o in self._call(x[ticks], *[s[rows] for s in self.h])]
        self.model_seconds += time.perf_counter() - started
        y[ticks] = out[0]
        for s, new in zip(self.h, out[1:]):
            s[rows] = new


def _peer_forecasts(peer: BucketedChain, batch: pa.Table) -> np.ndarray:
    """The peer's step for K outputs: BucketedKeras.step with the chain's call per bucket."""
    import pyarrow.compute as pc  # noqa: PLC0415

    from operators.features import FeatureInputs, compute_features, previous_within_groups  # noqa: PLC0415

    enc = pc.dictionary_encode(batch.column("instrument").combine_chunks())
    codes = enc.indices.to_numpy()
    rows_of_code = peer._rows(enc.dictionary.to_pylist())
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.diff(codes[order], prepend=-1))
    lengths = np.diff(np.append(starts, len(order)))
    rows = rows_of_code[codes[order[starts]]]
    price, ts = batch.column("price").to_numpy()[order], batch.column("ts").to_numpy()[order]
    size = batch.column("size").to_numpy()[order]
    has_prev = np.ones(len(order), dtype=bool)
    has_prev[starts] = peer.tick_count[rows] > 0
    nan = np.full(len(order), np.nan)
    x = peer.bundle.normalisation.apply(compute_features(FEATURE_NAMES, FeatureInputs(
        price, ts, size, nan, nan, nan, nan, starts, has_prev,
        previous_within_groups(price, starts, peer.last_price[rows]),
        previous_within_groups(ts, starts, peer.last_ts[rows]))))
    y = np.empty((len(order), peer.outputs), np.float32)
    by_length = np.argsort(lengths, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths[by_length], prepend=-1))
    for lo, hi in zip(bounds.tolist(), [*bounds[1:].tolist(), len(by_length)]):
        groups = by_length[lo:hi]
        peer._bucket(x, rows[groups], starts[groups][:, None] + np.arange(int(lengths[groups[0]])), y)
    ends = starts + lengths - 1
    peer.last_price[rows], peer.last_ts[rows] = price[ends], ts[ends]
    peer.tick_count[rows] += lengths
    norm = peer.bundle.normalisation
    forecast = np.empty((len(order), peer.outputs))
    forecast[order] = y.astype(np.float64) * norm.target_std + norm.target_mean
    return forecast


def keras_cell_ticks_per_second(bundle: Bundle, batch: pa.Table, n_ticks: int) -> float:
    """One eager Keras call per tick and layer (recurrent layers through their cell), state in a dict."""
    from operators.training import sequences_from_table  # noqa: PLC0415

    seq = sequences_from_table(batch.slice(0, n_ticks), bundle.feature_spec.names)
    x = bundle.model_inputs(seq.raw_features)
    x_rows = np.empty_like(x)
    x_rows[seq.order] = x
    names = batch.column("instrument").to_pylist()[:n_ticks]
    plan = [(isinstance(layer, Recurrent), bundle.keras_model.get_layer(layer.name)) for layer in bundle.stack.layers]
    zeros = [[np.zeros((1, w), np.float32) for w in (layer.units,) * len(layer.state_names)]
             for layer in bundle.stack.recurrent]
    state: dict[str, list] = {}

    def one(i: int) -> None:
        held = state.get(names[i]) or zeros
        inp, new, k = x_rows[i: i + 1], [], 0
        for recurrent, layer in plan:
            if recurrent:
                inp, s = layer.cell(inp, held[k], training=False)
                new.append(s if isinstance(s, (list, tuple)) else [s])
                k += 1
            else:
                inp = layer(inp, training=False)
        state[names[i]] = new
        np.asarray(inp)

    for i in range(min(5, n_ticks)):
        one(i)
    state.clear()
    started = time.perf_counter()
    for i in range(n_ticks):
        one(i)
    return n_ticks / (time.perf_counter() - started)


def measure_custom_models(n_instruments: int, batch_ticks: int, rounds: int, batches_per_round: int,
                          cell_ticks: int, printer=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, name in CHAINS.items():
            bundle = custom_bundle(name, Path(tmp))
            batches = tick_batches(n_instruments, "uniform", 1 + rounds * batches_per_round, batch_ticks, seed=11)
            fc, peer = Forecaster(bundle), BucketedChain(bundle, capacity=n_instruments)
            warm = warm_table(n_instruments)
            fc.step(warm)
            _peer_forecasts(peer, warm)
            mine, theirs = fc.step(batches[0]), _peer_forecasts(peer, batches[0])
            got = mine.forecasts.reshape(len(mine.rows), -1)
            scale = float(np.max(bundle.normalisation.target_std))
            np.testing.assert_allclose(theirs, got, rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"bucketed-Keras peer disagrees with the operator ({label})")
            best_op = best_peer = float("inf")
            for r in range(rounds):
                chunk = batches[1 + r * batches_per_round: 1 + (r + 1) * batches_per_round]
                t0 = time.perf_counter()
                for b in chunk:
                    fc.step(b)
                best_op = min(best_op, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for b in chunk:
                    _peer_forecasts(peer, b)
                best_peer = min(best_peer, time.perf_counter() - t0)
            ticks = batches_per_round * batch_ticks
            cell = keras_cell_ticks_per_second(bundle, batches[0], cell_ticks)
            op, pr = ticks / best_op, ticks / best_peer
            row = {"chain": " -> ".join(layer["kind"] if layer["kind"] != "keras" else
                                        f"{layer['class_name']}({layer['config'].get('activation', '')})"
                                        for layer in bundle.stack.describe()),
                   "case": label, "engine": fc.engine.engine, "instruments": n_instruments, "hidden": HIDDEN,
                   "outputs": bundle.outputs, "batch_ticks": batch_ticks,
                   "operator_ticks_per_second": round(op, 1), "peer_ticks_per_second": round(pr, 1),
                   "operator_over_peer": round(op / pr, 2), "keras_cell_ticks_per_second": round(cell, 1),
                   "speedup_vs_keras_cell": round(op / cell, 1), "rounds": rounds,
                   "batches_per_round": batches_per_round}
            rows.append(row)
            printer(f"custom model, {label} (engine {fc.engine.engine}): {row['chain']}, "
                    f"{n_instruments:,} instruments: "
                    f"operator {op:,.0f} t/s, bucketed-Keras peer {pr:,.0f} t/s (ratio {row['operator_over_peer']}), "
                    f"Keras cell per tick {cell:,.0f} t/s (speed-up {row['speedup_vs_keras_cell']}x)")
    return rows
