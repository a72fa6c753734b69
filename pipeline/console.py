"""What the commands print: summaries and tables, as text, from the results the pipeline returns.

One function per result; each returns the text (lines joined by newlines) and
prints nothing, so the words a user reads are in one place and testable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operators.bundle import Bundle
    from operators.training import TrainConfig
    from pipeline.evaluation.report import Comparison
    from pipeline.checkpoint_inventory import PartitionInventory


def format_training_start(rows: int, cfg: TrainConfig) -> str:
    what = (f"horizon {cfg.horizon} ticks" if not cfg.outputs else
            f"{len(cfg.outputs)} outputs: {', '.join(o.name for o in cfg.outputs)}")
    cell = "" if cfg.cell == "lstm" else f" {cfg.cell.upper()}"
    return (f"training on {min(rows, cfg.max_ticks):,} of {rows:,} ticks "
            f"({cfg.layers}{cell} layer(s) x {cfg.hidden}, {what}, {cfg.epochs} epochs)")


def format_epoch(epoch: int, epochs: int, logs: dict, seconds: float) -> str:
    """One training epoch's losses (Keras' ``logs``); ``epoch`` counts from 0."""
    val = f" val_loss={logs['val_loss']:.4f}" if "val_loss" in logs else ""
    return f"  epoch {epoch + 1}/{epochs} loss={logs.get('loss', float('nan')):.4f}{val} ({seconds:.0f}s)"


def format_trained(bundle: Bundle, path: Path, seconds: float) -> str:
    return (f"model {bundle.model_version} written to {path} in {seconds:.1f}s "
            f"({bundle.training['valid_ticks']:,} valid ticks, {bundle.training['instruments']} instruments)")


def format_summary(s: dict, out_dir: Path) -> str:
    """A file backtest's summary (``summary.json``) as the table ``tickcast backtest`` prints."""
    def f(v, spec=".3e"):
        return "-" if v is None else format(v, spec)

    rejected = ", ".join(f"{k}={v}" for k, v in s["rejected"].items()) or "none"
    lines = [
        f"backtest of model {s['model_version']} on {s['input']}",
        (f"  ticks {s['ticks']:,}  forecasts {s['forecasts']:,}  instruments {s['instruments']:,}  "
         f"batches {s['batches']:,} (max {s['max_batch_ticks']:,} ticks)"),
        f"  rejected: {rejected}",
    ]
    if "outputs" in s:  # several outputs: a line per output, each against its own realised target
        lines.append(f"  {'output':16}{'scored':>10}{'MAE':>11}{'MAE rw':>11}{'R^2 vs rw':>11}{'hit rate':>10}"
                     f"{'pinball':>11}{'pinball rw':>11}{'coverage':>10}")
        for o in s["outputs"]:
            m, rw = o["model"], o["random_walk"]
            if o["kind"] == "quantile":
                lines.append(f"  {o['name']:16}{o['scored']:>10,}{'-':>11}{'-':>11}{'-':>11}{'-':>10}"
                             f"{f(m['pinball']):>11}{f(rw['pinball']):>11}{f(m['coverage'], '.3f'):>10}")
            else:
                lines.append(f"  {o['name']:16}{o['scored']:>10,}{f(m['mae']):>11}{f(rw['mae']):>11}"
                             f"{f(o['r2_vs_random_walk'], '+.4f'):>11}{f(m['hit_rate'], '.3f'):>10}"
                             f"{'-':>11}{'-':>11}{'-':>10}")
        lines.append(f"  operator speed: {f(s['operator_ticks_per_second'], ',.0f')} ticks/s")
    else:
        m, rw = s["model"], s["random_walk"]
        lines += [
            f"  scored {s['scored']:,} ticks at horizon {s['horizon_ticks']} ticks",
            f"  {'':14}{'MAE':>11}{'RMSE':>11}{'hit rate':>10}{'IC':>8}",
            f"  {'model':14}{f(m['mae']):>11}{f(m['rmse']):>11}{f(m['hit_rate'], '.3f'):>10}{f(m['ic'], '.3f'):>8}",
            f"  {'random walk':14}{f(rw['mae']):>11}{f(rw['rmse']):>11}{'-':>10}{'-':>8}",
            (f"  R^2 vs random walk: {f(s['r2_vs_random_walk'], '+.4f')}   operator speed: "
             f"{f(s['operator_ticks_per_second'], ',.0f')} ticks/s"),
        ]
    if "comparison" in s:
        lines += format_candidates(s["comparison"])
    lines.append(f"  outputs: {out_dir}/report.html, forecasts.parquet, summary.json, per_instrument.parquet, plots/"
                 + (", candidates/" if "candidates" in s else ""))
    return "\n".join(lines)


