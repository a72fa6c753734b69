"""`tickcast bench operator`: the operator against three baselines, measured in one run.

For 10, 1k, 10k, 100k and 1M instruments, uniform and Zipf-skewed (s = 1.1) activity,
hidden size 64, 1 and 2 layers:
1. the operator (``Forecaster.step`` on micro-batches of Arrow ticks: validation,
   grouping, features, gather, ragged LSTM, scatter), ticks/s;
2. the strongest plain-TensorFlow peer, bucketed Keras (:class:`BucketedKeras`),
   over the same batches, alternating with the operator round by round (8 rounds of
   2 batches; best round of each, the median of the per-round ratios, CPU time); its whole
   step and its LSTM + Dense calls alone, ticks/s; checked to give the operator's
   forecasts before anything is timed;
3. the naive correct approach: one Keras ``LSTMCell`` call per tick, with each
   instrument's state kept in a dict, ticks/s;
4. the machine's limit for the same arithmetic: one NumPy/BLAS GEMM of the
   LSTM's gates ``[x, h] @ W`` over all ticks of a batch, per layer, rows/s.
State memory is reported per instrument at 1M instruments (hidden 64, 1 layer).
Then a GRU of the same size (Keras' default GRU, as a model brought with
``tickcast bundle --keras`` would have) against the 1-layer LSTM, operator ticks/s of
each over the same batches, alternating round by round, best round each. Last, two
custom models brought with ``tickcast bundle --keras``, one served by the Keras engine
and one by the kernel, each against the bucketed-Keras peer and the per-tick Keras cell
(:mod:`benchmarks.operator_custom`).
"""

from __future__ import annotations

import gc
import os
import resource
import time
from itertools import repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.features import (FEATURE_NAMES, N_FEATURES, FeatureInputs, FeatureSpec, Normalisation,
                                 compute_features, previous_within_groups)
from operators.forecaster import Forecaster
from operators.bundle import Bundle, shape_of, weights_from_keras
from operators.layers import PerTick, Recurrent, Stack
from operators.training import build_keras_model
from operators.state import StateShape, StateTable

HIDDEN = 64
T0 = 1_767_225_600_000_000_000


def _bundle(layers: int, hidden: int = HIDDEN) -> Bundle:
    model = build_keras_model(N_FEATURES, layers, hidden, seed=layers)
    norm = Normalisation(np.zeros(N_FEATURES), np.ones(N_FEATURES), 0.0, 1e-3)
    return Bundle(None, f"bench-{layers}x{hidden}", FeatureSpec(), norm, 10, StateShape(layers, hidden),
                  weights_from_keras(model, layers), {}, model)


def _stream(n_instruments: int, activity: str, n_batches: int, batch_ticks: int, seed: int = 0) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    names = np.array([f"I{i:07d}" for i in range(n_instruments)])
    if activity == "zipf":
        w = 1.0 / np.arange(1, n_instruments + 1) ** 1.1
        p = w / w.sum()
    else:
        p = None
    batches = []
    ts = T0
    for _ in range(n_batches):
        inst = rng.choice(n_instruments, size=batch_ticks, p=p)
        price = 100.0 * np.exp(rng.normal(0, 1e-3, batch_ticks))
        t = ts + np.arange(batch_ticks, dtype=np.int64) * 1000
        ts = int(t[-1]) + 1000
        batches.append(pa.table({
            "instrument": pa.array(names[inst]),
            "ts": pa.array(t, pa.int64()),
            "price": pa.array(price),
            "size": pa.array(rng.integers(1, 1000, batch_ticks).astype(np.float64)),
        }))
    return batches


