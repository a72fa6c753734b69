"""File backtest: the tick file through the operator in micro-batches, as live.

Outputs in ``OUT_DIR``:
- ``forecasts.parquet``: instrument, ts, seq, price, forecast, realized
- ``rejected.parquet``: seq, reason (ticks the operator refused)
- ``summary.json``: scores of the model and of the random walk (see ``pipeline.evaluation.scores``)
- ``per_instrument.parquet``, ``per_hour.parquet``: the same scores broken down
- ``report.html``: headline table with bootstrap intervals, plots, breakdowns (see ``pipeline.evaluation.report``)
- ``plots/*.png`` (see ``pipeline.evaluation.plots``)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from operators.forecaster import Forecaster, ForecasterConfig
from operators.bundle import Bundle
from operators.validation import reject_labels
from pipeline.bundling import require_one_output
from pipeline.config import DEFAULT_MAX_BATCH_TICKS
from pipeline.evaluation.plots import plot_backtest
from pipeline.evaluation.report import bootstrap_scores, breakdown, write_report
from pipeline.evaluation.scores import realized_returns, score
from pipeline.files.sinks import ForecastCollector, write_parquet
from pipeline.files.sources import TableSource


@dataclass(frozen=True)
class BacktestResult:
    out_dir: Path
    summary: dict
    forecasts: pa.Table


def run_backtest(
    ticks: pa.Table,
    bundle: Bundle,
    out_dir: str | Path,
    *,
    max_batch_ticks: int = DEFAULT_MAX_BATCH_TICKS,
    config: ForecasterConfig | None = None,
    source_name: str = "",
    plots: bool = True,
    progress: bool = True,
    undecodable: pa.Table | None = None,
) -> BacktestResult:
    """``ticks`` may carry ``partition`` and ``offset`` (a topic backtest): the state is kept per partition as
    live, and both columns are copied into forecasts.parquet. ``undecodable``: messages of a topic that were
    not ticks (partition, offset, reason, detail), counted and written to undecodable.parquet."""
    require_one_output(bundle, "tickcast backtest")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    forecaster = Forecaster(bundle, config)
    source = TableSource(ticks, max_batch_ticks)
    sink = ForecastCollector()
    rejected: dict[str, int] = {}
    started = time.perf_counter()
    step_seconds = 0.0
    with tqdm(total=source.total, unit="tick", unit_scale=True, disable=not progress,
              desc="backtest", mininterval=0.5) as bar:
        for batch in source:
            t0 = time.perf_counter()
            result = forecaster.step(batch.ticks)
            step_seconds += time.perf_counter() - t0
            bad = np.flatnonzero(result.reasons)
            labels = reject_labels(result.reasons[bad])
            for label in labels:
                rejected[label] = rejected.get(label, 0) + 1
            sink.add(batch.ticks, batch.first_seq, result.rows, result.forecasts, bad, labels)
            bar.update(batch.ticks.num_rows)
    forecasts = sink.forecasts()
    for name in ("partition", "offset"):
        if name in ticks.column_names:
            forecasts = forecasts.append_column(name, ticks.column(name).take(forecasts.column("seq")))
    if undecodable is not None:
        for reason in undecodable.column("reason").to_pylist():
            rejected[reason] = rejected.get(reason, 0) + 1
        write_parquet(undecodable, out / "undecodable.parquet")
    realized = realized_returns(forecasts, bundle.horizon)
    forecasts = forecasts.append_column("realized", pa.array(realized, type=pa.float64(), from_pandas=True))
    write_parquet(forecasts, out / "forecasts.parquet")
    write_parquet(sink.rejects(), out / "rejected.parquet")
    elapsed = time.perf_counter() - started

    f = forecasts.column("forecast").to_numpy()
    model_score = score(f, realized)
    rw_score = score(np.zeros_like(f), realized)
    r2 = None
    if model_score.rmse is not None and rw_score.rmse:
        r2 = 1.0 - (model_score.rmse / rw_score.rmse) ** 2
    summary = {
        "input": source_name,
        "model_version": bundle.model_version,
        "horizon_ticks": bundle.horizon,
        "ticks": ticks.num_rows,
        "forecasts": forecasts.num_rows,
        "rejected": dict(sorted(rejected.items())),
        "instruments": int(len(forecaster.state)),
        "max_batch_ticks": max_batch_ticks,
        "batches": len(source),
        "scored": model_score.n,
        "model": model_score.to_dict(),
        "random_walk": rw_score.to_dict(),
        "r2_vs_random_walk": r2,
        "elapsed_seconds": round(elapsed, 3),
        "operator_ticks_per_second": round(ticks.num_rows / step_seconds, 1) if step_seconds else None,
        "confidence": bootstrap_scores(f, realized),
    }
    write_parquet(breakdown(forecasts, "instrument"), out / "per_instrument.parquet")
    write_parquet(breakdown(forecasts, "hour"), out / "per_hour.parquet")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plots:
        plot_backtest(forecasts, out / "plots", title=source_name or "backtest")
        write_report(out)
    return BacktestResult(out, summary, forecasts)
