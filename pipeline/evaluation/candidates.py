"""Candidate models in a file backtest (``tickcast backtest --candidate DIR``): the same ticks, compared.

Each candidate steps the same micro-batches as the primary with its own
``Forecaster`` and state. Its outputs go to ``OUT_DIR/candidates/<model_version>/``:
``forecasts.parquet`` and ``rejected.parquet`` (the primary's format) and
``summary.json`` (its own scores), so ``tickcast compare OUT_DIR
OUT_DIR/candidates/<version>`` works on it. The primary's ``summary.json``
gains ``candidates`` (where each one's files are) and ``comparison``: every
model scored on the primary's forecast ticks and realised returns, and each
candidate's paired loss difference to the primary with its moving-block
interval (``pipeline.evaluation.compare``); ``report.html`` a section with
them and ``plots/paired_difference.png`` (the cumulative paired difference).

Candidates are compared with a primary of one mean output at the same
horizon (what the online comparison scores).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from operators.bundle import Bundle
from operators.forecaster import Forecaster, ForecasterConfig
from operators.validation import reject_labels
from pipeline.config import ConfigError
from pipeline.evaluation.compare import Interval, compare_forecasts, format_interval
from pipeline.evaluation.scores import realized_returns
from pipeline.files.sinks import ForecastCollector, write_parquet


def check_candidates(primary: Bundle, candidates: list[Bundle]) -> None:
    """Refuse what cannot be compared forecast for forecast, naming what differs."""
    if not candidates:
        return
    versions = [primary.model_version]
    for b in [primary, *candidates]:
        if b.outputs > 1 or b.output_list[0].kind != "mean":
            raise ConfigError(f"model {b.model_version} ({b.path}) has several or quantile outputs; --candidate "
                              "compares models of one mean output")
    for c in candidates:
        if c.horizon != primary.horizon:
            raise ConfigError(f"candidate {c.model_version} ({c.path}) forecasts {c.horizon} ticks ahead, the "
                              f"primary {primary.horizon}: compare models of the same horizon")
        if c.model_version in versions:
            raise ConfigError(f"candidate {c.path} is model {c.model_version}, given already; each model once")
        versions.append(c.model_version)


@dataclass
class CandidateRun:
    """One candidate's forecaster, its forecasts and its rejections, batch after batch."""

    bundle: Bundle
    forecaster: Forecaster
    sink: ForecastCollector = field(default_factory=ForecastCollector)
    rejected: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, bundle: Bundle, config: ForecasterConfig | None) -> "CandidateRun":
        return cls(bundle, Forecaster(bundle, config))

    def step(self, batch) -> None:
        result = self.forecaster.step(batch.ticks)
        bad = np.flatnonzero(result.reasons)
        labels = reject_labels(result.reasons[bad])
        for label in labels:
            self.rejected[label] = self.rejected.get(label, 0) + 1
        self.sink.add(batch.ticks, batch.first_seq, result.rows, result.forecasts, bad, labels)


def finish(runs: list[CandidateRun], primary: pa.Table, primary_version: str, ticks: pa.Table, out: Path,
           plots: bool) -> dict:
    """Write each candidate's files; the summary keys ``candidates`` and ``comparison``."""
    from pipeline.evaluation.backtest import score_output  # noqa: PLC0415 - backtest imports this module

    listed, columns = [], [primary.column("forecast").to_numpy()]
    p_seq = primary.column("seq").to_numpy()
    for run in runs:
        t = run.sink.forecasts()
        for name in ("partition", "offset"):
            if name in ticks.column_names:
                t = t.append_column(name, ticks.column(name).take(t.column("seq")))
        t = t.append_column("realized", pa.array(realized_returns(t, run.bundle.horizon), type=pa.float64(),
                                                 from_pandas=True))
        where = out / "candidates" / run.bundle.model_version
        write_parquet(t, where / "forecasts.parquet")
        write_parquet(run.sink.rejects(), where / "rejected.parquet")
        own = {"model_version": run.bundle.model_version, "engine": run.forecaster.engine.engine,
               "horizon_ticks": run.bundle.horizon, "ticks": ticks.num_rows, "forecasts": t.num_rows,
               "rejected": dict(sorted(run.rejected.items()))}
        (where / "summary.json").write_text(json.dumps(own | score_output(t, None), indent=2) + "\n")
        listed.append(own | {"dir": f"candidates/{run.bundle.model_version}"})
        # The candidate's forecast of each of the primary's forecast ticks (NaN: it made none).
        c_seq, c_f = t.column("seq").to_numpy(), t.column("forecast").to_numpy()
        pos = np.minimum(np.searchsorted(c_seq, p_seq), max(len(c_seq) - 1, 0))
        col = np.full(len(p_seq), np.nan)
        if len(c_seq):
            hit = c_seq[pos] == p_seq
            col[hit] = c_f[pos[hit]]
        columns.append(col)
    realised = primary.column("realized").to_numpy(zero_copy_only=False)
    versions = [primary_version, *(r.bundle.model_version for r in runs)]
    forecasts = np.column_stack(columns)
    comparison = compare_forecasts(realised, forecasts, versions).to_dict()
    comparison["scored_on"] = "the primary's forecast ticks and realised returns"
    if plots:
        from pipeline.evaluation.plots import plot_paired_differences  # noqa: PLC0415 - matplotlib when asked

        plot_paired_differences(realised, forecasts, versions, out / "plots" / "paired_difference.png")
    return {"candidates": listed, "comparison": comparison}


def report_section(out_dir: Path, summary: dict) -> str:
    """The report's candidate section ("" without candidates)."""
    c = summary.get("comparison")
    if not c:
        return ""

    def fmt(v, spec=".3e"):
        return "–" if v is None else format(v, spec)

    rows = "".join(f"<tr><td>{html.escape(m['model_version'])}</td><td>{m['role']}</td><td>{m['n']:,}</td>"
                   f"<td>{fmt(m['mae'])}</td><td>{fmt(m['rmse'])}</td><td>{fmt(m['r2_vs_random_walk'], '+.4f')}</td>"
                   f"<td>{fmt(m['hit_rate'], '.4f')}</td></tr>" for m in c["models"])
    diffs = "".join(
        f"<tr><td>{html.escape(d['candidate'])}</td><td>{d['loss']}</td><td>{d['n']:,}</td>"
        f"<td>{html.escape(_interval(d))}</td><td>{d.get('block_ticks', '–')}</td>"
        f"<td>{'yes' if d.get('significantly_better') else 'no'}</td></tr>" for d in c["paired_differences"])
    png = out_dir / "plots" / "paired_difference.png"
    img = (f'<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" '
           'alt="cumulative paired loss difference">' if png.is_file() else "")
    return f"""<h2>Candidates against the primary</h2>
<p>Every model on the same ticks (the primary's forecast ticks and realised returns). Paired difference: mean
loss(candidate) − loss(primary) over the {c['paired_ticks']:,} ticks every model forecast, with a 95 % moving-block
bootstrap interval; below 0 the candidate is better, the whole interval below 0 significantly better.</p>
<table><tr><th>model</th><th>role</th><th>scored</th><th>MAE</th><th>RMSE</th><th>R² vs rw</th><th>hit rate</th></tr>
{rows}</table>
<table><tr><th>candidate</th><th>loss</th><th>paired</th><th>mean [95 % interval]</th><th>block</th>
<th>significantly better</th></tr>{diffs}</table>
{img}
"""


def _interval(d: dict) -> str:
    if "ci95" not in d:
        return "–"
    return format_interval(Interval(d["n"], d["mean"], *d["ci95"], d["block_ticks"], d["resamples"]))