def format_candidates(c: dict) -> list[str]:
    """The comparison of a backtest with candidates: each model's scores, each candidate's paired difference."""
    def f(v, spec=".3e"):
        return "-" if v is None else format(v, spec)

    lines = [f"  every model on the primary's {c['window_ticks']:,} scored ticks:",
             f"  {'model':18}{'role':11}{'MAE':>11}{'RMSE':>11}{'R^2 vs rw':>11}{'hit rate':>10}"]
    lines += [f"  {m['model_version']:18}{m['role']:11}{f(m['mae']):>11}{f(m['rmse']):>11}"
              f"{f(m['r2_vs_random_walk'], '+.4f'):>11}{f(m['hit_rate'], '.3f'):>10}" for m in c["models"]]
    lines.append(f"  paired loss(candidate) - loss(primary) over {c['paired_ticks']:,} ticks, 95% moving-block "
                 "interval:")
    for d in c["paired_differences"]:
        iv = f"{d['mean']:+.3e} [{d['ci95'][0]:+.3e}, {d['ci95'][1]:+.3e}]" if "ci95" in d else "-"
        verdict = "significantly better" if d.get("significantly_better") else "not significantly better"
        lines.append(f"  {d['candidate']:18}{d['loss']:10}{iv}  {verdict}")
    return lines


def format_walkforward(s: dict, folds: int, out_dir: Path) -> str:
    """A walk-forward's pooled out-of-sample scores with their 95% intervals (a block per output if several)."""
    where = f"  report: {Path(out_dir) / 'report.html'}; per fold: {Path(out_dir) / 'folds.parquet'}"
    if "outputs" not in s:
        return "\n".join([f"walk-forward over {folds} fold(s), {s['scored']:,} out-of-sample ticks scored",
                          *_pooled_lines(s["confidence"], "  "), where])
    lines = [f"walk-forward over {folds} fold(s), {len(s['outputs'])} outputs, each pooled over the folds and "
             "scored against its own realised log return"]
    for o in s["outputs"]:
        lines.append(f"  {o['name']} (log return over {o['horizon_ticks']} ticks), {o['scored']:,} ticks scored")
        if o["kind"] == "quantile":
            m, rw = o["model"], o["random_walk"]
            if m["pinball"] is None:
                lines.append("    nothing scored")
                continue
            lines.append(f"    pinball model {m['pinball']:.3e}   random walk {rw['pinball']:.3e}   "
                         f"coverage {m['coverage']:.4f} (q = {o['quantile']})")
        else:
            lines += _pooled_lines(o["confidence"], "    ")
    return "\n".join([*lines, where])


