"""`tickcast bench operator`: the operator against its peers and the machine's limits, measured in one run.

Cases (:mod:`benchmarks.operator_cases`): narrow and deep ones shaped like real feeds (4 and 10
instruments, 5,000-tick batches, 1 x 32 and 1 x 64) and wide ones (1k to 1M instruments, 10,000-tick
batches, 64 units, 1 and 2 layers), uniform and Zipf-skewed (s = 1.1) activity. Per case:
1. the operator (``Forecaster.step`` on micro-batches of Arrow ticks: validation, grouping, features,
   gather, ragged LSTM, scatter), ticks/s;
2. the bucketed peers over the same batches, alternating with the operator round by round in the same
   process (8 rounds of 2 batches; best round of each, and the median of the per-round ratios, the
   figure to quote on a shared machine; both limits are timed after the peers in each round, and the
   operator's fraction of each is the same paired median): bucketed Keras (:class:`benchmarks.peers.BucketedKeras`) and
   the same grouping, features and buckets run by ONNX Runtime's LSTM
   (:class:`benchmarks.onnx_peer.BucketedOnnx`, one intra-op thread unless asked); each checked to give
   the operator's forecasts before anything is timed;
3. the naive correct approach: one Keras ``LSTMCell`` call per tick, with each instrument's state kept
   in a dict, ticks/s;
4. the machine's limits for the same arithmetic (:mod:`benchmarks.limits`): the schedule limit (the
   packed schedule's matrix products alone, compiled, back to back), ticks/s, and the one-GEMM limit,
   rows/s.
Unless only the cases are asked for: state memory per instrument at 1M instruments (hidden 64, 1
layer); a GRU of the same size (Keras' default GRU, as a model brought with ``tickcast bundle --keras``
would have) against the 1-layer LSTM, operator ticks/s of each over the same batches, alternating round
by round, best round each; two custom models brought with ``tickcast bundle --keras``, one served by the
Keras engine and one by the kernel, each against the bucketed-Keras peer and the per-tick Keras cell
(:mod:`benchmarks.operator_custom`).
"""

from __future__ import annotations

import gc
import os
import resource
import time

import numpy as np
import pyarrow as pa

from benchmarks.limits import GemmLimit, ScheduleLimit, schedule_blas
from benchmarks.operator_candidates import run_candidates
from benchmarks.operator_cases import Case, case_batches, cases, measure_against_peers
from benchmarks.peers import BucketedKeras, check_peer
from benchmarks.workload import HIDDEN, bench_bundle, tick_batches, tick_counts
from operators.bundle import Bundle, shape_of
from operators.features import N_FEATURES, FeatureSpec, Normalisation
from operators.forecaster import Forecaster
from operators.layers import PerTick, Recurrent, Stack
from operators.state import StateShape, StateTable


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
        batches = tick_batches(n, "uniform", 1 + rounds * batches_per_round, batch_ticks, seed=n)
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


def onnx_runtime_available() -> bool:
    try:
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _peers(names: tuple[str, ...], ort_threads: int) -> dict:
    """Each selected peer's constructor: (bundle, capacity) -> peer."""
    peers = {}
    if "keras" in names:
        peers["keras"] = lambda bundle, capacity: BucketedKeras(bundle, capacity=capacity)
    if "onnx" in names:
        from benchmarks.onnx_peer import BucketedOnnx  # noqa: PLC0415

        peers["onnx"] = lambda bundle, capacity: BucketedOnnx(bundle, capacity=capacity, threads=ort_threads)
    return peers


