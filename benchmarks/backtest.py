"""`tickcast bench backtest`: backtest throughput against its own ceilings, same run.

- file: ``run_backtest`` on an in-memory table (validation, features, normalisation, operator, sink,
  realised returns, scores with bootstrap intervals, breakdowns, Parquet; no plots) against the operator
  alone (``Forecaster.step`` over the same micro-batches);
- topic (unless skipped): ``read_topic_range`` + ``run_backtest`` over the same ticks on the embedded
  broker, against the bare kafka-python consume + decode loop (the ceiling of ``tickcast bench e2e``).

The ticks are synthetic (``pipeline.files.synthetic``: Zipf-skewed activity over ``instruments``) of any
shape, e.g. the shape of the real equity hold-out day (4 instruments, 448k ticks, 5,000-tick batches,
1 x 32): ``tickcast bench backtest --instruments 4 --ticks 448000 --batch-ticks 5000 --hidden 32 --layers 1
--skip-topic``; or the first ``ticks`` of a real tick file or folder read in place (``data``, any format
``tickcast backtest`` reads). The model has the benchmark's weights (:func:`benchmarks.workload.bench_bundle`)
with its normalisation fitted on the ticks' own features, so the features are scaled as a trained
model's are.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.bundle import Bundle
from operators.features import Normalisation
from operators.forecaster import Forecaster
from pipeline.evaluation.backtest import run_backtest
from pipeline.files.sources import TableSource
from pipeline.files.synthetic import generate_ticks


def fitted(bundle: Bundle, ticks: pa.Table, sample: int = 100_000) -> Bundle:
    """``bundle`` with its feature normalisation fitted on the first ``sample`` ticks' raw features."""
    from operators.training import sequences_from_table  # noqa: PLC0415

    raw = sequences_from_table(ticks.slice(0, sample)).raw_features
    std = np.nanstd(raw, axis=0)
    norm = Normalisation(np.nan_to_num(np.nanmean(raw, axis=0)), np.where(np.isfinite(std) & (std > 0), std, 1.0),
                         0.0, 1e-3)
    return replace(bundle, normalisation=norm)


def run(n_ticks: int = 300_000, instruments: int = 1000, batch: int = 10_000, printer=print, hidden: int = 64,
        layers: int = 1, topic: bool = True, data: str | None = None) -> dict:
    from benchmarks.workload import bench_bundle  # noqa: PLC0415

    if data is not None:
        from pipeline.files.formats import read_ticks  # noqa: PLC0415

        ticks = read_ticks(data).slice(0, n_ticks)
        n_ticks, instruments = ticks.num_rows, len(pc.unique(ticks.column("instrument")))
        source = f"{data} (first {n_ticks:,} ticks)"
    else:
        ticks = generate_ticks(instruments, n_ticks, seed=5, bad_fraction=0.0)
        source = "synthetic, Zipf activity"
    bundle = fitted(bench_bundle(layers, hidden), ticks)
    printer(f"backtest benchmark: {n_ticks:,} ticks ({source}), {instruments:,} instruments, {layers} x {hidden}, "
            f"batches of {batch:,}")

    Forecaster(bundle).step(ticks.slice(0, batch))  # first use: builds or loads the compiled step, untimed
    fc = Forecaster(bundle)
    t0 = time.perf_counter()
    for b in TableSource(ticks, batch):
        fc.step(b.ticks)
    operator = n_ticks / (time.perf_counter() - t0)
    out = tempfile.mkdtemp(prefix="tickcast-bench-bt-")
    try:
        t0 = time.perf_counter()
        result = run_backtest(ticks, bundle, out, max_batch_ticks=batch, plots=False, progress=False)
        file_rate = n_ticks / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    scored = result.forecasts.num_rows
    printer(f"  file:  operator alone {operator:>10,.0f} ticks/s   backtest {file_rate:>10,.0f} ticks/s   "
            f"ratio {file_rate / operator:.2f}   ({scored:,} forecasts scored, in-step operator "
            f"{result.summary.get('operator_ticks_per_second') or 0:,.0f} ticks/s)")
    figures = {"ticks": n_ticks, "instruments": instruments, "layers": layers, "hidden": hidden, "batch_ticks": batch,
               "source": source, "operator_ticks_per_second": operator, "file_backtest_ticks_per_second": file_rate,
               "file_over_operator": file_rate / operator, "forecasts_scored": scored,
               "backtest_operator_ticks_per_second": result.summary.get("operator_ticks_per_second")}
    if topic:
        figures.update(_topic(ticks, bundle, batch, printer))
    return figures


def _topic(ticks: pa.Table, bundle: Bundle, batch: int, printer) -> dict:
    from benchmarks.e2e import produce_ticks, measure_ceiling  # noqa: PLC0415
    from pipeline.kafka.broker import EmbeddedBroker, create_topics  # noqa: PLC0415
    from pipeline.kafka.replay import encode_ticks  # noqa: PLC0415
    from pipeline.kafka.topics import read_topic_range  # noqa: PLC0415

    n_ticks = ticks.num_rows
    with EmbeddedBroker() as broker:
        topic = f"btb-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {topic: 1})
        produce_ticks(broker.bootstrap, topic, encode_ticks(ticks))
        ceiling = measure_ceiling(broker.bootstrap, topic, n_ticks, 20_000)
        out = tempfile.mkdtemp(prefix="tickcast-bench-bt-")
        try:
            t0 = time.perf_counter()
            got = read_topic_range(broker.bootstrap, topic, None, None, timeout_s=600)
            t_read = time.perf_counter() - t0
            run_backtest(got.ticks, bundle, out, max_batch_ticks=batch, plots=False, progress=False)
            topic_rate = n_ticks / (time.perf_counter() - t0)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        assert got.ticks.num_rows == n_ticks
    printer(f"  topic: consume ceiling {ceiling:>9,.0f} ticks/s   read {n_ticks / t_read:>10,.0f} ticks/s   "
            f"read + backtest {topic_rate:>10,.0f} ticks/s   ratio {topic_rate / ceiling:.2f}")
    return {"consume_ceiling_ticks_per_second": ceiling, "topic_read_ticks_per_second": n_ticks / t_read,
            "topic_backtest_ticks_per_second": topic_rate, "topic_over_ceiling": topic_rate / ceiling}
