"""`tickcast bench backtest`: backtest throughput against its own ceilings, same run.

- file: ``run_backtest`` on an in-memory table (validation, operator, sink, realised returns, bootstrap
  intervals, breakdowns, Parquet; no plots) against the operator alone (``Forecaster.step`` over the
  same micro-batches);
- topic: ``read_topic_range`` + ``run_backtest`` over the same ticks on the embedded broker, against
  the bare kafka-python consume + decode loop (the ceiling of ``tickcast bench e2e``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid

from operators.forecaster import Forecaster
from pipeline.evaluation.backtest import run_backtest
from pipeline.files.sources import TableSource
from pipeline.files.synthetic import generate_ticks


def run(n_ticks: int = 300_000, instruments: int = 1000, batch: int = 10_000, printer=print) -> dict:
    from benchmarks.e2e import _produce, measure_ceiling  # noqa: PLC0415
    from benchmarks.operator import _bundle  # noqa: PLC0415
    from pipeline.kafka.broker import EmbeddedBroker, create_topics  # noqa: PLC0415
    from pipeline.kafka.replay import encode_ticks  # noqa: PLC0415
    from pipeline.kafka.topics import read_topic_range  # noqa: PLC0415

    bundle = _bundle(1, 64)
    ticks = generate_ticks(instruments, n_ticks, seed=5, bad_fraction=0.0)
    printer(f"backtest benchmark: {n_ticks:,} ticks, {instruments:,} instruments, hidden 64, batches of {batch:,}")

    fc = Forecaster(bundle)
    t0 = time.perf_counter()
    for b in TableSource(ticks, batch):
        fc.step(b.ticks)
    operator = n_ticks / (time.perf_counter() - t0)
    out = tempfile.mkdtemp(prefix="tickcast-bench-bt-")
    try:
        t0 = time.perf_counter()
        run_backtest(ticks, bundle, out, max_batch_ticks=batch, plots=False, progress=False)
        file_rate = n_ticks / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    printer(f"  file:  operator alone {operator:>10,.0f} ticks/s   backtest {file_rate:>10,.0f} ticks/s   "
            f"ratio {file_rate / operator:.2f}")

    with EmbeddedBroker() as broker:
        topic = f"btb-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {topic: 1})
        _produce(broker.bootstrap, topic, encode_ticks(ticks))
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
    return {"ticks": n_ticks, "instruments": instruments, "operator_ticks_per_second": operator,
            "file_backtest_ticks_per_second": file_rate, "file_over_operator": file_rate / operator,
            "consume_ceiling_ticks_per_second": ceiling, "topic_read_ticks_per_second": n_ticks / t_read,
            "topic_backtest_ticks_per_second": topic_rate, "topic_over_ceiling": topic_rate / ceiling}
