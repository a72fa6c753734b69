"""The feature registry and the feature function, on hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from operators.features import (
    FEATURE_NAMES,
    KNOWN_FEATURES,
    REGISTRY,
    FeatureInputs,
    FeatureSpec,
    compute_features,
    log_return_target,
    previous_needed,
    previous_within_groups,
)
from operators.grouping import Preceding, group_ticks, raw_features
from operators.validation import TickColumns

S = 10**9
START = 1_700_000_000 * S  # 2023-11-14 22:13:20 UTC: 80000 seconds into the day
DOCS = Path(__file__).resolve().parents[3] / "docs" / "features.md"


def test_previous_within_groups_uses_state_at_group_starts():
    v = np.array([1.0, 2.0, 3.0, 10.0, 11.0])
    prev = previous_within_groups(v, np.array([0, 3]), np.array([0.5, 9.0]))
    np.testing.assert_array_equal(prev, [0.5, 1.0, 2.0, 9.0, 10.0])


def test_the_five_original_features_by_hand():
    nan = np.nan
    ticks = FeatureInputs(
        price=np.array([100.0, 101.0]), ts=np.array([0, 2_000_000_000]), size=np.array([9.0, nan]),
        bid=np.array([99.0, nan]), ask=np.array([101.0, 102.0]), bid_size=np.array([3.0, nan]),
        ask_size=np.array([1.0, 1.0]), starts=np.array([0]), has_prev=np.array([False, True]),
        prev_price=np.array([nan, 100.0]), prev_ts=np.array([0, 0]),
    )
    f = compute_features(FEATURE_NAMES, ticks)
    np.testing.assert_allclose(f[0], [0.0, 0.0, np.log(10.0), 2.0 / 100.0, 0.5])
    np.testing.assert_allclose(f[1], [np.log(1.01), np.log(3.0), 0.0, 0.0, 0.0])


def test_the_default_spec_is_the_five_features_every_earlier_bundle_names():
    assert FEATURE_NAMES == ("log_return", "log_gap_seconds", "log_size", "relative_spread", "book_imbalance")
    assert FeatureSpec().names == FEATURE_NAMES and FeatureSpec().previous == ()
    assert FeatureSpec().to_dict() == {"version": 1, "names": list(FEATURE_NAMES)}


def _table(ts, price, size=None, bid=None, ask=None, bid_size=None, ask_size=None, instrument=None) -> pa.Table:
    n = len(ts)
    cols = {"instrument": pa.array(instrument or ["A"] * n, pa.string()), "ts": pa.array(ts, pa.int64()),
            "price": pa.array(price, pa.float64())}
    for name, values in (("size", size), ("bid", bid), ("ask", ask), ("bid_size", bid_size),
                         ("ask_size", ask_size)):
        if values is not None:
            cols[name] = pa.array(values, pa.float64(), from_pandas=True)  # NaN: null (absent)
    return pa.table(cols)


def features(table: pa.Table, names, reset_gap_ns=None, preceding=None, after=None) -> np.ndarray:
    """Raw features per source row through the path training and streaming share (one instrument or more)."""
    cols = TickColumns.from_arrow(table)
    _, groups = group_ticks(cols)
    raw, _ = raw_features(cols, groups, preceding or Preceding.nothing(len(groups.starts)), reset_gap_ns,
                          tuple(names), after)
    out = np.full((table.num_rows, len(names)), np.nan)
    out[groups.order] = raw
    return out


nan = np.nan
# One instrument: a first tick; a tick without bid (and size); an unchanged price; a down-tick; then an
# unchanged price after a gap of an hour, which starts a new session when the reset gap is 60 s.
SESSION = _table(
    ts=[START, START + 2 * S, START + 3 * S, START + 4 * S, START + 3604 * S],
    price=[100.0, 101.0, 101.0, 100.5, 100.5],
    size=[9.0, nan, 4.0, 3.0, 1.0],
    bid=[99.0, nan, 100.0, 100.0, 100.0],
    ask=[101.0, 102.0, 102.0, 101.0, 101.0],
    bid_size=[3.0, nan, 1.0, 2.0, nan],
    ask_size=[1.0, 1.0, 1.0, 6.0, 1.0],
)
RESET = 60 * S


def test_trade_sign_by_the_tick_test():
    # first tick 0; up +1; unchanged keeps +1; down -1; first tick of a new session 0 (unchanged price or not)
    np.testing.assert_array_equal(features(SESSION, ["trade_sign"], RESET)[:, 0], [0, 1, 1, -1, 0])
    # Without the reset the last tick is an unchanged price: the previous sign carries on.
    np.testing.assert_array_equal(features(SESSION, ["trade_sign"])[:, 0], [0, 1, 1, -1, -1])


def test_trade_sign_of_unchanged_prices_from_the_first_tick_stays_zero_until_the_price_moves():
    t = _table(ts=[START, START + S, START + 2 * S, START + 3 * S], price=[5.0, 5.0, 5.0, 4.0])
    np.testing.assert_array_equal(features(t, ["trade_sign"])[:, 0], [0, 0, 0, -1])


def test_trade_sign_and_mid_continue_from_what_precedes_the_group():
    t = _table(ts=[START, START + S], price=[10.0, 10.5], bid=[9.0, 10.0], ask=[11.0, 11.0])
    before = Preceding.nothing(1)
    before.price[0], before.ts[0], before.present[0], before.mid[0], before.sign[0] = 10.0, START - S, True, 8.0, -1
    after = {"mid": None, "sign": None}
    f = features(t, ["trade_sign", "mid_log_return"], preceding=before, after=after)
    np.testing.assert_array_equal(f[:, 0], [-1, 1])  # unchanged against the preceding tick: its sign
    np.testing.assert_allclose(f[:, 1], [np.log(10.0 / 8.0), np.log(10.5 / 10.0)])
    np.testing.assert_array_equal(after["sign"], [-1, 1])  # what the state table keeps of each tick
    np.testing.assert_array_equal(after["mid"], [10.0, 10.5])
    # The same preceding values without a usable previous tick (present False) count for nothing.
    before.present[0] = False
    f = features(t, ["trade_sign", "mid_log_return"], preceding=before)
    np.testing.assert_array_equal(f[:, 0], [0, 1])
    np.testing.assert_allclose(f[:, 1], [0.0, np.log(10.5 / 10.0)])


def test_signed_log_size():
    f = features(SESSION, ["signed_log_size"], RESET)[:, 0]
    # sign 0 * log1p(9); size absent; +1 * log1p(4); -1 * log1p(3); sign 0 after the reset
    np.testing.assert_allclose(f, [0.0, 0.0, np.log(5.0), -np.log(4.0), 0.0])


def test_mid_log_return():
    f = features(SESSION, ["mid_log_return"], RESET)[:, 0]
    # first tick; no bid (no mid); previous tick had no mid; 100.5 against 101; reset (same mid, but 0 anyway)
    np.testing.assert_allclose(f, [0.0, 0.0, 0.0, np.log(100.5 / 101.0), 0.0])
    g = features(SESSION, ["mid_log_return"])[:, 0]
    assert g[4] == 0.0  # unchanged mid without a reset: log(1)


def test_microprice_deviation():
    f = features(SESSION, ["microprice_deviation"], RESET)[:, 0]
    # row 0: microprice (99*1 + 101*3)/4 = 100.5 against mid 100; row 2: equal sizes, microprice = mid;
    # row 3: (100*6 + 101*2)/8 = 100.25 against 100.5; rows 1 and 4 lack a quote value
    np.testing.assert_allclose(f, [0.005, 0.0, 0.0, -0.25 / 100.5, 0.0], atol=1e-15)
    t = _table(ts=[START], price=[1.0], bid=[1.0], ask=[2.0], bid_size=[0.0], ask_size=[0.0])
    assert features(t, ["microprice_deviation"])[0, 0] == 0.0  # sizes summing to 0


def test_time_of_day():
    f = features(SESSION, ["time_of_day_sin", "time_of_day_cos"], RESET)
    seconds = np.array([80000, 80002, 80003, 80004, 83604])
    np.testing.assert_allclose(f[:, 0], np.sin(seconds / 86400 * 2 * np.pi), rtol=1e-12)
    np.testing.assert_allclose(f[:, 1], np.cos(seconds / 86400 * 2 * np.pi), rtol=1e-12)
    day0 = 19676 * 86400 * S  # a midnight UTC
    t = _table(ts=[day0, day0 + 6 * 3600 * S, day0 + 12 * 3600 * S, day0 + 86400 * S - 1], price=[1.0] * 4)
    f = features(t, ["time_of_day_sin", "time_of_day_cos"])
    np.testing.assert_allclose(f, [[0, 1], [1, 0], [0, -1], [0, 1]], atol=1e-9)  # first tick or not


def test_features_come_in_the_order_named_and_only_those():
    names = ["time_of_day_cos", "log_size", "trade_sign"]
    f = features(SESSION, names, RESET)
    for j, name in enumerate(names):
        np.testing.assert_array_equal(f[:, j], features(SESSION, [name], RESET)[:, 0])
    assert features(SESSION, []).shape == (5, 0)


def test_only_what_the_named_features_read_is_computed():
    n = 3
    ticks = FeatureInputs(np.ones(n), np.arange(n), np.ones(n), np.ones(n), np.ones(n), np.ones(n), np.ones(n),
                          np.array([0]), np.array([False, True, True]), np.ones(n), np.arange(n))
    compute_features(["log_size", "relative_spread"], ticks)
    assert not {"mid", "prev_mid", "sign", "day_angle"} & set(vars(ticks))
    compute_features(["signed_log_size"], ticks)
    assert {"sign", "log1p_size"} <= set(vars(ticks)) and "mid" not in vars(ticks)


def test_no_ticks_no_features():
    assert features(_table(ts=[], price=[]), KNOWN_FEATURES).shape == (0, len(KNOWN_FEATURES))


def test_what_each_spec_needs_of_the_previous_tick():
    assert previous_needed(FEATURE_NAMES) == ()
    assert previous_needed(["mid_log_return"]) == ("mid",)
    assert previous_needed(["signed_log_size", "mid_log_return", "trade_sign"]) == ("mid", "sign")
    assert previous_needed(["microprice_deviation", "time_of_day_sin", "time_of_day_cos"]) == ()


def test_every_feature_is_in_the_documented_table_with_its_definition():
    text = DOCS.read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == set(KNOWN_FEATURES)
    for name, feature in REGISTRY.items():
        assert feature.definition in rows[name], name
        for need in feature.previous:
            assert need in rows[name].split("|")[3], (name, need)


@pytest.mark.parametrize("name", KNOWN_FEATURES)
def test_every_feature_is_finite_on_absent_values_and_first_ticks(name):
    t = _table(ts=[START, START + S, START + S], price=[1.0, 1.0, 2.0], size=[nan, nan, nan],
               bid=[nan, 1.0, nan], ask=[nan, nan, 3.0], bid_size=[nan, 0.0, nan], ask_size=[nan, nan, 0.0])
    assert np.isfinite(features(t, [name])).all()


def test_log_return_target_stays_within_each_instrument():
    price = np.array([1.0, 2.0, 4.0, 10.0, 20.0])
    t = log_return_target(price, np.array([0, 3]), horizon=1)
    np.testing.assert_allclose(t, [np.log(2), np.log(2), np.nan, np.log(2), np.nan])
    t2 = log_return_target(price, np.array([0, 3]), horizon=2)
    np.testing.assert_allclose(t2, [np.log(4), np.nan, np.nan, np.nan, np.nan])