class BucketedKeras:
    """The strongest plain-TensorFlow peer: bucketed Keras over gathered state rows.

    What a capable TensorFlow user writes instead of this project's operator. Per
    micro-batch: group ticks by instrument (arrival order kept), compute the same
    features (``operators.features``, the project's one feature function), bucket
    instruments by their tick count k in the batch, and call, per bucket, one
    ``tf.function``-wrapped Keras ``LSTM(return_sequences=True, return_state=True)``
    stack + ``Dense`` head (the operator's weights) on a (instruments, k, features)
    tensor with the gathered initial states; then scatter the final states back.
    Exact for ragged batches without masking. State lives in NumPy arrays with a
    dict index, as the operator's used to. The function has a fixed input
    signature with free batch and time dimensions, so it is traced once and never
    retraced. No validation (the benchmark's ticks are clean).

    ``step`` returns the forecast of every tick in batch row order, and counts the
    seconds spent in the LSTM + Dense calls alone (``model_seconds``: the bucket
    tensors in, the numbers out) apart from the whole step.
    """

    def __init__(self, bundle: Bundle, capacity: int = 1024):
        import tensorflow as tf  # noqa: PLC0415

        from operators.bundle import _keras  # noqa: PLC0415

        keras = _keras()
        layers, hidden = bundle.shape.layers, bundle.shape.hidden
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
        self.bundle = bundle
        self.layers, self.hidden = layers, hidden
        self.index: dict[str, int] = {}
        self.h = [np.zeros((capacity, hidden), np.float32) for _ in range(layers)]
        self.c = [np.zeros((capacity, hidden), np.float32) for _ in range(layers)]
        self.last_price = np.full(capacity, np.nan)
        self.last_ts = np.zeros(capacity, np.int64)
        self.tick_count = np.zeros(capacity, np.int64)
        self.model_seconds = 0.0

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
            out = self._call(x[ticks], *[a[r] for a in self.h], *[a[r] for a in self.c])
            out = [np.asarray(o) for o in out]
            self.model_seconds += time.perf_counter() - started
            y[ticks] = out[0][:, :, 0]
            for layer in range(self.layers):
                self.h[layer][r] = out[1 + layer]
                self.c[layer][r] = out[1 + self.layers + layer]
        ends = starts + lengths - 1
        self.last_price[rows] = price[ends]
        self.last_ts[rows] = ts[ends]
        self.tick_count[rows] += lengths
        norm = self.bundle.normalisation
        forecast = np.empty(len(order))
        forecast[order] = y.astype(np.float64) * norm.target_std + norm.target_mean
        return forecast


def _warm_table(n_instruments: int) -> pa.Table:
    """One tick per instrument, a second before the stream: every instrument has a row and a history."""
    names = [f"I{i:07d}" for i in range(n_instruments)]
    return pa.table({
        "instrument": pa.array(names),
        "ts": pa.array(np.full(n_instruments, T0 - 1_000_000_000), pa.int64()),
        "price": pa.array(np.full(n_instruments, 100.0)),
        "size": pa.array(np.ones(n_instruments)),
    })


def check_peer(bundle: Bundle, n_instruments: int = 40, n_batches: int = 4, batch_ticks: int = 600) -> float:
    """The peer's forecasts equal the operator's on a small Zipf stream; returns the largest relative gap.

    Raises AssertionError if any forecast differs by more than float32 rounding.
    """
    batches = _stream(n_instruments, "zipf", n_batches, batch_ticks, seed=7)
    fc, peer = Forecaster(bundle), BucketedKeras(bundle)
    warm = _warm_table(n_instruments)
    fc.step(warm)
    peer.step(warm)
    worst = 0.0
    scale = bundle.normalisation.target_std
    for b in batches:
        res = fc.step(b)
        assert np.array_equal(res.rows, np.arange(b.num_rows)), "benchmark ticks must all be valid"
        mine = peer.step(b)
        gap = np.abs(mine - res.forecasts) / scale
        np.testing.assert_allclose(mine, res.forecasts, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg="bucketed-Keras peer disagrees with the operator")
        worst = max(worst, float(gap.max()))
    return worst


