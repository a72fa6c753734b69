"""Walk-forward evaluation: train on window k, backtest on window k+1, roll; one summary.

The ticks are cut by event time into ``folds + 1`` windows of equal duration.
Fold k trains a fresh model on window k alone and backtests it on window k+1
through the streaming operator (fresh state, exactly as ``tickcast backtest``).
The out-of-sample forecasts of all folds are pooled into one ``forecasts.parquet``
with a ``fold`` column, scored with bootstrap intervals, and reported in
``report.html``; ``folds.parquet`` has one row of scores per fold.

A model with several outputs (or one quantile output) is scored output by
output, as ``tickcast backtest`` does: each output's pooled out-of-sample
forecasts against its own realised target (``forecast_<name>``,
``realized_<name>``); ``summary.json`` then has ``outputs`` (one entry per
output, the same keys as a backtest's) and ``folds.parquet`` one row per fold
and output, with an ``output`` column.
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
from pipeline.evaluation.backtest import run_backtest, score_output, stacked
from pipeline.evaluation.report import bootstrap_scores, breakdown, write_report
from pipeline.evaluation.scores import output_view
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


def _output_scores(o: dict) -> dict:
    """One output's scores (a backtest's ``outputs`` entry) as flat columns of folds.parquet."""
    m, rw = o["model"], o["random_walk"]
    flat = {"output": o["name"], "horizon_ticks": o["horizon_ticks"], "kind": o["kind"], "scored": o["scored"],
            "mae": None, "mae_random_walk": None, "rmse": None, "rmse_random_walk": None, "hit_rate": None,
            "ic": None, "r2_vs_random_walk": None, "pinball": None, "pinball_random_walk": None, "coverage": None}
    if o["kind"] == "quantile":
        return flat | {"pinball": m["pinball"], "pinball_random_walk": rw["pinball"], "coverage": m["coverage"]}
    return flat | {"mae": m["mae"], "mae_random_walk": rw["mae"], "rmse": m["rmse"], "rmse_random_walk": rw["rmse"],
                   "hit_rate": m["hit_rate"], "ic": m["ic"], "r2_vs_random_walk": o["r2_vs_random_walk"]}


def _fold_line(o: dict) -> str:
    name = f"{o['name']}: " if "name" in o else ""
    if o.get("kind") == "quantile":
        m, rw = o["model"], o["random_walk"]
        if m["pinball"] is None:
            return f"  {name}nothing scored"
        return f"  {name}pinball {m['pinball']:.3e} vs random walk {rw['pinball']:.3e}; coverage {m['coverage']:.3f}"
    if o["model"]["mae"] is None or o["r2_vs_random_walk"] is None:
        return f"  {name}nothing scored"
    return (f"  {name}MAE {o['model']['mae']:.3e} vs random walk {o['random_walk']['mae']:.3e}; "
            f"R² vs random walk {o['r2_vs_random_walk']:+.4f}")


def run_walkforward(ticks: pa.Table, folds: int, config: TrainConfig, out_dir: str | Path, *,
                    max_batch_ticks: int = DEFAULT_MAX_BATCH_TICKS, source_name: str = "", say=print) -> dict:
    if folds < 1:
        raise ValueError(f"--folds must be >= 1, got {folds}")
    outputs = config.output_list
    several = len(outputs) > 1 or outputs[0].kind != "mean"  # as run_backtest decides
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
        head = {"fold": k + 1, "train_from_ns": spans[k][0], "test_from_ns": spans[k + 1][0],
                "test_to_ns": spans[k + 1][1], "train_ticks": train_part.num_rows, "test_ticks": test_part.num_rows}
        if several:
            fold_rows += [head | _output_scores(o) | {"model": str(model_dir)} for o in s["outputs"]]
        else:
            fold_rows.append(head | {"scored": s["scored"],
                                     "mae": s["model"]["mae"], "mae_random_walk": s["random_walk"]["mae"],
                                     "rmse": s["model"]["rmse"], "rmse_random_walk": s["random_walk"]["rmse"],
                                     "hit_rate": s["model"]["hit_rate"], "ic": s["model"]["ic"],
                                     "r2_vs_random_walk": s["r2_vs_random_walk"], "model": str(model_dir)})
        f = result.forecasts
        pooled.append(f.append_column("fold", pa.array(np.full(f.num_rows, k + 1, np.int32))))
        for o in s["outputs"] if several else [s]:
            say(_fold_line(o))
    # `seq` is the row within its fold's test window; `fold` tells the windows apart.
    forecasts = pa.concat_tables(pooled)
    write_parquet(forecasts, out / "forecasts.parquet")
    folds_table = pa.Table.from_pylist(fold_rows)
    write_parquet(folds_table, out / "folds.parquet")
    test_ticks = {r["fold"]: r["test_ticks"] for r in fold_rows}
    summary = {"input": source_name, "mode": "walk-forward", "folds": folds, "model_version": "one per fold",
               "horizon_ticks": config.horizon, "ticks": int(sum(test_ticks.values())),
               "forecasts": forecasts.num_rows, "rejected": {}}
    if several:
        # Each output pooled over the folds and scored against its own realised target.
        summary["outputs"] = [score_output(output_view(forecasts, o.name), o) for o in outputs]
        means = [o.name for o in outputs if o.kind == "mean"]
        write_parquet(stacked([breakdown(output_view(forecasts, n), "instrument") for n in means], means),
                      out / "per_instrument.parquet")
        write_parquet(stacked([breakdown(output_view(forecasts, n), "hour") for n in means], means),
                      out / "per_hour.parquet")
        summary["scored"] = max((o["scored"] for o in summary["outputs"]), default=0)
    else:
        write_parquet(breakdown(forecasts, "instrument"), out / "per_instrument.parquet")
        write_parquet(breakdown(forecasts, "hour"), out / "per_hour.parquet")
        f = forecasts.column("forecast").to_numpy()
        r = forecasts.column("realized").to_numpy(zero_copy_only=False)
        confidence = bootstrap_scores(f, r)
        summary |= {"scored": confidence.get("n", 0), "confidence": confidence}
    summary["per_fold"] = fold_rows
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out)
    return summary