def _pooled_lines(c: dict, indent: str) -> list[str]:
    """One mean output's pooled scores with intervals (``c``: ``bootstrap_scores``)."""
    if "mae" not in c:
        return [f"{indent}too few ticks scored for intervals"]

    def ci(key, spec=".3e"):
        v = c[key]
        if v["value"] is None:
            return "-"
        return f"{v['value']:{spec}} [{v['ci95'][0]:{spec}}, {v['ci95'][1]:{spec}}]" if v["ci95"] else \
            f"{v['value']:{spec}}"

    ic = c["ic"]["value"]
    return [f"{indent}MAE model          {ci('mae')}",
            f"{indent}MAE random walk    {ci('mae_random_walk')}",
            f"{indent}MAE model - rw     {ci('mae_minus_random_walk', '+.3e')}",
            f"{indent}R^2 vs random walk {ci('r2_vs_random_walk', '+.4f')}",
            f"{indent}hit rate           {ci('hit_rate', '.4f')}   IC " + ("-" if ic is None else f"{ic:.4f}")]


def format_comparisons(per_output: list[tuple[str, Comparison]], run_a: str, run_b: str, version_a: str | None,
                       version_b: str | None) -> str:
    """Two backtests of a model with several outputs: a line per output (MAE for means, pinball for quantiles)."""
    lines = [f"A: {run_a} (model {version_a})", f"B: {run_b} (model {version_b})",
             f"  {'output':16}{'ticks':>10}{'metric':>9}{'A':>11}{'B':>11}{'B - A':>11}  {'95% interval':<25}"
             f"{'p':>7}  verdict"]
    for name, c in per_output:
        short = "B better" if c.ci95[1] < 0 else "A better" if c.ci95[0] > 0 else "no significant difference"
        lines.append(f"  {name:16}{c.n:>10,}{c.metric:>9}{c.mae_a:>11.4e}{c.mae_b:>11.4e}{c.diff:>+11.3e}  "
                     f"{f'[{c.ci95[0]:+.3e}, {c.ci95[1]:+.3e}]':<25}{c.p_value:>7.4f}  {short}")
    return "\n".join(lines)


def format_comparison(c: Comparison, run_a: str, run_b: str, version_a: str | None, version_b: str | None) -> str:
    """Two backtests of the same input: the paired difference, its interval and the verdict."""
    return "\n".join([
        f"A: {run_a} (model {version_a})",
        f"B: {run_b} (model {version_b})",
        f"  {c.n:,} ticks scored by both; paired, moving-block bootstrap ({c.block_ticks} ticks per block)",
        f"  MAE A {c.mae_a:.4e}   MAE B {c.mae_b:.4e}",
        f"  MAE(B) - MAE(A) = {c.diff:+.3e}, 95% interval [{c.ci95[0]:+.3e}, {c.ci95[1]:+.3e}], p = {c.p_value:.4f}",
        f"  {c.verdict}",
    ])


def format_inventory(rows: list[PartitionInventory]) -> str:
    """A checkpoint store per partition (``tickcast state inspect``), unusable checkpoints under their row."""
    def age(s):
        return "-" if s is None else (f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h")

    lines = [f"{'group/topic/partition':<44} {'offset':>12} {'rows':>10} {'size':>10} {'age':>7} {'model':<18} kept"]
    for r in rows:
        size = "-" if r.bytes is None else f"{r.bytes / 2**20:.1f}MiB"
        lines.append(f"{r.partition:<44} {r.offset if r.offset is not None else '-':>12} "
                     f"{r.rows if r.rows is not None else '-':>10} {size:>10} {age(r.age_s):>7} "
                     f"{r.model_version or '-':<18} {r.checkpoints}")
        if len(r.models) > 1:  # a checkpoint of several models: each one's rows
            lines.extend(f"    model {m.model_version:<18} {m.rows:>10} rows {m.bytes / 2**20:>8.1f}MiB state "
                         f"{m.state}{' (primary)' if i == 0 else ''}" for i, m in enumerate(r.models))
        lines.extend(f"    UNUSABLE {problem}" for problem in r.problems)
    bad = sum(r.unusable for r in rows)
    lines.append(f"{len(rows)} partition(s), {sum(r.checkpoints for r in rows)} checkpoint(s), {bad} unusable"
                 + ("; recovery skips unusable ones and falls back to the next older" if bad else ""))
    return "\n".join(lines)
