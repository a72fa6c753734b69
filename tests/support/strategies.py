"""Hypothesis strategies shared by the property tests: random tick streams and random batch cuts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

START = 1_700_000_000_000_000_000
# Short codes, and names past the 16 bytes the instrument index holds as words (operators.index), some
# equal in those 16 bytes: the index must still tell them apart.
NAMES = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:", min_size=1, max_size=6) | st.sampled_from(
    ["BINANCE:BTCUSDT-PERP", "BINANCE:BTCUSDT-PERP-2", "BINANCE:BTCUSDT-QUARTER", "ÉÉÉÉÉÉÉÉ", "ÉÉÉÉÉÉÉÉX"])


@st.composite
def tick_streams(draw, max_ticks: int = 150):
    n_inst = draw(st.integers(1, 7))
    names = draw(st.lists(NAMES, min_size=n_inst, max_size=n_inst, unique=True))
    n = draw(st.integers(0, max_ticks))
    inst = np.array(draw(st.lists(st.integers(0, n_inst - 1), min_size=n, max_size=n)), dtype=np.int64)
    moves = np.array(draw(st.lists(st.floats(-0.02, 0.02), min_size=n, max_size=n)))
    gaps = np.array(draw(st.lists(st.integers(0, 3_000_000_000), min_size=n, max_size=n)), dtype=np.int64)
    sizes = np.array(draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n)), dtype=np.float64)
    with_quotes = draw(st.booleans())
    price = 50.0 * np.exp(np.cumsum(moves))
    columns = {
        "instrument": pa.array([names[i] for i in inst], pa.string()),
        "ts": pa.array(START + np.cumsum(gaps), pa.int64()),
        "price": pa.array(price),
        "size": pa.array(sizes),
    }
    if with_quotes:
        spread = np.array(draw(st.lists(st.floats(0, 0.01), min_size=n, max_size=n)))
        columns["bid"] = pa.array(price * (1 - spread))
        columns["ask"] = pa.array(price * (1 + spread))
        columns["bid_size"] = pa.array(sizes + 1)
        columns["ask_size"] = pa.array(np.flip(sizes) + 1)
    return pa.table(columns)


@st.composite
def splits(draw, n: int):
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=12))))
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reinterleaved(ticks: pa.Table, rnd) -> tuple[pa.Table, np.ndarray]:
    """The same ticks merged in another random order that keeps each instrument's own order; and, for each
    row of the result, the row of ``ticks`` it came from."""
    n = ticks.num_rows
    inst = ticks.column("instrument").to_pylist()
    perm = np.array(sorted(range(n), key=lambda _: rnd.random()), dtype=np.int64)
    origin = np.empty(n, dtype=np.int64)
    for name in set(inst):
        idx = np.array([i for i, s in enumerate(inst) if s == name])
        slots = np.sort(np.flatnonzero(np.isin(perm, idx)))
        origin[slots] = idx
    return ticks.take(pa.array(origin, pa.int64())), origin
