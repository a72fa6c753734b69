"""File backtest: the tick file through the operator in micro-batches, as live.

Outputs in ``OUT_DIR``:
- ``forecasts.parquet``: instrument, ts, seq, price, forecast, realized; for a model with several outputs (or
  one quantile output) ``forecast_<name>`` and ``realized_<name>`` per output instead (summary.json then has
  ``outputs``: each output's scores against its own target, pinball loss and coverage for quantiles)
- ``rejected.parquet``: seq, reason (ticks the operator refused)
- ``summary.json``: scores of the model and of the random walk (see ``pipeline.evaluation.scores``)
- ``per_instrument.parquet``, ``per_hour.parquet``: the same scores broken down
- ``report.html``: headline table with bootstrap intervals, plots, breakdowns (see ``pipeline.evaluation.report``)
- ``plots/*.png`` (see ``pipeline.evaluation.plots``)
- with ``candidates``: ``candidates/<model_version>/`` per candidate, and the comparison in summary.json and
  report.html (see ``pipeline.evaluation.candidates``); without, nothing of it
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from operators.engines import compiled_line
from operators.forecaster import Forecaster, ForecasterConfig
from operators.bundle import Bundle
from operators.outputs import OutputSpec
from operators.validation import reject_labels
from pipeline.config import DEFAULT_MAX_BATCH_TICKS
from pipeline.evaluation import candidates as candidate_runs
from pipeline.evaluation.plots import plot_backtest
from pipeline.evaluation.report import bootstrap_scores, breakdown, write_report
from pipeline.evaluation.scores import output_view, quantile_score, realized_per_output, realized_returns, score
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
    candidates: Sequence[Bundle] = (),
) -> BacktestResult:
    """``ticks`` may carry ``partition`` and ``offset`` (a topic backtest): the state is kept per partition as
    live, and both columns are copied into forecasts.parquet. ``undecodable``: messages of a topic that were
    not ticks (partition, offset, reason, detail), counted and written to undecodable.parquet. ``candidates``:
    models stepped over the same batches, each with its own state, and compared with ``bundle``."""
    out = Path(out_dir)
    candidate_runs.check_candidates(bundle, list(candidates))
    runs = [candidate_runs.CandidateRun.start(c, config) for c in candidates]
    # Per output: several, or one quantile (which MAE against the random walk would misjudge).
    several = bundle.outputs > 1 or bundle.output_list[0].kind != "mean"
    out.mkdir(parents=True, exist_ok=True)
    forecaster = Forecaster(bundle, config)
    if progress:
        print(forecaster.engine.line, file=sys.stderr, flush=True)
        print(compiled_line(forecaster.kernel)[1], file=sys.stderr, flush=True)
    source = TableSource(ticks, max_batch_ticks)
    sink = ForecastCollector([o.name for o in bundle.output_list] if several else None)
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
            for run in runs:
                run.step(batch)
            bar.update(batch.ticks.num_rows)
    forecasts = sink.forecasts()
    for name in ("partition", "offset"):
        if name in ticks.column_names:
            forecasts = forecasts.append_column(name, ticks.column(name).take(forecasts.column("seq")))
    if undecodable is not None:
        for reason in undecodable.column("reason").to_pylist():
            rejected[reason] = rejected.get(reason, 0) + 1
        write_parquet(undecodable, out / "undecodable.parquet")
    if several:
        for name, realized in realized_per_output(forecasts, bundle.output_list).items():
            forecasts = forecasts.append_column(f"realized_{name}", pa.array(realized, type=pa.float64(),
                                                                             from_pandas=True))
    else:
        realized = realized_returns(forecasts, bundle.horizon)
        forecasts = forecasts.append_column("realized", pa.array(realized, type=pa.float64(), from_pandas=True))
    write_parquet(forecasts, out / "forecasts.parquet")
    write_parquet(sink.rejects(), out / "rejected.parquet")
    elapsed = time.perf_counter() - started

    summary = {
        "input": source_name,
        "model_version": bundle.model_version,
        "engine": forecaster.engine.engine,
        "horizon_ticks": bundle.horizon,
        "ticks": ticks.num_rows,
        "forecasts": forecasts.num_rows,
        "rejected": dict(sorted(rejected.items())),
        "instruments": int(len(forecaster.state)),
        "max_batch_ticks": max_batch_ticks,
        "batches": len(source),
        "elapsed_seconds": round(elapsed, 3),
        "operator_ticks_per_second": round(ticks.num_rows / step_seconds, 1) if step_seconds else None,
    }
    if several:
        summary["outputs"] = [score_output(output_view(forecasts, o.name), o) for o in bundle.output_list]
        means = [o.name for o in bundle.output_list if o.kind == "mean"]
        per_instrument = [breakdown(output_view(forecasts, n), "instrument") for n in means]
        per_hour = [breakdown(output_view(forecasts, n), "hour") for n in means]
        write_parquet(stacked(per_instrument, means), out / "per_instrument.parquet")
        write_parquet(stacked(per_hour, means), out / "per_hour.parquet")
    else:
        summary |= score_output(forecasts, None)
        write_parquet(breakdown(forecasts, "instrument"), out / "per_instrument.parquet")
        write_parquet(breakdown(forecasts, "hour"), out / "per_hour.parquet")
    if runs:
        summary |= candidate_runs.finish(runs, forecasts, bundle.model_version, ticks, out, plots)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plots:
        for o in bundle.output_list if several else [None]:
            if o is None or o.kind == "mean":
                plot_backtest(output_view(forecasts, o and o.name), out / "plots" / (o.name if o else ""),
                              title=(source_name or "backtest") + (f" ({o.name})" if o else ""))
        write_report(out)
    return BacktestResult(out, summary, forecasts)


def score_output(view: pa.Table, output: OutputSpec | None) -> dict:
    """One output's scores (``view``: its ``forecast`` and ``realized`` columns): MAE, RMSE, hit rate, IC and
    intervals against the random walk for a mean; pinball loss and coverage (model and random walk) for a
    quantile. ``output`` None: the single output of a one-output model (the summary keys it always had)."""
    f, realized = view.column("forecast").to_numpy(), view.column("realized").to_numpy(zero_copy_only=False)
    head = {} if output is None else {"name": output.name, "horizon_ticks": output.horizon, "kind": output.kind}
    if output is not None and output.kind == "quantile":
        model = quantile_score(f, realized, output.quantile)
        return head | {"quantile": output.quantile, "scored": model["n"], "model": model,
                       "random_walk": quantile_score(np.zeros_like(f), realized, output.quantile)}
    model_score = score(f, realized)
    rw_score = score(np.zeros_like(f), realized)
    r2 = None
    if model_score.rmse is not None and rw_score.rmse:
        r2 = 1.0 - (model_score.rmse / rw_score.rmse) ** 2
    return head | {"scored": model_score.n, "model": model_score.to_dict(), "random_walk": rw_score.to_dict(),
                   "r2_vs_random_walk": r2, "confidence": bootstrap_scores(f, realized)}


def stacked(tables: list[pa.Table], names: list[str]) -> pa.Table:
    """Per-output breakdowns in one table, an ``output`` column first."""
    parts = [t.add_column(0, "output", pa.array([n] * t.num_rows, pa.string())) for t, n in zip(tables, names)
             if t.num_rows]
    if not parts:
        return pa.table({"output": pa.array([], pa.string())})
    return pa.concat_tables(parts, promote_options="permissive")