def measure_against_peer(bundle: Bundle, batches: list[pa.Table], n_instruments: int, rounds: int) -> dict:
    """Operator and peer over the same batches, alternating round by round; best round of each.

    ``batches[0]`` warms both up (not timed); the rest is cut into ``rounds`` rounds.
    In each round the operator steps the round's batches, then the peer steps the same
    batches: both see the same stream, in the same order, under the same machine load.
    Also per round: the ratio of the two sides' wall times (its median over rounds is
    ``paired_ratio``: each pair ran back to back, so a burst of load on this shared
    machine moves one pair, not the median) and the CPU time each side used (all of the
    process's threads: TensorFlow runs the peer's ops on a pool of threads, the operator
    runs on the calling thread).
    """
    fc = Forecaster(bundle)
    peer = BucketedKeras(bundle, capacity=n_instruments)
    warm = _warm_table(n_instruments)
    fc.step(warm)
    peer.step(warm)
    fc.step(batches[0])
    peer.step(batches[0])
    timed = batches[1:]
    per_round = max(len(timed) // rounds, 1)
    best_op = best_peer = best_model = float("inf")
    best_op_cpu = best_peer_cpu = float("inf")
    pairs = []
    instruments_per_batch = []
    ticks = 0
    for r in range(rounds):
        chunk = timed[r * per_round:(r + 1) * per_round]
        ticks = sum(b.num_rows for b in chunk)
        cpu, started = time.process_time(), time.perf_counter()
        for b in chunk:
            instruments_per_batch.append(fc.step(b).n_instruments)
        op = time.perf_counter() - started
        best_op_cpu = min(best_op_cpu, time.process_time() - cpu)
        model_before = peer.model_seconds
        cpu, started = time.process_time(), time.perf_counter()
        for b in chunk:
            peer.step(b)
        other = time.perf_counter() - started
        best_peer_cpu = min(best_peer_cpu, time.process_time() - cpu)
        best_op, best_peer = min(best_op, op), min(best_peer, other)
        best_model = min(best_model, peer.model_seconds - model_before)
        pairs.append(other / op)
    return {"operator_ticks_per_second": ticks / best_op,
            "peer_ticks_per_second": ticks / best_peer,
            "peer_model_only_ticks_per_second": ticks / best_model,
            "paired_ratio": float(np.median(pairs)),
            "cpu_ratio": best_peer_cpu / best_op_cpu,
            "batches_per_round": per_round, "rounds": rounds,
            "mean_instruments_per_batch": float(np.mean(instruments_per_batch))}


def measure_keras_cell(bundle: Bundle, batch: pa.Table, n_ticks: int) -> float:
    """One eager Keras LSTMCell call per tick per layer; state per instrument in a dict."""
    from operators.training import sequences_from_table  # noqa: PLC0415

    seq = sequences_from_table(batch.slice(0, n_ticks))
    x = bundle.normalisation.apply(seq.raw_features)
    x_rows = np.empty_like(x)
    x_rows[seq.order] = x
    names = batch.column("instrument").to_pylist()[:n_ticks]
    cells = [bundle.keras_model.get_layer(f"lstm_{i}").cell for i in range(bundle.shape.layers)]
    head = bundle.keras_model.get_layer("forecast")
    zero = np.zeros((1, bundle.shape.hidden), np.float32)
    state: dict[str, list] = {}

    def one(i: int) -> None:
        layers = state.get(names[i]) or [[zero, zero] for _ in cells]
        inp = x_rows[i : i + 1]
        new = []
        for cell, hc in zip(cells, layers):
            inp, hc_new = cell(inp, hc)
            new.append(hc_new)
        state[names[i]] = new
        float(np.asarray(head(inp))[0, 0])

    for i in range(min(5, n_ticks)):
        one(i)
    state.clear()
    started = time.perf_counter()
    for i in range(n_ticks):
        one(i)
    return n_ticks / (time.perf_counter() - started)


def measure_gemm_limit(batch_ticks: int, layers: int, hidden: int = HIDDEN, repeats: int = 7) -> float:
    """Rows/s of the gate GEMM [x, h] @ W over a batch's ticks, for every layer."""
    rng = np.random.default_rng(0)
    k0 = N_FEATURES + hidden
    xs = [rng.standard_normal((batch_ticks, k0 if i == 0 else 2 * hidden), dtype=np.float32) for i in range(layers)]
    ws = [rng.standard_normal((x.shape[1], 4 * hidden), dtype=np.float32) for x in xs]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for x, w in zip(xs, ws):
            x @ w
        best = min(best, time.perf_counter() - started)
    return batch_ticks / best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _recurrent_bundle(kind: str, hidden: int = HIDDEN, seed: int = 0) -> Bundle:
    """A one-layer LSTM or GRU + Dense(1), Glorot-sized random weights (no Keras needed)."""
    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3}[kind]
    bias = rng.normal(0, 0.1, (2, 3 * hidden) if kind == "gru" else (4 * hidden,)).astype(np.float32)
    layer = Recurrent(kind, kind, rng.normal(0, 0.2, (N_FEATURES, gates * hidden)).astype(np.float32),
                      rng.normal(0, 0.1, (hidden, gates * hidden)).astype(np.float32), bias)
    stack = Stack((layer, PerTick("dense", "forecast", rng.normal(0, 0.1, (hidden, 1)).astype(np.float32),
                                  np.zeros(1, np.float32))), N_FEATURES)
    norm = Normalisation(np.zeros(N_FEATURES), np.ones(N_FEATURES), 0.0, 1e-3)
    return Bundle(None, f"bench-{kind}{hidden}", FeatureSpec(), norm, 10, shape_of(stack), None, {}, None, stack)


