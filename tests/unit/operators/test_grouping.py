"""The one grouping path: training's sequences and the streaming operator agree tick for tick."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

import operators.forecaster as forecaster_module
from operators.forecaster import Forecaster
from operators.grouping import NO_TS, Preceding, group_ticks, raw_features, refuse_late
from operators.training import sequences_from_table
from operators.validation import RejectReason, TickColumns
from tests.support.strategies import SETTINGS, START, splits

LATE = int(RejectReason.OUT_OF_ORDER)


@st.composite
def unruly_ticks(draw, max_ticks: int = 120):
    """A few instruments, event times that step back now and then, some ticks refused on their values."""
    n_inst = draw(st.integers(1, 5))
    n = draw(st.integers(0, max_ticks))
    inst = draw(st.lists(st.integers(0, n_inst - 1), min_size=n, max_size=n))
    steps = draw(st.lists(st.integers(-2_000_000_000, 3_000_000_000), min_size=n, max_size=n))
    moves = np.array(draw(st.lists(st.floats(-0.02, 0.02), min_size=n, max_size=n)))
    price = 50.0 * np.exp(np.cumsum(moves))
    bad = draw(st.lists(st.sampled_from([None, "nan", "neg", "size"]), min_size=n, max_size=n))
    size = np.array(draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n)), dtype=np.float64)
    for i, b in enumerate(bad):
        if b == "nan":
            price[i] = np.nan
        elif b == "neg":
            price[i] = -price[i]
        elif b == "size":
            size[i] = -1.0
    spread = np.array(draw(st.lists(st.floats(0, 0.01), min_size=n, max_size=n)))
    return pa.table({
        "instrument": pa.array([f"I{i}" for i in inst], pa.string()),
        "ts": pa.array(START + np.cumsum(np.array(steps, dtype=np.int64)), pa.int64()),
        "price": pa.array(price),
        "size": pa.array(size),
        "bid": pa.array(np.abs(price) * (1 - spread)),
        "ask": pa.array(np.abs(price) * (1 + spread)),
    })


def streamed(bundle, ticks: pa.Table, bounds) -> tuple[np.ndarray, np.ndarray]:
    """Reasons and raw features per source row as ``Forecaster.step`` computes them, batch by batch."""
    reasons = np.zeros(ticks.num_rows, dtype=np.uint8)
    raw = np.full((ticks.num_rows, len(bundle.feature_spec.names)), np.nan)
    fc = Forecaster(bundle)
    seen = []

    def recording(cols, groups, preceding, *args):
        out = raw_features(cols, groups, preceding, *args)
        seen.append((groups.order, out[0]))
        return out

    with mock.patch.object(forecaster_module, "raw_features", recording):
        for a, b in bounds:
            seen.clear()
            res = fc.step(ticks.slice(a, b - a))
            reasons[a:b] = res.reasons
            for order, features in seen:
                raw[a + order] = features
    return reasons, raw


@SETTINGS
@given(data=st.data())
def test_training_sequences_equal_what_streaming_computes_in_any_micro_batches(bundle, data):
    ticks = data.draw(unruly_ticks())
    bounds = data.draw(splits(ticks.num_rows))
    seq = sequences_from_table(ticks)
    reasons, raw = streamed(bundle, ticks, bounds)
    np.testing.assert_array_equal(reasons, seq.rejected)  # same refusals, same reasons
    np.testing.assert_array_equal(raw[seq.order], seq.raw_features)  # same raw features, bit for bit
    stepped = np.zeros(ticks.num_rows, dtype=bool)
    stepped[seq.order] = True
    assert np.isnan(raw[~stepped]).all()  # and no features for a refused tick


def columns(instruments, ts) -> TickColumns:
    return TickColumns.from_arrow(pa.table({
        "instrument": pa.array(instruments, pa.string()),
        "ts": pa.array(ts, pa.int64()),
        "price": pa.array([10.0] * len(ts)),
    }))


def test_out_of_order_is_judged_within_a_group_and_against_what_precedes_it():
    # Laid out A, A, A | B, B (codes in order of first arrival): B's first tick is older than A's last,
    # which says nothing about B.
    cols = columns(["A", "B", "A", "B", "A"], [START + 100, START + 50, START + 300, START + 40, START + 200])
    reasons, groups = group_ticks(cols)
    assert groups.order.tolist() == [0, 2, 4, 1, 3] and groups.starts.tolist() == [0, 3]
    kept_groups, kept = refuse_late(cols, groups, Preceding.nothing(2), reasons)
    assert reasons.tolist() == [0, 0, 0, LATE, LATE]  # A at 200 after A at 300, B at 40 after B at 50
    assert kept.tolist() == [0, 1] and kept_groups.order.tolist() == [0, 2, 1]
    assert kept_groups.starts.tolist() == [0, 2]

    # What precedes a group judges its first tick: B's previous tick at 60 makes B's 50 late too; a
    # group with every tick late disappears, and the others keep their group index.
    reasons, groups = group_ticks(cols)
    before = Preceding.nothing(2)
    before.ts[1] = START + 60
    kept_groups, kept = refuse_late(cols, groups, before, reasons)
    assert reasons.tolist() == [0, LATE, 0, LATE, LATE]
    assert kept.tolist() == [0] and kept_groups.order.tolist() == [0, 2]
    assert kept_groups.codes.tolist() == [0] and before.ts[0] == NO_TS


def test_previous_tick_comes_from_what_precedes_the_group_then_from_the_group():
    cols = columns(["A", "B", "A"], [START + 10 * 10**9, START + 5 * 10**9, START + 11 * 10**9])
    _, groups = group_ticks(cols)
    a = 0  # A arrived first
    assert cols.instruments[groups.codes[a]] == "A"
    before = Preceding.nothing(2)
    before.price[a], before.ts[a], before.present[a] = 5.0, START + 9 * 10**9, True
    raw, reset = raw_features(cols, groups, before)
    assert reset is None
    by_row = dict(zip(groups.order.tolist(), raw[:, 0].tolist()))
    assert by_row[0] == np.log(10.0 / 5.0)  # A's first tick against the preceding tick
    assert by_row[2] == 0.0 and by_row[1] == 0.0  # A's second against A's first; B has none
    # A gap over the reset limit starts afresh: no previous tick for A's first tick.
    raw, reset = raw_features(cols, groups, before, reset_gap_ns=10**8)
    assert reset[groups.order == 0].all() and raw[groups.order == 0, 0] == 0.0
