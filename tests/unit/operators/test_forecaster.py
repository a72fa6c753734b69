"""Edge cases of the operator: new, absent, bad, empty, single, huge, expiry, reset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.forecaster import Forecaster, ForecasterConfig
from operators.validation import RejectReason
from tests.support.bundles import in_target_units

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def ticks(instruments, prices, ts=None, size=None):
    n = len(instruments)
    return pa.table({
        "instrument": pa.array(instruments, pa.string()),
        "ts": pa.array(ts if ts is not None else [T0 + i * SEC for i in range(n)], pa.int64()),
        "price": pa.array(prices, pa.float64()),
        "size": pa.array(size if size is not None else [100.0] * n, pa.float64()),
    })


def row_bytes(fc: Forecaster, name: str) -> bytes:
    st = fc.state
    r = int(st.lookup(0, [name])[0])
    parts = [st.h(l)[r].tobytes() + st.c(l)[r].tobytes() for l in range(st.shape.layers)]
    parts += [st.column(c)[r].tobytes() for c in ("last_price", "last_ts", "tick_count")]
    return b"".join(parts)


def assert_close(bundle, a, b):
    np.testing.assert_allclose(in_target_units(bundle, a), in_target_units(bundle, b), rtol=1e-5, atol=1e-5)


def test_new_instrument_starts_from_zero_state(bundle, reference):
    fc = Forecaster(bundle)
    t = ticks(["NEW"], [10.0])
    res = fc.step(t)
    _, ref, states = reference.run(t)
    assert_close(bundle, res.forecasts, ref)
    np.testing.assert_allclose(fc.state.h(0)[0], states["NEW"][0], rtol=1e-5, atol=1e-6)
    assert fc.state.column("tick_count")[0] == 1
    assert fc.state.column("last_price")[0] == 10.0 and fc.state.column("last_ts")[0] == T0


def test_absent_instrument_keeps_its_state_bit_for_bit(bundle):
    fc = Forecaster(bundle, ForecasterConfig(initial_capacity=2))
    fc.step(ticks(["A", "B", "A"], [10.0, 20.0, 10.1]))
    before = row_bytes(fc, "B")
    # B absent; many new instruments force the table to grow (copying buffers) twice.
    names = ["A"] + [f"N{i}" for i in range(40)]
    fc.step(ticks(names, [10.2] + [5.0] * 40, ts=[T0 + 10 * SEC + i for i in range(41)]))
    assert fc.state.capacity >= 64
    assert row_bytes(fc, "B") == before


@pytest.mark.parametrize("price, reason", [
    (float("nan"), RejectReason.NON_FINITE_PRICE),
    (float("inf"), RejectReason.NON_FINITE_PRICE),
    (-float("inf"), RejectReason.NON_FINITE_PRICE),
    (-1.0, RejectReason.NON_POSITIVE_PRICE),
    (0.0, RejectReason.NON_POSITIVE_PRICE),
])
def test_bad_price_is_rejected_and_never_touches_state(bundle, reference, price, reason):
    fc = Forecaster(bundle)
    good = ticks(["A", "A", "B"], [10.0, 10.5, 3.0])
    bad = ticks(["A", "A", "B"], [10.0, price, 3.0])
    res = fc.step(bad)
    assert res.reasons.tolist() == [0, int(reason), 0]
    assert res.rows.tolist() == [0, 2]
    # A's state equals a run that never saw the bad tick.
    clean = Forecaster(bundle)
    clean.step(good.take([0, 2]))
    assert row_bytes(fc, "A") == row_bytes(clean, "A")
    assert all(np.isfinite(fc.state.h(0)[: len(fc.state)]).ravel())


def test_other_bad_values_have_their_own_reasons(bundle):
    t = pa.table({
        "instrument": pa.array(["A", None, "", "A", "A", "A", "A"], pa.string()),
        "ts": pa.array([T0, T0, T0, None, -5, T0 + 1, T0 + 2], pa.int64()),
        "price": pa.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        "size": pa.array([1.0, 1.0, 1.0, 1.0, 1.0, float("nan"), -3.0]),
    })
    res = Forecaster(bundle).step(t)
    R = RejectReason
    assert res.reasons.tolist() == [0, R.MISSING_INSTRUMENT, R.MISSING_INSTRUMENT, R.BAD_TIMESTAMP,
                                    R.BAD_TIMESTAMP, R.NON_FINITE_SIZE, R.NEGATIVE_SIZE]


def test_out_of_order_ticks_are_rejected_against_state_and_within_batch(bundle):
    fc = Forecaster(bundle)
    fc.step(ticks(["A"], [10.0], ts=[T0 + 100]))
    res = fc.step(ticks(["A", "A", "A", "A", "B"], [10.0] * 5, ts=[T0 + 50, T0 + 100, T0 + 200, T0 + 150, T0]))
    late = int(RejectReason.OUT_OF_ORDER)
    assert res.reasons.tolist() == [late, 0, 0, late, 0]
    assert fc.state.column("last_ts")[int(fc.state.lookup(0, ["A"])[0])] == T0 + 200


def test_empty_batch_changes_nothing(bundle):
    fc = Forecaster(bundle)
    fc.step(ticks(["A"], [10.0]))
    before = row_bytes(fc, "A")
    res = fc.step(ticks([], []))
    assert len(res.rows) == 0 and len(res.reasons) == 0 and res.n_instruments == 0
    assert row_bytes(fc, "A") == before and len(fc.state) == 1


def test_one_instrument_many_ticks(bundle, reference):
    n = 500
    t = ticks(["ONLY"] * n, list(10 * np.exp(np.cumsum(np.full(n, 1e-3)))))
    fc = Forecaster(bundle)
    res = fc.step(t)
    _, ref, _ = reference.run(t)
    assert res.n_instruments == 1 and len(res.rows) == n
    assert_close(bundle, res.forecasts, ref)


def test_100k_instruments_in_one_batch(bundle):
    n = 100_000
    names = [f"I{i:06d}" for i in range(n)]
    rng = np.random.default_rng(0)
    t = ticks(names, list(rng.uniform(1, 100, n)), ts=[T0 + i for i in range(n)])
    fc = Forecaster(bundle)
    res = fc.step(t)
    assert len(res.rows) == n and len(fc.state) == n and res.n_instruments == n
    # Every instrument's first tick from zero state: one batched Keras call is the reference.
    from operators.training import sequences_from_table

    seq = sequences_from_table(t)
    x = bundle.normalisation.apply(seq.raw_features)
    y = np.asarray(bundle.keras_model(x[:, None, :], training=False)).ravel()
    ref = np.empty(n)
    ref[seq.order] = y * bundle.normalisation.target_std + bundle.normalisation.target_mean
    assert_close(bundle, res.forecasts, ref)
    # A second batch touching 3 of them steps only those rows.
    r0 = row_bytes(fc, "I000003")
    res2 = fc.step(ticks(["I000001", "I099999", "I050000"], [1.0, 2.0, 3.0], ts=[T0 + n] * 3))
    assert res2.n_instruments == 3 and row_bytes(fc, "I000003") == r0


def test_session_reset_zeroes_only_that_instrument(bundle, reference):
    cfg = ForecasterConfig(reset_gap_ns=60 * SEC)
    fc = Forecaster(bundle, cfg)
    fc.step(ticks(["A", "B", "A", "B"], [10.0, 20.0, 10.1, 20.2], ts=[T0, T0, T0 + SEC, T0 + SEC]))
    b_before = row_bytes(fc, "B")
    # A returns after 2 minutes: fresh start, exactly like a brand-new instrument.
    res = fc.step(ticks(["A", "A"], [11.0, 11.1], ts=[T0 + 121 * SEC, T0 + 122 * SEC]))
    fresh = Forecaster(bundle).step(ticks(["A", "A"], [11.0, 11.1], ts=[T0 + 121 * SEC, T0 + 122 * SEC]))
    assert res.n_resets == 1
    assert_close(bundle, res.forecasts, fresh.forecasts)
    assert row_bytes(fc, "B") == b_before
    # Without the reset rule, A's memory would carry over and the forecast would differ.
    carry = Forecaster(bundle)
    carry.step(ticks(["A", "B", "A", "B"], [10.0, 20.0, 10.1, 20.2], ts=[T0, T0, T0 + SEC, T0 + SEC]))
    carried = carry.step(ticks(["A", "A"], [11.0, 11.1], ts=[T0 + 121 * SEC, T0 + 122 * SEC]))
    assert not np.allclose(carried.forecasts, fresh.forecasts, rtol=1e-4, atol=0)


def test_reset_in_the_middle_of_a_batch(bundle):
    cfg = ForecasterConfig(reset_gap_ns=60 * SEC)
    ts = [T0, T0 + SEC, T0 + 200 * SEC, T0 + 201 * SEC]
    whole = Forecaster(bundle, cfg).step(ticks(["A"] * 4, [10.0, 10.1, 11.0, 11.2], ts=ts))
    fresh = Forecaster(bundle).step(ticks(["A"] * 2, [11.0, 11.2], ts=ts[2:]))
    assert whole.n_resets == 1
    assert_close(bundle, whole.forecasts[2:], fresh.forecasts)


def test_expiry_reclaims_idle_rows_without_changing_survivors(bundle):
    cfg = ForecasterConfig(expire_after_ns=60 * SEC, watermark_window=1)
    fc = Forecaster(bundle, cfg)
    fc.step(ticks(["IDLE", "BUSY"], [5.0, 7.0], ts=[T0, T0]))
    fc.step(ticks(["BUSY"], [7.1], ts=[T0 + 60 * SEC]))
    assert len(fc.state) == 2  # idle for 60 s: within expire_after + grace
    busy = row_bytes(fc, "BUSY")
    res = fc.step(ticks(["OTHER"], [3.0], ts=[T0 + 121 * SEC]))
    assert res.n_expired == 1 and fc.expired_total == 1
    assert fc.state.lookup(0, ["IDLE"])[0] == -1
    assert row_bytes(fc, "BUSY") == busy
    # A returning expired instrument starts fresh, as the reset rule says it would anyway.
    back = fc.step(ticks(["IDLE"], [5.5], ts=[T0 + 130 * SEC]))
    fresh = Forecaster(bundle).step(ticks(["IDLE"], [5.5], ts=[T0 + 130 * SEC]))
    assert_close(bundle, back.forecasts, fresh.forecasts)


def test_partitions_keep_separate_rows(bundle):
    t = ticks(["A", "A"], [10.0, 10.0]).append_column("partition", pa.array([0, 1], pa.int32()))
    fc = Forecaster(bundle)
    res = fc.step(t)
    assert len(fc.state) == 2 and res.n_instruments == 2
    np.testing.assert_array_equal(res.forecasts[0], res.forecasts[1])


# -- the instrument limit ------------------------------------------------------------------------
LIMIT = RejectReason.__members__.get("INSTRUMENT_LIMIT")


def test_instrument_limit_reason_code_is_stable():
    assert LIMIT is not None and int(LIMIT) == 13 and LIMIT.label == "instrument_limit"


def test_new_instruments_over_the_limit_are_refused_and_existing_ones_keep_being_served(bundle):
    limited = Forecaster(bundle, ForecasterConfig(max_instruments=2))
    free = Forecaster(bundle)
    first = ticks(["A", "B"], [10.0, 20.0])
    limited.step(first)
    free.step(first)
    t = ticks(["C", "A", "C", "B", "C"], [5.0, 10.1, 5.1, 20.2, 5.2], ts=[T0 + (10 + i) * SEC for i in range(5)])
    res = limited.step(t)
    ref = free.step(t)
    assert res.reasons.tolist() == [LIMIT, 0, LIMIT, 0, LIMIT]  # every tick of C, one verdict
    assert res.rows.tolist() == [1, 3]
    np.testing.assert_array_equal(res.forecasts, ref.forecasts[[1, 3]])  # A and B exactly as without a limit
    assert len(limited.state) == 2 and limited.state.lookup(0, ["C"])[0] == -1
    assert row_bytes(limited, "A") == row_bytes(free, "A")


def test_free_rows_go_to_new_instruments_in_order_of_their_first_tick(bundle):
    fc = Forecaster(bundle, ForecasterConfig(max_instruments=3))
    fc.step(ticks(["OLD"], [1.0]))
    # Names sort differently from their arrival: arrival order decides, not the name.
    t = ticks(["Z", "M", "A", "M", "Z", "A"], [1.0] * 6, ts=[T0 + (5 + i) * SEC for i in range(6)])
    res = fc.step(t)
    assert res.reasons.tolist() == [0, 0, LIMIT, 0, 0, LIMIT]
    again = Forecaster(bundle, ForecasterConfig(max_instruments=3))
    again.step(ticks(["OLD"], [1.0]))
    assert again.step(t).reasons.tolist() == res.reasons.tolist()  # a function of state and input
    # A bad tick does not claim a row; a valid later tick of the same name can.
    fc2 = Forecaster(bundle, ForecasterConfig(max_instruments=1))
    res2 = fc2.step(ticks(["BAD", "GOOD", "BAD"], [float("nan"), 1.0, 2.0], ts=[T0, T0 + SEC, T0 + 2 * SEC]))
    assert res2.reasons.tolist() == [RejectReason.NON_FINITE_PRICE, 0, LIMIT]


def test_an_instrument_refused_at_the_limit_is_served_once_expiry_frees_a_row(bundle):
    fc = Forecaster(bundle, ForecasterConfig(max_instruments=1, expire_after_ns=60 * SEC, watermark_window=1))
    fc.step(ticks(["A"], [1.0], ts=[T0]))
    assert fc.step(ticks(["B"], [1.0], ts=[T0 + 200 * SEC])).reasons.tolist() == [LIMIT]  # A reclaimed after it
    res = fc.step(ticks(["B"], [1.0], ts=[T0 + 201 * SEC]))
    assert res.reasons.tolist() == [0] and fc.state.instruments == ["B"]


def test_ticks_refused_by_the_limit_move_the_clock_even_when_the_rest_of_the_batch_is_late(bundle):
    fc = Forecaster(bundle, ForecasterConfig(max_instruments=2, expire_after_ns=60 * SEC, watermark_window=1))
    fc.step(ticks(["A"], [1.0], ts=[T0]))
    fc.step(ticks(["C"], [1.0], ts=[T0 + 100 * SEC]))  # the table is full; nothing idle long enough yet
    res = fc.step(ticks(["C", "B"], [1.0, 1.0], ts=[T0 + 50 * SEC, T0 + 200 * SEC]))  # C late, B refused
    assert res.reasons.tolist() == [RejectReason.OUT_OF_ORDER, LIMIT]
    assert res.expired == [(0, "A")] and sorted(fc.state.instruments) == ["C"]


def test_step_reports_which_instruments_expired(bundle):
    fc = Forecaster(bundle, ForecasterConfig(expire_after_ns=60 * SEC, watermark_window=1))
    fc.step(ticks(["IDLE", "BUSY"], [5.0, 7.0], ts=[T0, T0]))
    res = fc.step(ticks(["BUSY"], [7.1], ts=[T0 + 121 * SEC]))
    assert res.n_expired == 1 and res.expired == [(0, "IDLE")]


def test_limit_is_checked_by_config():
    with pytest.raises(ValueError, match="max_instruments"):
        ForecasterConfig(max_instruments=0).check()