def measure_gru_vs_lstm(instrument_counts: list[int], batch_ticks: int, rounds: int, batches_per_round: int,
                        hidden: int = HIDDEN) -> list[dict]:
    """Operator ticks/s of a GRU and the same-size LSTM over the same batches, alternating, best round each."""
    rows = []
    for n in instrument_counts:
        batches = _stream(n, "uniform", 1 + rounds * batches_per_round, batch_ticks, seed=n)
        ops = {kind: Forecaster(_recurrent_bundle(kind, hidden), state=None) for kind in ("lstm", "gru")}
        best = dict.fromkeys(ops, float("inf"))
        for fc in ops.values():
            fc.step(batches[0])
        for r in range(rounds):
            for kind, fc in ops.items():
                t0 = time.perf_counter()
                for b in batches[1 + r * batches_per_round: 1 + (r + 1) * batches_per_round]:
                    fc.step(b)
                best[kind] = min(best[kind], time.perf_counter() - t0)
        ticks = batches_per_round * batch_ticks
        lstm, gru = ticks / best["lstm"], ticks / best["gru"]
        rows.append({"instruments": n, "hidden": hidden, "lstm_ticks_per_second": round(lstm, 1),
                     "gru_ticks_per_second": round(gru, 1), "lstm_over_gru": round(lstm / gru, 2)})
    return rows


