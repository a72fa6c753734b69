"""The one feature function used by training and by streaming.

A tick's features depend on the tick itself and on the previous tick of the
same instrument. Training computes "previous" by shifting an instrument's whole
sequence; streaming takes the first previous values of a micro-batch from the
state table and shifts within the batch. Both go through
:func:`previous_within_groups` and :func:`compute_features`, so the numbers are
the same whichever way the ticks arrive.

Forecast target: the log return of the instrument's price over the next
``horizon`` ticks of that instrument, ``log(price[t + horizon] / price[t])``.
A horizon in ticks (not in time) is well defined on every data set, needs no
clock alignment across venues, and is what a tick-driven operator can join
without waiting on wall time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_SPEC_VERSION = 1
FEATURE_NAMES: tuple[str, ...] = (
    "log_return",  # log(price / previous price of the instrument); 0 on a first tick
    "log_gap_seconds",  # log1p(seconds since the instrument's previous tick); 0 on a first tick
    "log_size",  # log1p(size); 0 when size is absent
    "relative_spread",  # (ask - bid) / mid; 0 without both quotes
    "book_imbalance",  # (bid_size - ask_size) / (bid_size + ask_size); 0 without both sizes
)
N_FEATURES = len(FEATURE_NAMES)
# Normalised features are clipped to this many standard deviations: one
# absurd-but-valid tick must not saturate an instrument's LSTM state for hours.
CLIP_SIGMAS = 10.0


@dataclass(frozen=True)
class FeatureSpec:
    """What a model bundle was trained on; the operator refuses anything else."""

    version: int = FEATURE_SPEC_VERSION
    names: tuple[str, ...] = FEATURE_NAMES

    def to_dict(self) -> dict:
        return {"version": self.version, "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(version=int(d["version"]), names=tuple(d["names"]))


@dataclass(frozen=True)
class Normalisation:
    """Per-feature mean/std of the training window, plus the target's (per output for a model with several:
    arrays (K,), which scale the (n, K) outputs column by column)."""

    mean: np.ndarray  # (N_FEATURES,) float64
    std: np.ndarray  # (N_FEATURES,) float64, > 0
    target_mean: float | np.ndarray
    target_std: float | np.ndarray

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw features (n, F) -> normalised, clipped float32 (n, F)."""
        z = (raw - self.mean) / self.std
        np.clip(z, -CLIP_SIGMAS, CLIP_SIGMAS, out=z)
        return z.astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "target_mean": _number_or_list(self.target_mean),
            "target_std": _number_or_list(self.target_std),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(
            mean=np.asarray(d["mean"], dtype=np.float64),
            std=np.asarray(d["std"], dtype=np.float64),
            target_mean=_float_or_array(d["target_mean"]),
            target_std=_float_or_array(d["target_std"]),
        )

    @classmethod
    def fit(cls, raw: np.ndarray, target: np.ndarray) -> "Normalisation":
        """``target`` (n,): one output, scalar statistics; (n, K): per output (each over its finite values)."""
        mean = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        std = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
        std = np.where(std > 1e-12, std, 1.0)
        if target.ndim == 2:
            stats = [_target_stats(target[:, k]) for k in range(target.shape[1])]
            return cls(mean, std, np.array([m for m, _ in stats]), np.array([s for _, s in stats]))
        return cls(mean, std, *_target_stats(target))


def _target_stats(target: np.ndarray) -> tuple[float, float]:
    t = target[np.isfinite(target)]
    t_mean = float(t.mean()) if len(t) else 0.0
    t_std = float(t.std()) if len(t) > 1 else 1.0
    return t_mean, t_std if t_std > 1e-12 else 1.0


def _number_or_list(v):
    return [float(x) for x in v] if isinstance(v, np.ndarray) else float(v)


def _float_or_array(v):
    return np.asarray(v, dtype=np.float64) if isinstance(v, list) else float(v)


def previous_within_groups(
    values: np.ndarray, group_starts: np.ndarray, initial: np.ndarray
) -> np.ndarray:
    """Previous value of each element within contiguous groups.

    ``values`` is laid out group after group; ``group_starts[g]`` is the index
    of group g's first element. The first element of group g takes
    ``initial[g]`` (what the state table remembers of the instrument), every
    other element the element before it.
    """
    prev = np.empty_like(values)
    if len(values) == 0:
        return prev
    prev[1:] = values[:-1]
    prev[group_starts] = initial
    return prev


def compute_features(
    price: np.ndarray,
    ts: np.ndarray,
    size: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    bid_size: np.ndarray,
    ask_size: np.ndarray,
    prev_price: np.ndarray,
    prev_ts: np.ndarray,
    has_prev: np.ndarray,
) -> np.ndarray:
    """Raw (un-normalised) features, float64 (n, N_FEATURES).

    All inputs are per-tick arrays of validated ticks; absent optional values
    are NaN. ``has_prev`` is False where the instrument has no usable previous
    tick (new instrument, or a session reset).
    """
    n = len(price)
    out = np.zeros((n, N_FEATURES), dtype=np.float64)
    if n == 0:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.log(price / prev_price)
        gap = np.log1p(np.maximum(ts - prev_ts, 0).astype(np.float64) / 1e9)
        out[:, 0] = np.where(has_prev, ret, 0.0)
        out[:, 1] = np.where(has_prev, gap, 0.0)
        out[:, 2] = np.where(np.isfinite(size), np.log1p(np.maximum(size, 0.0)), 0.0)
        mid = 0.5 * (ask + bid)
        spread = (ask - bid) / mid
        out[:, 3] = np.where(np.isfinite(spread) & (mid > 0), spread, 0.0)
        tot = bid_size + ask_size
        imb = (bid_size - ask_size) / tot
        out[:, 4] = np.where(np.isfinite(imb) & (tot > 0), imb, 0.0)
    return out


def log_return_target(price: np.ndarray, group_starts: np.ndarray, horizon: int) -> np.ndarray:
    """``log(price[t + horizon] / price[t])`` within each group; NaN past a group's end."""
    n = len(price)
    target = np.full(n, np.nan, dtype=np.float64)
    if n == 0 or horizon <= 0:
        return target
    ends = np.append(group_starts[1:], n)
    group_end = np.repeat(ends, np.diff(np.append(group_starts, n)))
    idx = np.arange(n) + horizon
    ok = idx < group_end
    target[ok] = np.log(price[idx[ok]] / price[ok])
    return target