def measure_case(case: Case, bundle: Bundle, peers: dict, rounds: int, batches_per_round: int,
                 cell_ticks: int) -> dict:
    """One case: the operator against each peer (paired), the per-tick Keras cell, both limits."""
    batches = case_batches(case, 1 + rounds * batches_per_round)
    m = measure_against_peers(bundle, batches, case.instruments, rounds, peers, {
        "schedule": lambda chunks: ScheduleLimit([[tick_counts(b) for b in c] for c in chunks], case.layers,
                                                 case.hidden),
        "gemm": lambda chunks: GemmLimit([[b.num_rows for b in c] for c in chunks], case.layers, case.hidden)})
    op = m["operator_ticks_per_second"]
    schedule, gemm = m["limits"]["schedule"], m["limits"]["gemm"]
    row = {"instruments": case.instruments, "activity": case.activity, "layers": case.layers,
           "hidden": case.hidden, "batch_ticks": case.batch_ticks, "operator_ticks_per_second": round(op, 1)}
    for name, p in m["peers"].items():
        prefix = "peer" if name == "keras" else f"{name}_peer"  # "peer": the bucketed-Keras peer, as before
        row.update({f"{prefix}_ticks_per_second": round(p["ticks_per_second"], 1),
                    f"operator_over_{prefix}": round(op / p["ticks_per_second"], 2),
                    f"operator_over_{prefix}_paired_median": round(p["paired_ratio"], 2),
                    f"operator_over_{prefix}_paired_rounds": p["paired_ratios"],
                    f"operator_over_{prefix}_cpu_time": round(p["cpu_ratio"], 2),
                    f"{prefix}_model_only_ticks_per_second": round(p["model_only_ticks_per_second"], 1),
                    f"operator_over_{prefix}_model_only": round(op / p["model_only_ticks_per_second"], 2)})
    if "keras" in peers:
        cell = measure_keras_cell(bundle, batches[0], cell_ticks)
        row.update({"keras_cell_ticks_per_second": round(cell, 1), "speedup_vs_keras_cell": round(op / cell, 1)})
    # each limit's best round; the operator's fraction of it: limit time / operator time, median over rounds
    row.update({"schedule_limit_ticks_per_second": round(schedule["ticks_per_second"], 1),
                "fraction_of_schedule_limit": round(schedule["paired_fraction"], 3),
                "fraction_of_schedule_limit_rounds": schedule["paired_fractions"],
                "gemm_limit_rows_per_second": round(gemm["ticks_per_second"], 1),
                "fraction_of_gemm_limit": round(gemm["paired_fraction"], 3),
                "fraction_of_gemm_limit_rounds": gemm["paired_fractions"],
                "mean_instruments_per_batch": round(m["mean_instruments_per_batch"], 1),
                "rounds": rounds, "batches_per_round": m["batches_per_round"]})
    return row


def _line(row: dict) -> str:
    def peer(prefix):
        if f"{prefix}_ticks_per_second" not in row:
            return f"{'-':>10} {'-':>6}"
        return f"{row[f'{prefix}_ticks_per_second']:>10,.0f} {row[f'operator_over_{prefix}_paired_median']:>6.2f}"

    cell = f"{row['keras_cell_ticks_per_second']:>9,.0f}" if "keras_cell_ticks_per_second" in row else f"{'-':>9}"
    return (f"{row['instruments']:>11,} {row['activity']:>8} {row['layers']:>2}x{row['hidden']:<3} "
            f"{row['batch_ticks']:>6,} {row['mean_instruments_per_batch']:>10,.0f} "
            f"{row['operator_ticks_per_second']:>12,.0f} {peer('onnx_peer')} {peer('peer')} {cell} "
            f"{row['schedule_limit_ticks_per_second']:>12,.0f} {100 * row['fraction_of_schedule_limit']:>6.1f}% "
            f"{row['gemm_limit_rows_per_second']:>12,.0f} {100 * row['fraction_of_gemm_limit']:>6.1f}%")


