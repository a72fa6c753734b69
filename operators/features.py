"""The one feature function used by training and by streaming, over a registry of named tick features.

A tick's features depend on the tick itself and on the previous tick of the
same instrument (its price, event time, mid, trade sign). Training computes
"previous" by shifting an instrument's whole sequence; streaming takes what
precedes a micro-batch from the state table and shifts within the batch. Both
go through :class:`FeatureInputs` and :func:`compute_features`, so the numbers
are the same whichever way the ticks arrive.

Every feature is a :class:`Feature` in :data:`REGISTRY`: its name, a one-line
definition, the tick columns it reads and what it needs from the instrument's
previous tick. A bundle names the features it uses, in its model's input
order (:class:`FeatureSpec`); :func:`compute_features` computes those and only
those. docs/features.md has the table with every edge case.

Edge cases shared by all features: absent optional values (size, quotes) are
NaN and give 0 where a feature needs them; an instrument's first tick, and
the first tick after a session reset (``has_prev`` False), has no previous
tick: every feature that needs one is 0 there, and the trade sign's chain
starts again from 0.

Forecast target: the log return of the instrument's price over the next
``horizon`` ticks of that instrument, ``log(price[t + horizon] / price[t])``.
A horizon in ticks (not in time) is well defined on every data set, needs no
clock alignment across venues, and is what a tick-driven operator can join
without waiting on wall time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

FEATURE_SPEC_VERSION = 1
# Normalised features are clipped to this many standard deviations: one
# absurd-but-valid tick must not saturate an instrument's LSTM state for hours.
CLIP_SIGMAS = 10.0
NS_PER_DAY = 86_400 * 10**9


@dataclass(eq=False)
class FeatureInputs:
    """Validated ticks laid out group after group (a group: one instrument, in its order), what each tick
    has of its previous tick, and what precedes each group. Derived values (mid, trade sign...) are
    computed once, when a feature first asks for them."""

    price: np.ndarray  # (m,) float64, finite and > 0 (validated)
    ts: np.ndarray  # (m,) int64 event time, ns since the Unix epoch (UTC)
    size: np.ndarray  # (m,) float64, NaN where absent
    bid: np.ndarray  # (m,) float64, NaN where absent (likewise ask, bid_size, ask_size)
    ask: np.ndarray
    bid_size: np.ndarray
    ask_size: np.ndarray
    starts: np.ndarray  # (G,) index of each group's first tick
    has_prev: np.ndarray  # (m,) bool: a previous tick the features may use (False: first tick, session reset)
    prev_price: np.ndarray  # (m,) float64 previous tick's price
    prev_ts: np.ndarray  # (m,) int64 previous tick's event time
    before_mid: np.ndarray | None = None  # (G,) mid of the tick before each group (NaN: none, or no quotes)
    before_sign: np.ndarray | None = None  # (G,) int8 trade sign of the tick before each group (0: none)

    def __len__(self) -> int:
        return len(self.price)

    @cached_property
    def mid(self) -> np.ndarray:
        """(bid + ask) / 2 where both quotes are present and it is > 0, else NaN."""
        with np.errstate(invalid="ignore"):
            mid = 0.5 * (self.ask + self.bid)
            return np.where(np.isfinite(mid) & (mid > 0), mid, np.nan)

    @cached_property
    def prev_mid(self) -> np.ndarray:
        """The previous tick's :attr:`mid` (NaN where it had none)."""
        before = self.before_mid if self.before_mid is not None else np.full(len(self.starts), np.nan)
        return previous_within_groups(self.mid, self.starts, before)

    @cached_property
    def sign(self) -> np.ndarray:
        """Trade sign by the tick test, int8: +1/-1 for a price above/below the previous tick's, the
        previous tick's sign for an unchanged price, 0 without a previous tick. The chain runs across
        micro-batches through ``before_sign``."""
        n = len(self.price)
        if n == 0:
            return np.zeros(0, dtype=np.int8)
        with np.errstate(invalid="ignore"):
            d = np.sign(self.price - self.prev_price)
        d = np.where(self.has_prev & np.isfinite(d), d, 0.0).astype(np.int8)
        fixed = (d != 0) | ~self.has_prev  # a tick whose sign does not depend on the one before
        carry = np.flatnonzero(~fixed[self.starts])  # groups whose first tick takes the preceding sign
        if len(carry):
            before = self.before_sign if self.before_sign is not None else np.zeros(len(self.starts), np.int8)
            d[self.starts[carry]] = before[carry]
        fixed[self.starts] = True
        source = np.where(fixed, np.arange(n), 0)
        np.maximum.accumulate(source, out=source)  # each tick: the last fixed tick at or before it
        return d[source]

    @cached_property
    def log1p_size(self) -> np.ndarray:
        """log1p(size), 0 where size is absent."""
        return np.where(np.isfinite(self.size), np.log1p(np.maximum(self.size, 0.0)), 0.0)

    @cached_property
    def day_angle(self) -> np.ndarray:
        """UTC seconds of the day / 86400 * 2 pi (exact on the integer nanoseconds before scaling)."""
        return np.mod(self.ts, NS_PER_DAY).astype(np.float64) * (2 * np.pi / NS_PER_DAY)

    def after(self, what: str) -> np.ndarray:
        """What the state table keeps of each tick for the next one: ``"mid"`` or ``"sign"``."""
        return {"mid": lambda: self.mid, "sign": lambda: self.sign}[what]()


def _log_return(t: FeatureInputs) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t.has_prev, np.log(t.price / t.prev_price), 0.0)


def _log_gap_seconds(t: FeatureInputs) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        gap = np.log1p(np.maximum(t.ts - t.prev_ts, 0).astype(np.float64) / 1e9)
    return np.where(t.has_prev, gap, 0.0)


