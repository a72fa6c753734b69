"""Forecast scoring against realised returns (the plots are in ``pipeline.evaluation.plots``).

Scores (over ticks whose realised value is known):
- MAE, RMSE of the forecast log return;
- direction hit rate: share of ticks where sign(forecast) == sign(realised),
  over ticks where both are non-zero;
- information coefficient: Spearman rank correlation of forecast and realised;
- ``r2_vs_random_walk``: 1 - SSE(model) / SSE(random walk).
The random walk forecasts a zero return: it has MAE/RMSE but no direction and
no rank, so its hit rate and IC are reported as null.

A model with several outputs is scored output by output, each against its own
realised target (the log return over that output's horizon); a quantile
output by its pinball loss and its coverage (share of ticks whose realised
return is at or below the forecast; a calibrated q-quantile covers q).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from operators.features import log_return_target
from operators.outputs import OutputSpec, pinball


@dataclass(frozen=True)
class Score:
    n: int
    mae: float | None
    rmse: float | None
    hit_rate: float | None
    ic: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _average_ranks(a: np.ndarray) -> np.ndarray:
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(len(a), dtype=np.int64)
    inv[sorter] = np.arange(len(a))
    s = a[sorter]
    obs = np.r_[True, s[1:] != s[:-1]]
    dense = np.cumsum(obs)[inv]
    count = np.r_[np.flatnonzero(obs), len(obs)]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3:
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return None
    return float(np.mean((rx - rx.mean()) * (ry - ry.mean())) / (sx * sy))


def score(forecast: np.ndarray, realized: np.ndarray, ic: bool = True) -> Score:
    """``ic=False``: no information coefficient (None), for callers that score often (a rank per call)."""
    ok = np.isfinite(forecast) & np.isfinite(realized)
    f, r = forecast[ok], realized[ok]
    n = int(len(f))
    if n == 0:
        return Score(0, None, None, None, None)
    err = f - r
    directional = (f != 0) & (r != 0)
    hit = float(np.mean(np.sign(f[directional]) == np.sign(r[directional]))) if directional.any() else None
    return Score(n, float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2))), hit,
                 spearman(f, r) if ic else None)


def realized_returns(forecasts: pa.Table, horizon: int) -> np.ndarray:
    """Realised log return over ``horizon`` ticks for each forecast row (NaN at the end).

    Computed over the ticks that were forecast (the valid ones), per
    instrument (and partition if present) in input order, with the same
    target function training uses.
    """
    n = forecasts.num_rows
    if n == 0:
        return np.zeros(0)
    inst = forecasts.column("instrument").combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    key = inst.astype(np.int64)
    if "partition" in forecasts.schema.names:
        key = key + forecasts.column("partition").to_numpy().astype(np.int64) * (int(inst.max()) + 1)
    seq = forecasts.column("seq").to_numpy()
    order = np.lexsort((seq, key))
    starts = np.flatnonzero(np.diff(key[order], prepend=-1))
    target = log_return_target(forecasts.column("price").to_numpy()[order], starts, horizon)
    out = np.empty(n)
    out[order] = target
    return out



def quantile_score(forecast: np.ndarray, realized: np.ndarray, q: float) -> dict:
    """Pinball loss (mean) and coverage of a q-quantile forecast over ticks whose realised value is known."""
    ok = np.isfinite(forecast) & np.isfinite(realized)
    f, r = forecast[ok], realized[ok]
    if not len(f):
        return {"n": 0, "pinball": None, "coverage": None}
    return {"n": int(len(f)), "pinball": float(np.mean(pinball(f, r, q))), "coverage": float(np.mean(r <= f))}


def output_names(forecasts: pa.Table) -> list[str] | None:
    """The outputs of a forecasts table with several (``forecast_<name>`` columns); None for one (``forecast``)."""
    if "forecast" in forecasts.column_names:
        return None
    return [c[len("forecast_"):] for c in forecasts.column_names if c.startswith("forecast_")]


def output_view(forecasts: pa.Table, name: str | None) -> pa.Table:
    """One output's forecasts as ``forecast`` and ``realized`` columns (the table as it is for one output)."""
    if name is None:
        return forecasts
    own = {f"forecast_{name}": "forecast", f"realized_{name}": "realized"}
    keep = [c for c in forecasts.column_names if c in own or not c.startswith(("forecast_", "realized_"))]
    return forecasts.select(keep).rename_columns([own.get(c, c) for c in keep])


def realized_per_output(forecasts: pa.Table, outputs: tuple[OutputSpec, ...]) -> dict[str, np.ndarray]:
    """Each output's realised target, computed once per distinct horizon."""
    by_horizon = {h: realized_returns(forecasts, h) for h in sorted({o.horizon for o in outputs})}
    return {o.name: by_horizon[o.horizon] for o in outputs}
