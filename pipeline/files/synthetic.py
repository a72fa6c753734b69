"""Synthetic ticks for the demo and the tests: many instruments, skewed activity.

Each instrument has an efficient log price that moves by Gaussian steps plus
a drift from a slowly changing order flow (an AR(1) per instrument); the
order-book imbalance shows that flow through noise, and trades print at the
bid or the ask around the price (bid-ask bounce). Both effects are learnable
from the features (the flow only by remembering past imbalances), so a
trained model should beat the random walk, by a little.
Arrivals are one Poisson process shared by all instruments, each tick going
to an instrument drawn with Zipf weights (s = ``zipf_s``). A few malformed
ticks (NaN, negative or zero prices) are sprinkled in when ``bad_fraction`` > 0.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def generate_ticks(
    n_instruments: int = 50,
    n_ticks: int = 200_000,
    *,
    seed: int = 7,
    zipf_s: float = 1.1,
    ticks_per_second: float = 500.0,
    bad_fraction: float = 0.0005,
) -> pa.Table:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_instruments + 1) ** zipf_s
    weights /= weights.sum()
    inst = rng.choice(n_instruments, size=n_ticks, p=weights)
    ts = START_NS + np.cumsum(rng.exponential(1e9 / ticks_per_second, n_ticks)).astype(np.int64)
    imbalance = np.empty(n_ticks)
    side = rng.choice([-1.0, 1.0], size=n_ticks)
    z = rng.normal(size=n_ticks)
    base = 20.0 * np.exp(rng.normal(size=n_instruments))
    vol = 2e-4 * np.exp(0.3 * rng.normal(size=n_instruments))
    spread_frac = 1e-4 * np.exp(0.3 * rng.normal(size=n_instruments))

    order = np.argsort(inst, kind="stable")
    g = inst[order]
    starts = np.flatnonzero(np.diff(g, prepend=-1))
    flow = _grouped_ar1(rng.normal(0, 0.3, n_ticks), starts, phi=0.97)
    imb_grouped = np.clip(flow + rng.normal(0, 0.5, n_ticks), -0.99, 0.99)
    imbalance[order] = imb_grouped
    step = vol[g] * (z[order] + 0.3 * flow)
    csum = np.cumsum(step)
    group_offset = np.repeat(csum[starts] - step[starts], np.diff(np.append(starts, n_ticks)))
    log_mid = np.log(base[g]) + csum - group_offset
    mid = np.empty(n_ticks)
    mid[order] = np.exp(log_mid)
    half = 0.5 * spread_frac[inst] * mid
    bid, ask = mid - half, mid + half
    price = np.where(side > 0, ask, bid)
    size = np.round(np.exp(rng.normal(4.0, 1.0, n_ticks)))
    bid_size = np.round(100 * (1 + imbalance)) + 1
    ask_size = np.round(100 * (1 - imbalance)) + 1
    if bad_fraction > 0:
        bad = rng.random(n_ticks) < bad_fraction
        price[bad] = rng.choice([np.nan, -1.0, 0.0, np.inf], size=int(bad.sum()))
    names = np.array([f"SYN{i:04d}" for i in range(n_instruments)])
    return pa.table({
        "instrument": pa.array(names[inst]),
        "ts": pa.array(ts, pa.int64()),
        "price": pa.array(price),
        "size": pa.array(size),
        "bid": pa.array(bid),
        "ask": pa.array(ask),
        "bid_size": pa.array(bid_size),
        "ask_size": pa.array(ask_size),
    })


def _grouped_ar1(shocks: np.ndarray, starts: np.ndarray, phi: float) -> np.ndarray:
    """x[t] = phi * x[t-1] + shock[t] within each group (groups laid out contiguously)."""
    out = np.empty_like(shocks)
    is_start = np.zeros(len(shocks), dtype=bool)
    is_start[starts] = True
    prev = 0.0
    for i, (e, first) in enumerate(zip(shocks.tolist(), is_start.tolist())):
        prev = e if first else phi * prev + e
        out[i] = prev
    return out