def _relative_spread(t: FeatureInputs) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = 0.5 * (t.ask + t.bid)
        spread = (t.ask - t.bid) / mid
        return np.where(np.isfinite(spread) & (mid > 0), spread, 0.0)


def _book_imbalance(t: FeatureInputs) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        tot = t.bid_size + t.ask_size
        imb = (t.bid_size - t.ask_size) / tot
        return np.where(np.isfinite(imb) & (tot > 0), imb, 0.0)


def _mid_log_return(t: FeatureInputs) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.log(t.mid / t.prev_mid)
    return np.where(t.has_prev & np.isfinite(ret), ret, 0.0)


def _microprice_deviation(t: FeatureInputs) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        tot = t.bid_size + t.ask_size
        micro = (t.bid * t.ask_size + t.ask * t.bid_size) / tot
        dev = (micro - t.mid) / t.mid
        return np.where(np.isfinite(dev) & (tot > 0), dev, 0.0)


@dataclass(frozen=True)
class Feature:
    """One named tick feature: what it is, what it reads, how it is computed."""

    name: str
    definition: str  # one line, as docs/features.md shows it
    tick: tuple[str, ...]  # tick columns it reads
    previous: tuple[str, ...]  # what it needs of the instrument's previous tick: price, ts, mid, sign
    compute: Callable[[FeatureInputs], np.ndarray]  # (m,) float64


REGISTRY: dict[str, Feature] = {f.name: f for f in (
    Feature("log_return", "log(price / previous price); 0 on a first tick",
            ("price",), ("price",), _log_return),
    Feature("log_gap_seconds", "log1p(seconds since the previous tick, at least 0); 0 on a first tick",
            ("ts",), ("ts",), _log_gap_seconds),
    Feature("log_size", "log1p(size); 0 when size is absent",
            ("size",), (), lambda t: t.log1p_size),
    Feature("relative_spread", "(ask - bid) / mid; 0 without both quotes or with mid <= 0",
            ("bid", "ask"), (), _relative_spread),
    Feature("book_imbalance", "(bid_size - ask_size) / (bid_size + ask_size); 0 without both sizes or with "
            "their sum 0", ("bid_size", "ask_size"), (), _book_imbalance),
    Feature("mid_log_return", "log(mid / previous tick's mid); 0 on a first tick or without both mids",
            ("bid", "ask"), ("mid",), _mid_log_return),
    Feature("microprice_deviation", "(microprice - mid) / mid, microprice = (bid * ask_size + ask * bid_size) "
            "/ (bid_size + ask_size); 0 without all four quote values or with sizes summing to 0",
            ("bid", "ask", "bid_size", "ask_size"), (), _microprice_deviation),
    Feature("trade_sign", "tick test: sign(price - previous price), the previous tick's sign on an unchanged "
            "price; 0 on a first tick", ("price",), ("price", "sign"), lambda t: t.sign.astype(np.float64)),
    Feature("signed_log_size", "trade_sign * log1p(size); 0 when size is absent",
            ("price", "size"), ("price", "sign"), lambda t: t.sign * t.log1p_size),
    Feature("time_of_day_sin", "sin(UTC seconds of the day / 86400 * 2 pi)",
            ("ts",), (), lambda t: np.sin(t.day_angle)),
    Feature("time_of_day_cos", "cos(UTC seconds of the day / 86400 * 2 pi)",
            ("ts",), (), lambda t: np.cos(t.day_angle)),
)}
KNOWN_FEATURES: tuple[str, ...] = tuple(REGISTRY)
# The default spec's features: the five every bundle used before the registry (`tickcast train`'s default).
FEATURE_NAMES: tuple[str, ...] = KNOWN_FEATURES[:5]
N_FEATURES = len(FEATURE_NAMES)
# What the state table always keeps of an instrument's previous tick; anything else a spec's features need
# of it (mid, sign) is kept only for bundles that use such features (see FeatureSpec.previous).
ALWAYS_KEPT = ("price", "ts")
KEPT_IF_NEEDED = ("mid", "sign")


def previous_needed(names: Sequence[str]) -> tuple[str, ...]:
    """What features ``names`` need of the previous tick beyond :data:`ALWAYS_KEPT`, in a fixed order."""
    needed = {p for name in names for p in REGISTRY[name].previous}
    return tuple(p for p in KEPT_IF_NEEDED if p in needed)


@dataclass(frozen=True)
class FeatureSpec:
    """What a model bundle was trained on, in its model's input order; the operator refuses anything else."""

    version: int = FEATURE_SPEC_VERSION
    names: tuple[str, ...] = FEATURE_NAMES

    @property
    def previous(self) -> tuple[str, ...]:
        """What the state table must keep per row for these features, beyond the previous price and time."""
        return previous_needed(self.names)

    def to_dict(self) -> dict:
        return {"version": self.version, "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(version=int(d["version"]), names=tuple(d["names"]))


@dataclass(frozen=True)
class Normalisation:
    """Per-feature mean/std of the training window, plus the target's (per output for a model with several:
    arrays (K,), which scale the (n, K) outputs column by column)."""

    mean: np.ndarray  # (F,) float64, one per feature of the spec
    std: np.ndarray  # (F,) float64, > 0
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


def compute_features(names: Sequence[str], ticks: FeatureInputs) -> np.ndarray:
    """Raw (un-normalised) features ``names`` (registry names), float64 (m, len(names)) in that order.

    Only the named features are computed (and only the derived values they read).
    """
    out = np.zeros((len(ticks), len(names)), dtype=np.float64)
    if len(ticks) == 0:
        return out
    for j, name in enumerate(names):
        out[:, j] = REGISTRY[name].compute(ticks)
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
