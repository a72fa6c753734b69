"""`tickcast bench operator`: the operator against two baselines, measured in one run.

For 10, 1k, 10k and 100k instruments, uniform and Zipf-skewed (s = 1.1) activity,
hidden size 64, 1 and 2 layers:
1. the operator (``Forecaster.step`` on micro-batches of Arrow ticks: validation,
   grouping, features, gather, ragged LSTM, scatter), ticks/s;
2. the naive correct approach: one Keras ``LSTMCell`` call per tick, with each
   instrument's state kept in a dict, ticks/s;
3. the machine's limit for the same arithmetic: one NumPy/BLAS GEMM of the
   LSTM's gates ``[x, h] @ W`` over all ticks of a batch, per layer, rows/s.
State memory is reported per instrument at 1M instruments (hidden 64, 1 layer).
"""

from __future__ import annotations

import gc
import os
import resource
import time

import numpy as np
import pyarrow as pa

from operators.features import N_FEATURES, FeatureSpec, Normalisation
from operators.forecaster import Forecaster
from operators.model import Bundle, build_keras_model, weights_from_keras
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


def _warm_state(fc: Forecaster, n_instruments: int) -> None:
    """Every instrument has a row and a history before timing starts."""
    names = [f"I{i:07d}" for i in range(n_instruments)]
    fc.step(pa.table({
        "instrument": pa.array(names),
        "ts": pa.array(np.full(n_instruments, T0 - 1_000_000_000), pa.int64()),
        "price": pa.array(np.full(n_instruments, 100.0)),
        "size": pa.array(np.ones(n_instruments)),
    }))


def measure_operator(bundle: Bundle, batches: list[pa.Table], n_instruments: int) -> dict:
    fc = Forecaster(bundle)
    _warm_state(fc, n_instruments)
    fc.step(batches[0])  # warm caches
    ticks = 0
    steps = 0
    instruments_per_batch = []
    started = time.perf_counter()
    for b in batches[1:]:
        res = fc.step(b)
        ticks += b.num_rows
        steps += 1
        instruments_per_batch.append(res.n_instruments)
    elapsed = time.perf_counter() - started
    return {"ticks_per_second": ticks / elapsed, "batches": steps,
            "mean_instruments_per_batch": float(np.mean(instruments_per_batch))}


def measure_keras_cell(bundle: Bundle, batch: pa.Table, n_ticks: int) -> float:
    """One eager Keras LSTMCell call per tick per layer; state per instrument in a dict."""
    from operators.model import sequences_from_table  # noqa: PLC0415

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
        "rss_bytes_per_instrument_with_index": (after - before) / n_instruments,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run(quick: bool = False, batch_ticks: int = 10_000, printer=print) -> dict:
    instrument_counts = [10, 1_000, 10_000, 100_000] if not quick else [10, 1_000]
    layer_counts = [1, 2]
    n_batches = 4 if quick else 12
    cell_ticks = 60 if quick else 300
    rows = []
    printer(f"operator benchmark: hidden {HIDDEN}, micro-batches of {batch_ticks:,} ticks, "
            f"{n_batches - 1} timed batches per case")
    header = (f"{'instruments':>11} {'activity':>8} {'layers':>6} {'operator t/s':>13} {'keras cell t/s':>15} "
              f"{'speedup':>8} {'GEMM rows/s':>12} {'% of GEMM':>9}")
    printer(header)
    for layers in layer_counts:
        bundle = _bundle(layers)
        gemm = measure_gemm_limit(batch_ticks, layers)
        for n in instrument_counts:
            for activity in ("uniform", "zipf"):
                batches = _stream(n, activity, n_batches, batch_ticks, seed=n + layers)
                op = measure_operator(bundle, batches, n)
                cell = measure_keras_cell(bundle, batches[0], cell_ticks)
                row = {
                    "instruments": n, "activity": activity, "layers": layers, "hidden": HIDDEN,
                    "batch_ticks": batch_ticks,
                    "operator_ticks_per_second": round(op["ticks_per_second"], 1),
                    "keras_cell_ticks_per_second": round(cell, 1),
                    "speedup_vs_keras_cell": round(op["ticks_per_second"] / cell, 1),
                    "gemm_limit_rows_per_second": round(gemm, 1),
                    "fraction_of_gemm_limit": round(op["ticks_per_second"] / gemm, 3),
                    "mean_instruments_per_batch": round(op["mean_instruments_per_batch"], 1),
                }
                rows.append(row)
                printer(f"{n:>11,} {activity:>8} {layers:>6} {row['operator_ticks_per_second']:>13,.0f} "
                        f"{cell:>15,.0f} {row['speedup_vs_keras_cell']:>7,.0f}x {gemm:>12,.0f} "
                        f"{100 * row['fraction_of_gemm_limit']:>8.1f}%")
    skew = []
    for r in rows:
        if r["activity"] == "zipf":
            u = next(x for x in rows if x["activity"] == "uniform" and x["instruments"] == r["instruments"]
                     and x["layers"] == r["layers"])
            skew.append({"instruments": r["instruments"], "layers": r["layers"],
                         "uniform_over_zipf": round(u["operator_ticks_per_second"] / r["operator_ticks_per_second"], 2)})
    printer("zipf slowdown (uniform t/s / zipf t/s): " +
            ", ".join(f"{s['instruments']:,}x{s['layers']}L {s['uniform_over_zipf']}" for s in skew))
    memory = measure_memory(100_000 if quick else 1_000_000)
    printer(f"state memory at {memory['instruments']:,} instruments (hidden {HIDDEN}, 1 layer): "
            f"raw h+c {memory['raw_state_bytes_per_instrument']} B, table {memory['table_bytes_per_instrument']:.0f} B, "
            f"with index and names (RSS) {memory['rss_bytes_per_instrument_with_index']:.0f} B per instrument")
    return {"cases": rows, "zipf_slowdown": skew, "memory": memory,
            "machine": {"cpus": os.cpu_count()}, "quick": quick}
