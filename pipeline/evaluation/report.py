"""What a quant reads after a backtest: confidence intervals, breakdowns, comparisons, an HTML report.

Confidence intervals use a moving-block bootstrap over the scored ticks in
input order (ticks are autocorrelated: resampling single ticks would make the
intervals too narrow). Blocks are ``block`` ticks long (default: about
sqrt(n), at least 50); 2,000 resamples; fixed seed, so the same backtest gives
the same intervals. Intervals are 95 % percentile intervals. The information
coefficient gets no interval (a rank correlation per resample is too slow at
millions of ticks); its standard error under independence, 1/sqrt(n), is shown
for scale.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.outputs import pinball
from pipeline.evaluation.candidates import report_section
from pipeline.evaluation.scores import output_names, output_view, score, spearman

RESAMPLES = 2000
SEED = 20260301


def _block_size(n: int, block: int | None) -> int:
    return max(1, min(n, block or max(50, int(np.sqrt(n)))))


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """(K, m) sums of ``values`` (n, m) over consecutive blocks (the last one may be short)."""
    n = len(values)
    idx = np.arange(0, n, block)
    return np.add.reduceat(values, idx, axis=0)


def _resample(sums: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, m) totals: blocks drawn with replacement (as many as there are)."""
    k = len(sums)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, k))
    picks = rng.integers(0, k, size=(resamples, k))
    np.add.at(counts, (np.repeat(np.arange(resamples), k), picks.ravel()), 1)
    return counts @ sums


