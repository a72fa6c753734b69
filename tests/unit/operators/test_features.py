"""The feature function and target, on hand-computed values."""

from __future__ import annotations

import numpy as np

from operators.features import compute_features, log_return_target, previous_within_groups


def test_previous_within_groups_uses_state_at_group_starts():
    v = np.array([1.0, 2.0, 3.0, 10.0, 11.0])
    prev = previous_within_groups(v, np.array([0, 3]), np.array([0.5, 9.0]))
    np.testing.assert_array_equal(prev, [0.5, 1.0, 2.0, 9.0, 10.0])


def test_features_by_hand():
    nan = np.nan
    f = compute_features(
        price=np.array([100.0, 101.0]), ts=np.array([0, 2_000_000_000]), size=np.array([9.0, nan]),
        bid=np.array([99.0, nan]), ask=np.array([101.0, 102.0]), bid_size=np.array([3.0, nan]),
        ask_size=np.array([1.0, 1.0]), prev_price=np.array([nan, 100.0]), prev_ts=np.array([0, 0]),
        has_prev=np.array([False, True]),
    )
    np.testing.assert_allclose(f[0], [0.0, 0.0, np.log(10.0), 2.0 / 100.0, 0.5])
    np.testing.assert_allclose(f[1], [np.log(1.01), np.log(3.0), 0.0, 0.0, 0.0])


def test_log_return_target_stays_within_each_instrument():
    price = np.array([1.0, 2.0, 4.0, 10.0, 20.0])
    t = log_return_target(price, np.array([0, 3]), horizon=1)
    np.testing.assert_allclose(t, [np.log(2), np.log(2), np.nan, np.log(2), np.nan])
    t2 = log_return_target(price, np.array([0, 3]), horizon=2)
    np.testing.assert_allclose(t2, [np.log(4), np.nan, np.nan, np.nan, np.nan])