def run(quick: bool = False, batch_ticks: int | None = None, printer=print, instrument_counts: list[int] | None = None,
        layer_counts: list[int] | None = None, rounds: int = 8, batches_per_round: int = 2,
        skip: tuple[tuple[int, int], ...] = (), activities: tuple[str, ...] | None = None,
        hidden: tuple[int, ...] | None = None, peers: tuple[str, ...] | None = None, ort_threads: int = 1,
        cases_only: bool = False, candidates: tuple[int, ...] | None = None) -> dict:
    """Every case (:func:`benchmarks.operator_cases.cases`): the operator against the bucketed peers
    (alternated, paired), the per-tick Keras cell, the schedule and GEMM limits. ``skip`` lists
    (instruments, layers) cases left out; ``peers``: "keras", "onnx" (default: both, the ONNX Runtime one
    when it is installed); ``cases_only``: leave out memory, GRU and custom models. ``candidates`` (candidate
    counts, e.g. (0, 1, 2)): instead of all that, the cost of stepping candidate models beside the primary
    over the same cases (:mod:`benchmarks.operator_candidates`)."""
    if peers is None:
        peers = ("onnx", "keras") if onnx_runtime_available() else ("keras",)
    if quick:
        rounds, batches_per_round = 2, 1
    cell_ticks = 60 if quick else 300
    selected = [c for c in cases(tuple(instrument_counts or ()) or None, tuple(layer_counts or ()) or None,
                                 activities, hidden, batch_ticks, quick) if (c.instruments, c.layers) not in skip]
    if candidates is not None:
        rows = run_candidates(selected, candidates, rounds, batches_per_round, printer)
        return {"candidates": rows, "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
                "quick": quick}
    # Memory first: an RSS difference means little once TensorFlow and the cases have come and gone.
    memory = None if cases_only else measure_memory(100_000 if quick else 1_000_000)
    factories = _peers(peers, ort_threads)
    printer(f"operator benchmark: the operator and the bucketed peers ({', '.join(peers)}; ONNX Runtime on "
            f"{ort_threads} thread(s)) alternate over {rounds} rounds of {batches_per_round} batches; paired = "
            f"median over rounds of peer time / operator time; schedule limit: {schedule_blas()}")
    bundles = {}
    for case in selected:  # each model built once, and each peer checked on it before anything is timed
        key = (case.layers, case.hidden)
        if key not in bundles:
            bundles[key] = bundle = bench_bundle(*key)
            for name, make in factories.items():
                gap = check_peer(bundle, peer=lambda b, make=make: make(b, 1024))
                printer(f"peer check ({case.layers}x{case.hidden}): bucketed {name} equals the operator, largest "
                        f"gap {gap:.2e} target standard deviations")
    printer(f"{'instruments':>11} {'activity':>8} {'model':>6} {'batch':>6} {'inst/batch':>10} {'operator t/s':>12} "
            f"{'ORT t/s':>10} {'paired':>6} {'Keras t/s':>10} {'paired':>6} {'cell t/s':>9} "
            f"{'schedule t/s':>12} {'%sched':>7} {'GEMM rows/s':>12} {'%GEMM':>7}")
    rows = []
    for case in selected:
        row = measure_case(case, bundles[(case.layers, case.hidden)], factories, rounds, batches_per_round,
                           cell_ticks)
        rows.append(row)
        printer(_line(row))
    results = {"cases": rows, "peers": list(peers), "onnx_threads": ort_threads, "schedule_blas": schedule_blas(),
               "skipped": [list(k) for k in skip], "machine": {"cpus": os.cpu_count()}, "quick": quick}
    if cases_only:
        return results
    skew = []
    for r in rows:
        u = next((x for x in rows if x["activity"] == "uniform" and
                  all(x[k] == r[k] for k in ("instruments", "layers", "hidden", "batch_ticks"))), None)
        if r["activity"] == "zipf" and u is not None:
            skew.append({"instruments": r["instruments"], "layers": r["layers"], "hidden": r["hidden"],
                         "uniform_over_zipf": round(u["operator_ticks_per_second"] / r["operator_ticks_per_second"], 2)})
    printer("zipf slowdown (uniform t/s / zipf t/s): " +
            ", ".join(f"{s['instruments']:,}x{s['layers']}Lx{s['hidden']} {s['uniform_over_zipf']}" for s in skew))
    printer(f"state memory at {memory['instruments']:,} instruments (hidden {HIDDEN}, 1 layer): "
            f"raw h+c {memory['raw_state_bytes_per_instrument']} B, table {memory['table_bytes_per_instrument']:.0f} B, "
            f"index {memory['index_bytes_per_instrument']:.0f} B, "
            f"with index and names (RSS) {memory['rss_bytes_per_instrument_with_index']:.0f} B per instrument")
    sizes = sorted({c.instruments for c in selected})
    gru = measure_gru_vs_lstm(sizes, batch_ticks or 10_000, rounds, batches_per_round)
    printer(f"GRU vs LSTM (hidden {HIDDEN}, 1 layer, uniform, operator ticks/s, best round each): " + ", ".join(
        f"{g['instruments']:,} instruments GRU {g['gru_ticks_per_second']:,.0f} / LSTM "
        f"{g['lstm_ticks_per_second']:,.0f} (LSTM/GRU {g['lstm_over_gru']})" for g in gru))
    from benchmarks.operator_custom import measure_custom_models  # noqa: PLC0415

    custom = measure_custom_models(100 if quick else 1_000, batch_ticks or 10_000, rounds, batches_per_round,
                                   cell_ticks, printer)
    results.update({"zipf_slowdown": skew, "memory": memory, "gru_vs_lstm": gru, "custom_models": custom})
    return results
