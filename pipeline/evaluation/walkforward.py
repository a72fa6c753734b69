"""Walk-forward evaluation: train on window k, backtest on window k+1, roll; one summary.

The ticks are cut by event time into ``folds + 1`` windows of equal duration.
Fold k trains a fresh model on window k alone and backtests it on window k+1
through the streaming operator (fresh state, exactly as ``tickcast backtest``).
The out-of-sample forecasts of all folds are pooled into one ``forecasts.parquet``
with a ``fold`` column, scored with bootstrap intervals, and reported in
``report.html``; ``folds.parquet`` has one row of scores per fold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.bundle import save_bundle
from operators.training import TrainConfig, train
from pipeline.config import DEFAULT_MAX_BATCH_TICKS
from pipeline.evaluation.backtest import run_backtest
from pipeline.evaluation.report import bootstrap_scores, breakdown, write_report
from pipeline.files.sinks import write_parquet


def windows(ticks: pa.Table, folds: int) -> list[tuple[int, int]]:
    """folds + 1 consecutive [start, end) event-time windows covering the ticks."""
    ts = ticks.column("ts")
    lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py() + 1
    edges = np.linspace(lo, hi, folds + 2).astype(np.int64)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _slice(ticks: pa.Table, start: int, end: int) -> pa.Table:
    ts = ticks.column("ts")
    return ticks.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, end)))


def run_walkforward(ticks: pa.Table, folds: int, config: TrainConfig, out_dir: str | Path, *,
                    max_batch_ticks: int = DEFAULT_MAX_BATCH_TICKS, source_name: str = "", say=print) -> dict:
    if folds < 1:
        raise ValueError(f"--folds must be >= 1, got {folds}")
    if len(config.output_list) > 1:
        raise ValueError("tickcast walkforward pools one output per tick; give one horizon and no --quantiles "
                         "(backtest a model with several outputs with `tickcast backtest`)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spans = windows(ticks, folds)
    fold_rows, pooled = [], []
    for k in range(folds):
        train_part, test_part = _slice(ticks, *spans[k]), _slice(ticks, *spans[k + 1])
        when = lambda s: str(np.datetime64(s, "ns"))[:19]  # noqa: E731
        say(f"fold {k + 1}/{folds}: train {train_part.num_rows:,} ticks [{when(spans[k][0])}, {when(spans[k][1])}), "
            f"test {test_part.num_rows:,} ticks [{when(spans[k + 1][0])}, {when(spans[k + 1][1])})")
        if train_part.num_rows == 0 or test_part.num_rows == 0:
            raise ValueError(f"fold {k + 1} has an empty window; use fewer --folds for this data")
        bundle = train(train_part, config, source=f"{source_name} window {k + 1}")
        model_dir = save_bundle(bundle, out / f"fold{k + 1}" / "model")
        result = run_backtest(test_part, bundle, out / f"fold{k + 1}", max_batch_ticks=max_batch_ticks,
                              source_name=f"{source_name} window {k + 2}", plots=False, progress=False)
        s = result.summary
        fold_rows.append({"fold": k + 1, "train_from_ns": spans[k][0], "test_from_ns": spans[k + 1][0],
                          "test_to_ns": spans[k + 1][1], "train_ticks": train_part.num_rows,
                          "test_ticks": test_part.num_rows, "scored": s["scored"],
                          "mae": s["model"]["mae"], "mae_random_walk": s["random_walk"]["mae"],
                          "rmse": s["model"]["rmse"], "rmse_random_walk": s["random_walk"]["rmse"],
                          "hit_rate": s["model"]["hit_rate"], "ic": s["model"]["ic"],
                          "r2_vs_random_walk": s["r2_vs_random_walk"], "model": str(model_dir)})
        f = result.forecasts
        pooled.append(f.append_column("fold", pa.array(np.full(f.num_rows, k + 1, np.int32))))
        say(f"  MAE {s['model']['mae']:.3e} vs random walk {s['random_walk']['mae']:.3e}; "
            f"R² vs random walk {s['r2_vs_random_walk']:+.4f}")
    # `seq` is the row within its fold's test window; `fold` tells the windows apart.
    forecasts = pa.concat_tables(pooled)
    write_parquet(forecasts, out / "forecasts.parquet")
    folds_table = pa.Table.from_pylist(fold_rows)
    write_parquet(folds_table, out / "folds.parquet")
    write_parquet(breakdown(forecasts, "instrument"), out / "per_instrument.parquet")
    write_parquet(breakdown(forecasts, "hour"), out / "per_hour.parquet")
    f = forecasts.column("forecast").to_numpy()
    r = forecasts.column("realized").to_numpy(zero_copy_only=False)
    confidence = bootstrap_scores(f, r)
    summary = {"input": source_name, "mode": "walk-forward", "folds": folds, "model_version": "one per fold",
               "horizon_ticks": config.horizon, "ticks": int(sum(x["test_ticks"] for x in fold_rows)),
               "forecasts": forecasts.num_rows, "rejected": {}, "scored": confidence.get("n", 0),
               "confidence": confidence, "per_fold": fold_rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out)
    return summary
