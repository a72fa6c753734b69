"""The model comparison: the moving-block interval against a loop-by-loop reference, its coverage on
autocorrelated losses, and the online scorer's window against per-instrument bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evaluation.compare import (
    ComparisonScorer,
    block_interval,
    block_length,
    compare_forecasts,
    moving_block_means,
)

finite = st.floats(-1e6, 1e6, allow_nan=False)


def reference_means(d: np.ndarray, block: int, resamples: int, seed: int) -> np.ndarray:
    """The moving-block bootstrap as written in a textbook: join whole blocks, cut to n, average."""
    n = len(d)
    k = math.ceil(n / block)
    starts = np.random.default_rng(seed).integers(0, n - block + 1, size=(resamples, k))
    out = []
    for r in range(resamples):
        joined = []
        for s in starts[r]:
            joined.extend(d[s:s + block].tolist())
        out.append(sum(joined[:n]) / n)
    return np.array(out)


def ar1(rng, n: int, phi: float, mean: float) -> np.ndarray:
    e = rng.normal(0, 1, n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return mean + x


@pytest.mark.parametrize("n,block", [(2, 1), (7, 3), (50, 4), (101, 5), (64, 64), (30, 30)])
def test_the_resample_means_equal_the_loop_reference(n, block):
    d = np.random.default_rng(n).normal(0.1, 1.0, n)
    np.testing.assert_allclose(moving_block_means(d, block, 300, seed=11), reference_means(d, block, 300, 11),
                               rtol=1e-10, atol=1e-12)


def test_several_series_are_resampled_with_the_same_draws_as_one():
    d = np.random.default_rng(2).normal(0, 1, (90, 3))
    together = moving_block_means(d, 5, 200, seed=9)
    for j in range(3):
        np.testing.assert_allclose(together[:, j], reference_means(d[:, j], 5, 200, 9), rtol=1e-10)


def test_the_interval_is_the_percentiles_of_the_reference_resamples():
    d = ar1(np.random.default_rng(5), 400, 0.5, 0.2)
    iv = block_interval(d, resamples=500, seed=3)
    assert iv.block == block_length(400) == 8
    ref = np.percentile(reference_means(d, 8, 500, 3), [2.5, 97.5])
    np.testing.assert_allclose([iv.low, iv.high], ref, rtol=1e-10)
    assert iv.mid == pytest.approx(d.mean())
    assert block_interval(d, resamples=500, seed=3) == iv, "a fixed seed: the same window, the same interval"


def test_the_block_rule_is_the_cube_root_rounded_up():
    assert [block_length(n) for n in (1, 2, 8, 9, 27, 28, 1000, 1001, 10_000)] == [1, 2, 2, 3, 3, 4, 10, 11, 22]


def _coverage(block: int | None, trials: int = 200, n: int = 500, phi: float = 0.6, mean: float = 0.3) -> float:
    hits = 0
    for t in range(trials):
        iv = block_interval(ar1(np.random.default_rng(1000 + t), n, phi, mean), block=block, resamples=400,
                            seed=t)
        hits += iv.low <= mean <= iv.high
    return hits / trials


def test_on_autocorrelated_losses_the_block_interval_covers_the_mean_about_as_often_as_it_says():
    assert 0.85 <= _coverage(None) <= 0.99


def test_resampling_single_ticks_would_be_too_narrow_on_the_same_series():
    assert _coverage(1) < 0.8


@given(st.integers(0, 1), finite)
def test_fewer_than_two_differences_give_no_interval(n, c):
    assert block_interval(np.full(n, c)) is None


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 300), finite, st.one_of(st.none(), st.integers(1, 400)))
def test_a_constant_series_gets_exactly_its_value(n, c, block):
    iv = block_interval(np.full(n, c), block=block, resamples=200)
    assert iv.low == iv.high == c and iv.mid == pytest.approx(c, rel=1e-12, abs=1e-300)
    assert iv.significantly_below_zero == (c < 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=200), st.one_of(st.none(), st.integers(1, 500)))
def test_intervals_are_finite_ordered_and_within_the_data(values, block):
    d = np.array(values)
    iv = block_interval(d, block=block, resamples=200)
    assert all(math.isfinite(v) for v in (iv.mid, iv.low, iv.high))
    assert d.min() <= iv.low <= iv.high <= d.max()
    assert 1 <= iv.block <= len(d), "a block longer than the series is the whole series"


class Reference:
    """Per instrument lists, one tick at a time: the matured (realised, forecasts) in tick order."""

    def __init__(self, horizon: int):
        self.h, self.seq, self.matured = horizon, {}, []

    def update(self, keys, group, price, forecasts):
        for g, p, f in zip(group.tolist(), price.tolist(), forecasts.tolist()):
            s = self.seq.setdefault(keys[g], [])
            if len(s) >= self.h:
                p0, f0 = s[-self.h]
                self.matured.append((math.log(p / p0), f0))
            s.append((p, f))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(0, 2), st.integers(0, 10_000),
       st.one_of(st.none(), st.integers(1, 60)))
def test_the_window_holds_the_last_matured_ticks_of_every_model(horizon, window, candidates, seed, block):
    """Windows smaller than a block included: the block is then the whole window."""
    rng = np.random.default_rng(seed)
    versions = ["p", *[f"c{i}" for i in range(candidates)]]
    scorer = ComparisonScorer(horizon, versions[0], versions[1:], window=window, block=block, resamples=50,
                              clock=lambda: 5.0)
    ref = Reference(horizon)
    keys = [(0, "A"), (0, "B"), (1, "A")]
    for _ in range(int(rng.integers(1, 8))):
        group = rng.integers(0, len(keys), int(rng.integers(1, 12)))
        price = 100 * np.exp(rng.normal(0, 0.01, len(group)))
        f = rng.normal(0, 0.01, (len(group), len(versions)))
        f[rng.random(f.shape) < 0.1] = np.nan  # a model that made no forecast for a tick
        scorer.update(keys, group, price, f)
        ref.update(keys, group, price, f)
    last = ref.matured[-window:]
    r = np.array([m[0] for m in last]).reshape(-1)
    fc = np.array([m[1] for m in last]).reshape(-1, len(versions))
    snap = scorer.snapshot()
    expected = compare_forecasts(r, fc, versions, started={v: 5.0 for v in versions}, block=block, resamples=50)
    assert snap.models[0].scored_total == sum(math.isfinite(m[1][0]) for m in ref.matured)
    for got, want in zip(snap.models, expected.models):  # realised: np.log here, math.log there
        g, w = got.to_dict(), want.to_dict()
        assert g.keys() == w.keys()
        for key in g:
            assert g[key] == w[key] if not isinstance(w[key], float) else g[key] == pytest.approx(w[key], rel=1e-9)
    for got, want in zip(snap.differences, expected.differences, strict=True):
        assert (got.candidate, got.loss, got.interval is None) == (want.candidate, want.loss, want.interval is None)
        if got.interval:
            assert [got.interval.mid, got.interval.low, got.interval.high] == pytest.approx(
                [want.interval.mid, want.interval.low, want.interval.high], rel=1e-9, abs=1e-15)
    assert snap.window == len(last)
    assert all(d.interval.block <= snap.paired for d in snap.differences if d.interval)
    assert snap.paired == int(np.isfinite(fc).all(axis=1).sum()) if len(last) else snap.paired == 0
    assert [m.role for m in snap.models] == ["primary"] + ["candidate"] * candidates
    assert [m.started for m in snap.models] == [5.0] * len(versions)


def test_scores_per_model_and_the_paired_difference():
    rng = np.random.default_rng(1)
    r = rng.normal(0, 1, 2000)
    primary = r + rng.normal(0, 1, 2000)
    candidate = r + rng.normal(0, 0.5, 2000)  # closer to the outcome
    snap = compare_forecasts(r, np.column_stack([primary, candidate, primary]), ["p", "c", "same"])
    p, c, same = snap.models
    assert p.mae == pytest.approx(np.abs(primary - r).mean()) and p.rmse == pytest.approx(
        np.sqrt(np.mean((primary - r) ** 2)))
    assert p.r2_vs_random_walk == pytest.approx(1 - np.sum((primary - r) ** 2) / np.sum(r**2))
    assert c.hit_rate == pytest.approx(np.mean(np.sign(candidate) == np.sign(r)))
    by = {(d.candidate, d.loss): d for d in snap.differences}
    assert set(by) == {("c", "absolute"), ("c", "squared"), ("same", "absolute"), ("same", "squared")}
    assert by["c", "squared"].interval.mid == pytest.approx(np.mean((candidate - r) ** 2 - (primary - r) ** 2))
    assert by["c", "absolute"].significantly_better and by["c", "squared"].significantly_better
    assert not by["same", "absolute"].significantly_better
    assert by["same", "absolute"].interval.low == by["same", "absolute"].interval.high == 0.0


def test_only_ticks_every_model_forecast_are_paired():
    r = np.array([0.1, -0.2, 0.3, 0.05, -0.1])
    f = np.array([[0.0, 0.1], [np.nan, -0.2], [0.2, np.nan], [0.0, 0.0], [0.1, -0.1]])
    snap = compare_forecasts(r, f, ["p", "c"])
    assert snap.paired == 3 and snap.models[0].n == 4 and snap.models[1].n == 4
    d = np.abs(f[[0, 3, 4], 1] - r[[0, 3, 4]]) - np.abs(f[[0, 3, 4], 0] - r[[0, 3, 4]])
    assert snap.differences[0].interval.mid == pytest.approx(d.mean())


def test_nothing_scored_yet_is_none_not_nan():
    snap = ComparisonScorer(3, "p", ["c"]).snapshot()
    assert snap.window == 0 and snap.models[0].mae is None and snap.models[0].r2_vs_random_walk is None
    assert all(d.interval is None and not d.significantly_better for d in snap.differences)


def test_two_models_of_one_version_are_refused():
    with pytest.raises(ValueError, match="its own version"):
        ComparisonScorer(3, "p", ["p"])