def measure_memory(n_instruments: int = 1_000_000, hidden: int = HIDDEN) -> dict:
    gc.collect()
    before = _rss_bytes()
    table = StateTable(StateShape(1, hidden), capacity=n_instruments)
    table.insert([(0, f"I{i:07d}") for i in range(n_instruments)])
    table.h(0)[:n_instruments] = 0.5  # touch every page
    table.c(0)[:n_instruments] = 0.5
    after = _rss_bytes()
    return {
        "instruments": n_instruments,
        "raw_state_bytes_per_instrument": StateShape(1, hidden).raw_bytes_per_row,
        "table_bytes_per_instrument": table.nbytes / n_instruments,
        "index_bytes_per_instrument": table.index_nbytes / n_instruments,  # hash slots, keys, identities, name pointers
        "rss_bytes_per_instrument_with_index": (after - before) / n_instruments,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run(quick: bool = False, batch_ticks: int = 10_000, printer=print, instrument_counts: list[int] | None = None,
        layer_counts: list[int] | None = None, rounds: int = 8, batches_per_round: int = 2,
        skip: tuple[tuple[int, int], ...] = (), activities: tuple[str, ...] | None = None) -> dict:
    """Every case: operator vs the bucketed-Keras peer (interleaved, best round), the per-tick
    Keras cell, and the GEMM limit. ``skip`` lists (instruments, layers) cases left out."""
    if instrument_counts is None:
        instrument_counts = [10, 1_000, 10_000, 100_000, 1_000_000] if not quick else [10, 1_000]
    layer_counts = layer_counts or [1, 2]
    if quick:
        rounds, batches_per_round = 2, 1
    n_batches = 1 + rounds * batches_per_round
    cell_ticks = 60 if quick else 300
    # Memory first: an RSS difference means little once TensorFlow and the cases have come and gone.
    memory = measure_memory(100_000 if quick else 1_000_000)
    rows = []
    printer(f"operator benchmark: hidden {HIDDEN}, micro-batches of {batch_ticks:,} ticks; operator and "
            f"bucketed-Keras peer alternate over {rounds} rounds of {batches_per_round} batches, best round each")
    header = (f"{'instruments':>11} {'activity':>8} {'layers':>6} {'inst/batch':>10} {'operator t/s':>13} "
              f"{'peer t/s':>10} {'ratio':>6} {'paired':>6} {'CPU':>6} {'peer LSTM+Dense t/s':>19} {'ratio':>6} {'keras cell t/s':>14} "
              f"{'GEMM rows/s':>12} {'% of GEMM':>9}")
    printer(header)
    for layers in layer_counts:
        bundle = _bundle(layers)
        gap = check_peer(bundle)
        printer(f"peer check ({layers} layer(s)): bucketed Keras equals the operator, largest gap "
                f"{gap:.2e} target standard deviations")
        gemm = measure_gemm_limit(batch_ticks, layers)
        for n in instrument_counts:
            if (n, layers) in skip:
                continue
            for activity in activities or ("uniform", "zipf"):
                batches = _stream(n, activity, n_batches, batch_ticks, seed=n + layers)
                m = measure_against_peer(bundle, batches, n, rounds)
                cell = measure_keras_cell(bundle, batches[0], cell_ticks)
                op = m["operator_ticks_per_second"]
                row = {
                    "instruments": n, "activity": activity, "layers": layers, "hidden": HIDDEN,
                    "batch_ticks": batch_ticks,
                    "operator_ticks_per_second": round(op, 1),
                    "peer_ticks_per_second": round(m["peer_ticks_per_second"], 1),
                    "operator_over_peer": round(op / m["peer_ticks_per_second"], 2),
                    "operator_over_peer_paired_median": round(m["paired_ratio"], 2),
                    "operator_over_peer_cpu_time": round(m["cpu_ratio"], 2),
                    "peer_model_only_ticks_per_second": round(m["peer_model_only_ticks_per_second"], 1),
                    "operator_over_peer_model_only": round(op / m["peer_model_only_ticks_per_second"], 2),
                    "keras_cell_ticks_per_second": round(cell, 1),
                    "speedup_vs_keras_cell": round(op / cell, 1),
                    "gemm_limit_rows_per_second": round(gemm, 1),
                    "fraction_of_gemm_limit": round(op / gemm, 3),
                    "mean_instruments_per_batch": round(m["mean_instruments_per_batch"], 1),
                    "rounds": rounds, "batches_per_round": m["batches_per_round"],
                }
                rows.append(row)
                printer(f"{n:>11,} {activity:>8} {layers:>6} {row['mean_instruments_per_batch']:>10,.0f} "
                        f"{op:>13,.0f} {row['peer_ticks_per_second']:>10,.0f} {row['operator_over_peer']:>6.2f} "
                        f"{row['operator_over_peer_paired_median']:>6.2f} {row['operator_over_peer_cpu_time']:>6.2f} "
                        f"{row['peer_model_only_ticks_per_second']:>19,.0f} "
                        f"{row['operator_over_peer_model_only']:>6.2f} {cell:>14,.0f} {gemm:>12,.0f} "
                        f"{100 * row['fraction_of_gemm_limit']:>8.1f}%")
    skew = []
    for r in rows:
        u = next((x for x in rows if x["activity"] == "uniform" and x["instruments"] == r["instruments"]
                  and x["layers"] == r["layers"]), None)
        if r["activity"] == "zipf" and u is not None:
            skew.append({"instruments": r["instruments"], "layers": r["layers"],
                         "uniform_over_zipf": round(u["operator_ticks_per_second"] / r["operator_ticks_per_second"], 2)})
    printer("zipf slowdown (uniform t/s / zipf t/s): " +
            ", ".join(f"{s['instruments']:,}x{s['layers']}L {s['uniform_over_zipf']}" for s in skew))
    printer(f"state memory at {memory['instruments']:,} instruments (hidden {HIDDEN}, 1 layer): "
            f"raw h+c {memory['raw_state_bytes_per_instrument']} B, table {memory['table_bytes_per_instrument']:.0f} B, "
            f"index {memory['index_bytes_per_instrument']:.0f} B, "
            f"with index and names (RSS) {memory['rss_bytes_per_instrument_with_index']:.0f} B per instrument")
    gru = measure_gru_vs_lstm(instrument_counts, batch_ticks, rounds, batches_per_round)
    printer(f"GRU vs LSTM (hidden {HIDDEN}, 1 layer, uniform, operator ticks/s, best round each): " + ", ".join(
        f"{g['instruments']:,} instruments GRU {g['gru_ticks_per_second']:,.0f} / LSTM "
        f"{g['lstm_ticks_per_second']:,.0f} (LSTM/GRU {g['lstm_over_gru']})" for g in gru))
    from benchmarks.operator_custom import measure_custom_models  # noqa: PLC0415

    custom = measure_custom_models(100 if quick else 1_000, batch_ticks, rounds, batches_per_round, cell_ticks,
                                   printer)
    return {"cases": rows, "zipf_slowdown": skew, "memory": memory, "gru_vs_lstm": gru, "custom_models": custom,
            "skipped": [list(k) for k in skip],
            "machine": {"cpus": os.cpu_count()}, "quick": quick}