def bootstrap_scores(forecast: np.ndarray, realized: np.ndarray, block: int | None = None,
                     resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Point values and 95 % intervals: MAE and RMSE of model and random walk, their differences, hit rate."""
    ok = np.isfinite(forecast) & np.isfinite(realized)
    f, r = forecast[ok], realized[ok]
    n = len(f)
    if n < 2:
        return {"n": n}
    b = _block_size(n, block)
    directional = (f != 0) & (r != 0)
    cols = np.column_stack([np.abs(f - r), np.abs(r), (f - r) ** 2, r**2,
                            directional & (np.sign(f) == np.sign(r)), directional, np.ones(n)])
    tot = _resample(_block_sums(cols, b), resamples, seed)
    cnt = tot[:, 6]
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = {
            "mae": tot[:, 0] / cnt, "mae_random_walk": tot[:, 1] / cnt,
            "mae_minus_random_walk": (tot[:, 0] - tot[:, 1]) / cnt,
            "rmse": np.sqrt(tot[:, 2] / cnt), "rmse_random_walk": np.sqrt(tot[:, 3] / cnt),
            "r2_vs_random_walk": 1 - tot[:, 2] / tot[:, 3],
            "hit_rate": tot[:, 4] / tot[:, 5],
        }
    point = {
        "mae": float(cols[:, 0].mean()), "mae_random_walk": float(cols[:, 1].mean()),
        "mae_minus_random_walk": float((cols[:, 0] - cols[:, 1]).mean()),
        "rmse": float(np.sqrt(cols[:, 2].mean())), "rmse_random_walk": float(np.sqrt(cols[:, 3].mean())),
        "r2_vs_random_walk": float(1 - cols[:, 2].sum() / cols[:, 3].sum()) if cols[:, 3].sum() else None,
        "hit_rate": float(cols[:, 4].sum() / cols[:, 5].sum()) if cols[:, 5].sum() else None,
    }
    out = {"n": n, "block_ticks": b, "resamples": resamples}
    for name, value in point.items():
        d = draws[name][np.isfinite(draws[name])]
        ci = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if len(d) else None
        out[name] = {"value": value, "ci95": ci}
    ic = spearman(f, r)
    out["ic"] = {"value": ic, "se_if_independent": float(1 / np.sqrt(n))}
    return out


def _scored(forecasts: pa.Table) -> pa.Table:
    return forecasts.filter(pc.is_finite(forecasts.column("realized")))


def breakdown(forecasts: pa.Table, by: str) -> pa.Table:
    """Scores per instrument (``by="instrument"``) or per UTC hour of day (``by="hour"``)."""
    t = _scored(forecasts)
    if by == "hour":
        codes = (t.column("ts").to_numpy() // 3_600_000_000_000) % 24
        labels = None
    else:
        enc = t.column(by).combine_chunks().dictionary_encode()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        labels = enc.dictionary.to_pylist()
    f, r = t.column("forecast").to_numpy(), t.column("realized").to_numpy()
    order = np.argsort(codes, kind="stable")  # groups become contiguous slices, input order kept inside
    codes, f, r = codes[order], f[order], r[order]
    bounds = np.flatnonzero(np.diff(codes, prepend=-1, append=-2))
    rows = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        s, rw = score(f[a:b], r[a:b]), score(np.zeros(b - a), r[a:b])
        key = int(codes[a]) if labels is None else labels[codes[a]]
        rows.append({by: key, "n": s.n, "mae": s.mae, "mae_random_walk": rw.mae,
                     "mae_ratio": (s.mae / rw.mae) if s.mae is not None and rw.mae else None,
                     "rmse": s.rmse, "rmse_random_walk": rw.rmse, "hit_rate": s.hit_rate, "ic": s.ic})
    rows.sort(key=lambda row: row[by])
    return pa.Table.from_pylist(rows)


@dataclass(frozen=True)
class Comparison:
    n: int
    mae_a: float
    mae_b: float
    diff: float  # mean |err_b| - |err_a|: negative means B is better
    ci95: tuple[float, float]
    p_value: float
    block_ticks: int
    metric: str = "MAE"  # or "pinball" (a quantile output): mae_a, mae_b, diff are then mean pinball losses

    def to_dict(self) -> dict:
        key = "mae" if self.metric == "MAE" else "pinball"
        return {"n": self.n, f"{key}_a": self.mae_a, f"{key}_b": self.mae_b, f"{key}_b_minus_a": self.diff,
                "ci95": list(self.ci95), "p_value": self.p_value, "block_ticks": self.block_ticks,
                "verdict": self.verdict} | ({"metric": self.metric} if self.metric != "MAE" else {})

    @property
    def verdict(self) -> str:
        m = self.metric
        if self.ci95[1] < 0:
            return f"B is better (the 95 % interval of {m}(B) - {m}(A) is below zero)"
        if self.ci95[0] > 0:
            return f"A is better (the 95 % interval of {m}(B) - {m}(A) is above zero)"
        return "no significant difference (the 95 % interval contains zero)"


def _key_columns(t: pa.Table) -> list[str]:
    return ["partition", "offset"] if "offset" in t.column_names else ["instrument", "ts", "seq"]


def compare(a: pa.Table, b: pa.Table, block: int | None = None, resamples: int = RESAMPLES,
            seed: int = SEED, quantile: float | None = None) -> Comparison:
    """Paired comparison on the ticks both runs scored (joined on the tick's identity): of the absolute error,
    or with ``quantile`` of the pinball loss at that quantile."""
    keys = _key_columns(a)
    if keys != _key_columns(b):
        raise ValueError("the two backtests read different kinds of input (file vs topic); compare like with like")
    left = _scored(a).select([*keys, "forecast", "realized"]).rename_columns([*keys, "fa", "ra"])
    right = _scored(b).select([*keys, "forecast"]).rename_columns([*keys, "fb"])
    j = left.join(right, keys=keys, join_type="inner").sort_by([(k, "ascending") for k in keys])
    if j.num_rows < 2:
        raise ValueError(f"the two backtests share {j.num_rows} scored ticks; they must cover the same input")
    r = j.column("ra").to_numpy()
    fa, fb = j.column("fa").to_numpy(), j.column("fb").to_numpy()
    if quantile is None:
        ea, eb = np.abs(fa - r), np.abs(fb - r)
    else:
        ea, eb = pinball(fa, r, quantile), pinball(fb, r, quantile)
    d = eb - ea
    n = len(d)
    blk = _block_size(n, block)
    tot = _resample(_block_sums(np.column_stack([d, np.ones(n)]), blk), resamples, seed)
    means = tot[:, 0] / tot[:, 1]
    lo, hi = float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
    # Two-sided bootstrap p-value for "mean difference = 0": how often the centred resamples reach |mean|.
    centred = means - d.mean()
    p = float(np.mean(np.abs(centred) >= abs(d.mean())))
    return Comparison(n, float(ea.mean()), float(eb.mean()), float(d.mean()), (lo, hi), max(p, 1 / resamples), blk,
                      "MAE" if quantile is None else "pinball")


def compare_runs(dir_a: str | Path, dir_b: str | Path) -> tuple[list[tuple[str | None, Comparison]], str | None,
                                                                   str | None]:
    """Two backtest directories compared (``tickcast compare``): per output (name None for a model with one)
    the comparison, and each run's model version. Runs of models with several outputs compare the outputs
    both have, each by its own loss (MAE for a mean, pinball for a quantile)."""
    from pipeline.config import ConfigError  # noqa: PLC0415

    runs = []
    for d in (dir_a, dir_b):
        path = Path(d) / "forecasts.parquet"
        if not path.is_file():
            raise ConfigError(f"{d} holds no forecasts.parquet; give two `tickcast backtest --out` directories")
        runs.append((pq.read_table(path), json.loads((Path(d) / "summary.json").read_text())))
    (ta, sa), (tb, sb) = runs
    names_a, names_b = output_names(ta), output_names(tb)
    if (names_a is None) != (names_b is None):
        raise ConfigError("one backtest has one output per tick, the other several; compare like with like")
    meaning = {o["name"]: o for o in sa.get("outputs", [])}
    shared = [n for n in names_a if n in (names_b or [])] if names_a is not None else [None]
    if not shared:
        raise ConfigError(f"the two backtests share no output (A: {', '.join(names_a)}; B: {', '.join(names_b)})")
    try:
        per_output = [(n, compare(output_view(ta, n), output_view(tb, n),
                                  quantile=meaning.get(n, {}).get("quantile") if n else None)) for n in shared]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return per_output, sa.get("model_version"), sb.get("model_version")


# -- the HTML report ----------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v, spec=".3e") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return format(v, spec) if isinstance(v, float) else html.escape(str(v))


def _table(t: pa.Table, specs: dict[str, str], limit: int = 60) -> str:
    cols = [c for c in t.column_names if c in specs or c in ("instrument", "hour", "n")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in t.slice(0, limit).to_pylist():
        body.append("<tr>" + "".join(f"<td>{_fmt(row[c], specs.get(c, ','))}</td>" for c in cols) + "</tr>")
    more = f"<p>{t.num_rows - limit} more rows in the Parquet file.</p>" if t.num_rows > limit else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def write_report(out_dir: Path) -> Path:
    """report.html from forecasts.parquet and summary.json in ``out_dir`` (self-contained: images inlined).
    A model with several outputs gets a table of every output's scores, then a section per mean output."""
    from pipeline.evaluation.plots import plain_text_pyplot  # noqa: PLC0415 - matplotlib only when asked

    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    forecasts = pq.read_table(out_dir / "forecasts.parquet")
    rejected = html.escape(json.dumps(summary.get('rejected', {})))
    with plain_text_pyplot() as plt:
        if "outputs" in summary:
            rows = "".join(_output_row(o) for o in summary["outputs"])
            sections = "".join(
                f"<h2>Output {html.escape(o['name'])}: log return over {o['horizon_ticks']} ticks</h2>"
                + _sections(output_view(forecasts, o["name"]), o.get("confidence"), plt)[0].replace("h2>", "h3>")
                for o in summary["outputs"] if o["kind"] == "mean")
            intro = (f"{summary.get('forecasts', 0):,} forecasts of {len(summary['outputs'])} outputs per tick, each "
                     f"scored against its own realised log return · rejected: {rejected}</p>"
                     "<h2>Every output</h2><p>Means: MAE and R² against the random walk (a zero return); quantiles: "
                     "pinball loss (model and random walk) and coverage (share of realised returns at or below the "
                     "forecast; a calibrated q-quantile covers q).</p><table><tr><th>output</th><th>horizon</th>"
                     "<th>scored</th><th>MAE</th><th>MAE rw</th><th>R² vs rw</th><th>hit rate</th><th>pinball</th>"
                     f"<th>pinball rw</th><th>coverage</th></tr>{rows}</table>")
        else:
            sections, ci = _sections(forecasts, summary.get("confidence"), plt)
            intro = (f"{summary.get('forecasts', 0):,} forecasts · {ci.get('n', 0):,} scored at a horizon of "
                     f"{summary.get('horizon_ticks')} ticks · rejected: {rejected}</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tickcast backtest</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Backtest of model {html.escape(str(summary.get('model_version')))}</h1>
<p>Input: <code>{html.escape(str(summary.get('input')))}</code> · {summary.get('ticks', 0):,} ticks ·
{intro}
{sections}{report_section(out_dir, summary)}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _output_row(o: dict) -> str:
    m, rw = o["model"], o["random_walk"]
    cells = [o["name"], o["horizon_ticks"], o["scored"]]
    if o["kind"] == "quantile":
        cells += [None, None, None, None, m["pinball"], rw["pinball"], m["coverage"]]
    else:
        cells += [m["mae"], rw["mae"], o["r2_vs_random_walk"], m["hit_rate"], None, None, None]
    specs = ["", "", ",", ".3e", ".3e", "+.4f", ".3f", ".3e", ".3e", ".3f"]
    return "<tr>" + "".join(f"<td>{_fmt(c, spec)}</td>" for c, spec in zip(cells, specs)) + "</tr>"


def _sections(forecasts: pa.Table, ci: dict | None, plt) -> tuple[str, dict]:
    """One output's scores with intervals, plots and breakdowns (``forecasts``: its forecast/realized columns)."""
    t = _scored(forecasts)
    f, r = t.column("forecast").to_numpy(), t.column("realized").to_numpy()
    ci = ci or bootstrap_scores(f, r)
    per_inst = breakdown(forecasts, "instrument")
    per_hour = breakdown(forecasts, "hour")
    figs = []

    fig, ax = plt.subplots(figsize=(10, 4))
    if len(f):
        step = max(1, len(f) // 4000)
        x = np.arange(len(f))[::step]
        ax.plot(x, np.cumsum(np.abs(r) - np.abs(f - r))[::step], label="random-walk error minus model error")
        ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("cumulative advantage over the random walk (rising = model better)")
    ax.set_xlabel("scored tick (input order)")
    ax.set_ylabel("cumulative |error| saved")
    ax.legend()
    fig.tight_layout()
    figs.append(("Cumulative error vs the random walk", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    directional = (f != 0) & (r != 0)
    if directional.sum() > 10:
        hits = (np.sign(f) == np.sign(r))[directional].astype(float)
        w = max(10, len(hits) // 50)
        roll = np.convolve(hits, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(roll)), roll)
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.set_title(f"direction hit rate, rolling over {w:,} directional ticks (0.5 = coin flip)")
    ax.set_xlabel("directional tick (input order)")
    fig.tight_layout()
    figs.append(("Hit rate over time", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, max(3, 0.25 * min(per_inst.num_rows, 40) + 1)))
    top = per_inst.sort_by([("n", "descending")]).slice(0, 40)
    ratio = [v if v is not None else np.nan for v in top.column("mae_ratio").to_pylist()]
    names = [str(v) for v in top.column("instrument").to_pylist()]
    ax.barh(names[::-1], ratio[::-1], color=["tab:green" if v < 1 else "tab:red" for v in ratio[::-1]])
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("MAE model / MAE random walk (< 1: model better)")
    ax.set_title("per instrument (up to 40 most active)")
    fig.tight_layout()
    figs.append(("Per instrument", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    if len(f):
        pick = np.random.default_rng(0).choice(len(f), size=min(len(f), 20000), replace=False)
        ax.scatter(f[pick], r[pick], s=2, alpha=0.3)
        ax.set_xlim(-(np.percentile(np.abs(f), 99.5) or 1e-9), np.percentile(np.abs(f), 99.5) or 1e-9)
        ax.set_ylim(-(np.percentile(np.abs(r), 99.5) or 1e-9), np.percentile(np.abs(r), 99.5) or 1e-9)
    ax.set_xlabel("forecast log return")
    ax.set_ylabel("realised log return")
    ax.set_title("forecast vs realised")
    fig.tight_layout()
    figs.append(("Forecast vs realised", _png(fig)))
    plt.close(fig)

    def row(label, key, spec=".3e"):
        c = ci.get(key) or {}
        iv = c.get("ci95")
        return (f"<tr><td>{label}</td><td>{_fmt(c.get('value'), spec)}</td>"
                f"<td>{'[' + _fmt(iv[0], spec) + ', ' + _fmt(iv[1], spec) + ']' if iv else '–'}</td></tr>")

    headline = "".join([
        row("MAE, model", "mae"), row("MAE, random walk", "mae_random_walk"),
        row("MAE model − random walk (< 0: model better)", "mae_minus_random_walk"),
        row("RMSE, model", "rmse"), row("RMSE, random walk", "rmse_random_walk"),
        row("R² vs random walk (1 − SSE/SSE_rw)", "r2_vs_random_walk", "+.4f"),
        row("direction hit rate", "hit_rate", ".4f"),
        f"<tr><td>information coefficient (Spearman)</td><td>{_fmt((ci.get('ic') or {}).get('value'), '.4f')}</td>"
        f"<td>s.e. if independent {_fmt((ci.get('ic') or {}).get('se_if_independent'), '.4f')}</td></tr>",
    ])
    specs = {"mae": ".3e", "mae_random_walk": ".3e", "mae_ratio": ".3f", "rmse": ".3e", "rmse_random_walk": ".3e",
             "hit_rate": ".3f", "ic": ".3f"}
    return f"""<h2>Model vs random walk</h2>
<p>95 % intervals from a moving-block bootstrap ({ci.get('block_ticks', '–')} ticks per block,
{ci.get('resamples', '–')} resamples): when the interval of "model − random walk" excludes zero, the
difference is unlikely to be luck.</p>
<table><tr><th>metric</th><th>value</th><th>95 % interval</th></tr>{headline}</table>
{''.join(f'<h2>{html.escape(title)}</h2><img src="{src}" alt="{html.escape(title)}">' for title, src in figs)}
<h2>Per instrument</h2>{_table(per_inst.sort_by([('n', 'descending')]), specs)}
<h2>Per hour of day (UTC)</h2>{_table(per_hour, specs, limit=24)}
""", ci
