"""The timestamp policy, exact duplicates, NaN quotes and the reason labels: each decided once, pinned here."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from operators.forecaster import Forecaster, ForecasterConfig
from operators.validation import (
    REASON_LABELS,
    DecodeReason,
    RejectReason,
    TickColumns,
    TimestampPolicy,
    check_timestamps,
    reject_labels,
)

T0 = 1_700_000_000_000_000_000  # 2023-11-14
SEC = 1_000_000_000
MIN = 60 * SEC
DAY = 86_400 * SEC
Y2099 = 4_070_908_800_000_000_000


def ticks(instruments, ts, record_ts=None, prices=None, **extra):
    n = len(instruments)
    cols = {"instrument": pa.array(instruments, pa.string()), "ts": pa.array(ts, pa.int64()),
            "price": pa.array(prices or [10.0 + 0.01 * i for i in range(n)], pa.float64())}
    if record_ts is not None:
        cols["record_ts"] = pa.array(record_ts, pa.int64())
    cols.update({k: pa.array(v, pa.float64()) for k, v in extra.items()})
    return pa.table(cols)


def test_timestamp_reasons_name_the_problem_and_the_unit():
    record = T0
    cases = [
        (T0, RejectReason.OK),
        (T0 + 4 * MIN, RejectReason.OK),  # within the 5-minute skew
        (T0 + 6 * MIN, RejectReason.TS_AHEAD),
        (Y2099, RejectReason.TS_AHEAD),
        (T0 // 1_000_000_000, RejectReason.TS_UNIT_S),
        (T0 // 1_000_000, RejectReason.TS_UNIT_MS),  # 1700000000000: the ms-for-ns
        (T0 // 1_000, RejectReason.TS_UNIT_US),
        (600_000_000_000_000_000, RejectReason.BAD_TIMESTAMP),  # 1989: before the floor, not another unit
        (0, RejectReason.BAD_TIMESTAMP),
        (-5, RejectReason.BAD_TIMESTAMP),
        (12345, RejectReason.BAD_TIMESTAMP),
    ]
    cols = TickColumns.from_arrow(ticks(["A"] * len(cases), [ts for ts, _ in cases], [record] * len(cases)))
    got = check_timestamps(cols, TimestampPolicy())
    assert [RejectReason(int(r)) for r in got] == [want for _, want in cases]


def test_verdict_uses_the_record_timestamp_not_the_clock_of_the_run():
    """A replay next year (another wall clock) refuses and accepts exactly the same ticks."""
    batch = ticks(["A", "A", "B"], [T0, T0 + 10 * MIN, T0 + MIN], [T0, T0, None])
    verdicts = []
    for built_at in (T0, T0 + 365 * DAY):
        policy = TimestampPolicy(fallback_now_ns=built_at)
        verdicts.append(check_timestamps(TickColumns.from_arrow(batch), policy).tolist())
    assert verdicts[0][:2] == verdicts[1][:2] == [RejectReason.OK, RejectReason.TS_AHEAD]
    # Without a record timestamp (B: a file), "now" is the run's fixed reference.
    assert verdicts[0][2] == RejectReason.OK and verdicts[1][2] == RejectReason.OK


def test_a_tick_dated_2099_moves_no_clock(bundle):
    fc = Forecaster(bundle, ForecasterConfig(expire_after_ns=DAY, watermark_window=1))
    names = ["A", "B", "C"]
    first = fc.step(ticks(names, [T0, T0 + SEC, T0 + 2 * SEC], [T0] * 3))
    assert len(first.rows) == 3
    bad = fc.step(ticks(["A"], [Y2099], [T0 + 3 * SEC]))
    assert bad.reasons.tolist() == [RejectReason.TS_AHEAD] and bad.n_expired == 0
    later = [T0 + 10 * SEC, T0 + 11 * SEC, T0 + 12 * SEC]
    after = fc.step(ticks(names, later, later))
    assert after.reasons.tolist() == [0, 0, 0]  # A is not "out of order" behind 2099
    assert len(after.rows) == 3 and after.n_expired == 0 and len(fc.state) == 3
    assert fc.export_partition(0).schema.metadata[b"tickcast.watermark_ns"] == str(T0 + 12 * SEC).encode()
    assert fc.state.column("tick_count")[fc.state.lookup(0, names)].tolist() == [2, 2, 2]


def test_exact_duplicate_ticks_are_stepped_as_separate_ticks(bundle):
    """Policy: identical prints are legitimate on millisecond feeds; redeliveries are excluded by offsets."""
    one = ticks(["A", "A"], [T0, T0], [T0, T0], prices=[10.0, 10.0], size=[5.0, 5.0])
    fc = Forecaster(bundle)
    res = fc.step(one)
    assert res.rows.tolist() == [0, 1]
    assert fc.state.column("tick_count")[0] == 2
    split = Forecaster(bundle)
    a = split.step(one.slice(0, 1)).forecasts
    b = split.step(one.slice(1, 1)).forecasts
    np.testing.assert_allclose(res.forecasts, np.concatenate([a, b]), rtol=1e-5, atol=1e-7)
    assert res.forecasts[0] != res.forecasts[1]  # the second tick moved the state


def test_nan_quote_in_a_file_column_is_absent_and_inf_is_refused(bundle):
    n = 3
    base = dict(size=[1.0] * n)
    with_nan = ticks(["A"] * n, [T0 + i * SEC for i in range(n)], None, bid=[9.9, np.nan, 9.8], ask=[10.1] * n, **base)
    with_null = with_nan.set_column(with_nan.schema.get_field_index("bid"), "bid",
                                    pa.array([9.9, None, 9.8], pa.float64()))
    a = Forecaster(bundle, ForecasterConfig(now_ns=T0)).step(with_nan)
    b = Forecaster(bundle, ForecasterConfig(now_ns=T0)).step(with_null)
    assert a.reasons.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(a.forecasts, b.forecasts)
    inf = ticks(["A"], [T0], None, bid=[np.inf], ask=[10.1], size=[1.0])
    assert Forecaster(bundle, ForecasterConfig(now_ns=T0)).step(inf).reasons.tolist() == [RejectReason.BAD_QUOTE]


def test_every_reason_has_one_label_and_the_labels_are_distinct():
    decode = [r.label for r in DecodeReason]
    operator = [r.label for r in RejectReason if r != RejectReason.OK]
    assert REASON_LABELS == tuple(decode + operator)
    assert len(set(REASON_LABELS)) == len(REASON_LABELS), "a label names two reasons"
    assert DecodeReason.BAD_JSON.label == "bad_json" and RejectReason.NON_FINITE_PRICE.label == "non_finite_price"


def test_reject_labels_map_operator_codes_in_order():
    codes = np.array([RejectReason.OUT_OF_ORDER, RejectReason.BAD_QUOTE, RejectReason.OUT_OF_ORDER], dtype=np.uint8)
    assert reject_labels(codes) == ["out_of_order", "bad_quote", "out_of_order"]
    assert reject_labels(np.zeros(0, dtype=np.uint8)) == []
