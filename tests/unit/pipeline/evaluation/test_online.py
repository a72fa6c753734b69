"""Online scoring: each forecast is scored against its own instrument's realised return, and the
scorer's memory follows the instruments the process still holds (rebalance, expiry)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evaluation.online import OnlineScorer

H = 3


class ReferenceScorer:
    """Per-instrument lists, one tick at a time: what the scorer must compute."""

    def __init__(self, horizon: int):
        self.h = horizon
        self.seq: dict[tuple[int, str], list[tuple[float, float]]] = {}

    def update(self, keys, group, price, forecast) -> tuple[float, float, int]:
        err = rw = 0.0
        n = 0
        for g, p, f in zip(group.tolist(), price.tolist(), forecast.tolist()):
            s = self.seq.setdefault(keys[g], [])
            if len(s) >= self.h:
                p0, f0 = s[-self.h]
                realised = np.log(p / p0)
                err += abs(f0 - realised)
                rw += abs(realised)
                n += 1
            s.append((p, f))
        return err, rw, n

    def drop_partition(self, partition: int) -> None:
        for k in [k for k in self.seq if k[0] == partition]:
            del self.seq[k]

    def forget(self, keys) -> None:
        for k in keys:
            self.seq.pop(k, None)


def batch(rng, keys):
    # Every key has at least one tick, as in the runner (keys are the groups of the batch).
    group = rng.permutation(np.concatenate([np.arange(len(keys)), rng.integers(0, len(keys), int(rng.integers(0, 9)))]))
    n = len(group)
    price = 100.0 * np.exp(rng.normal(0, 0.01, n))
    forecast = rng.normal(0, 0.01, n)
    return group, price, forecast


def check(scorer, ref, keys, group, price, forecast):
    m = scorer.update(keys, group, price, forecast)
    err, rw, n = ref.update(keys, group, price, forecast)
    assert m.count == n
    np.testing.assert_allclose([m.abs_error, m.random_walk_abs_error], [err, rw], rtol=1e-12, atol=1e-12)


def test_a_new_instrument_after_a_rebalance_does_not_take_a_live_instruments_row():
    """Defect 12: after drop_partition a new instrument got row len(index), another live one's."""
    scorer, ref = OnlineScorer(H, capacity=4), ReferenceScorer(H)
    prices = np.array([10.0, 10.5, 11.0, 11.5])
    fc = np.array([0.01, 0.02, 0.03, 0.04])
    keys = [(0, "A"), (1, "B")]
    check(scorer, ref, keys, np.array([0, 0, 1, 1]), prices, fc)
    scorer.drop_partition(0)
    ref.drop_partition(0)
    # C arrives with ticks of its own; then B's next ticks must be scored against B's prices.
    check(scorer, ref, [(1, "C")], np.zeros(3, dtype=np.int64), np.array([50.0, 51.0, 52.0]), fc[:3])
    check(scorer, ref, [(1, "B")], np.zeros(2, dtype=np.int64), np.array([12.0, 12.5]), fc[:2])
    check(scorer, ref, [(1, "C")], np.zeros(1, dtype=np.int64), np.array([53.0]), fc[:1])


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ops=st.lists(st.sampled_from(["update", "update", "drop", "forget"]),
                                                     min_size=1, max_size=40))
def test_scores_equal_a_per_instrument_reference_through_rebalances_and_expiry(seed, ops):
    rng = np.random.default_rng(seed)
    names = [f"I{i}" for i in range(7)]
    scorer, ref = OnlineScorer(H, capacity=1), ReferenceScorer(H)
    for op in ops:
        if op == "update":
            k = int(rng.integers(1, 6))
            keys = list({(int(rng.integers(0, 3)), names[int(rng.integers(0, 7))]) for _ in range(k)})
            check(scorer, ref, keys, *batch(rng, keys))
        elif op == "drop":
            p = int(rng.integers(0, 3))
            scorer.drop_partition(p)
            ref.drop_partition(p)
        else:
            held = sorted(ref.seq)
            gone = [held[i] for i in rng.permutation(len(held))[: int(rng.integers(0, len(held) + 1))]]
            scorer.forget(gone)
            ref.forget(gone)
        assert len(scorer) == len(ref.seq)


def test_capacity_shrinks_after_instruments_leave_and_grows_again():
    scorer = OnlineScorer(H, capacity=8)
    keys = [(0, f"I{i}") for i in range(4096)]
    scorer.update(keys, np.arange(4096), np.full(4096, 10.0), np.zeros(4096))
    assert scorer.capacity == 4096 and len(scorer) == 4096
    scorer.forget(keys[:4000])
    assert len(scorer) == 96 and scorer.capacity <= 4 * 96
    survivors = keys[4000:]
    scorer.drop_partition(0)
    assert len(scorer) == 0 and scorer.capacity == 8
    # Rows are reused: a fresh instrument scores like a new one.
    m = scorer.update(survivors[:1], np.zeros(H + 1, dtype=np.int64), np.full(H + 1, 10.0), np.zeros(H + 1))
    assert m.count == 1 and len(scorer) == 1


# -- the runner's side tables (no broker needed) -----------------------------------------------------
def test_json_name_cache_is_bounded_and_always_answers():
    import json

    from pipeline.wire.forecasts import JsonNames

    cache = JsonNames(max_size=100)
    for b in range(300):
        names = [f"ORDER-{b}-{i}" for i in range(30)] + ["AAPL", 'we"ird\\ud800']
        got = cache.lookup(names)
        assert all(got[nm] == json.dumps(nm) for nm in names)
        assert len(cache) <= 100


def test_runner_scorer_follows_the_state_table_through_expiry(bundle):
    import pyarrow as pa

    from pipeline.config import RunConfig
    from pipeline.live.runner import Runner
    from pipeline.live.status import score
    from pipeline.metrics import Metrics

    sec = 1_000_000_000
    t0 = 1_700_000_000_000_000_000
    metrics = Metrics()
    runner = Runner(RunConfig(model="unused", checkpoint_uri="", expire_after="60s", max_instruments=50),
                    bundle, metrics)
    assert metrics.registry.get_sample_value("tickcast_state_rows_limit") == 50
    for b in range(40):  # 10 new instruments a batch, each ticking for 3 batches, event time 30 s a batch
        names = [f"N{b - age}-{i}" for age in range(3) if b - age >= 0 for i in range(10)]
        n = len(names)
        ticks = pa.table({"instrument": pa.array(names), "ts": pa.array([t0 + b * 30 * sec] * n, pa.int64()),
                          "price": pa.array(100.0 + np.arange(n)), "size": pa.array([1.0] * n),
                          "partition": pa.array([b % 2] * n, pa.int32())})
        res = runner.forecaster.step(ticks)
        score(runner.scorer, runner.metrics, ticks, res.rows, res.forecasts, res.expired)
        held = {(p, nm) for p, nm in zip(runner.forecaster.state.column("partition")[: len(runner.forecaster.state)]
                                             .tolist(), runner.forecaster.state.instruments)}
        assert set(runner.scorer._keys) == held  # every instrument stepped was scored; none expired stays
    assert runner.forecaster.expired_total > 0
    assert len(runner.forecaster.state) <= 50


def test_a_forecast_is_scored_horizon_ticks_later_against_the_realised_log_return_and_the_random_walk():
    """Worked by hand, horizon 2: A's prices 100, 110, 121, 100 with forecasts 0.1, 0.2, 0.05, 0.0.

    Tick 2 matures tick 0's forecast: realised log(121/100) = 0.190620, error |0.1 - 0.190620| = 0.090620.
    Tick 3 matures tick 1's: realised log(100/110) = -0.095310, error |0.2 + 0.095310| = 0.295310.
    The random walk forecasts 0, so its errors are |realised|: 0.190620 + 0.095310. B (one tick per
    batch, interleaved) matures nothing until its third tick: log(55/50) against 0.3."""
    scorer = OnlineScorer(2)
    a, b = (0, "A"), (1, "B")
    # A's ticks 0 and 1 and B's first tick: nothing is 2 ticks old yet.
    m = scorer.update([a, b], np.array([0, 1, 0]), np.array([100.0, 50.0, 110.0]), np.array([0.1, 0.3, 0.2]))
    assert (m.count, m.abs_error, m.random_walk_abs_error) == (0, 0.0, 0.0)
    # A's tick 2 (its forecast from the ring, from the batch before) and B's second tick.
    m = scorer.update([b, a], np.array([1, 0]), np.array([121.0, 52.0]), np.array([0.05, -0.1]))
    assert m.count == 1
    np.testing.assert_allclose([m.abs_error, m.random_walk_abs_error], [0.0906203596, 0.1906203596], rtol=1e-9)
    # A's tick 3 and B's third tick, which matures B's first forecast.
    m = scorer.update([a, b], np.array([0, 1]), np.array([100.0, 55.0]), np.array([0.0, 0.0]))
    assert m.count == 2
    np.testing.assert_allclose([m.abs_error, m.random_walk_abs_error],
                               [0.2953101798 + 0.2046898202, 0.0953101798 + 0.0953101798], rtol=1e-9)


def test_online_error_of_a_model_with_several_outputs_is_its_first_outputs(multi_bundle):
    """The live metrics score output 0 at its horizon (bundle.horizon): the same sums as scoring that column."""
    import pyarrow as pa

    from pipeline.live.status import score
    from pipeline.metrics import Metrics

    assert multi_bundle.horizon == multi_bundle.output_list[0].horizon
    rng = np.random.default_rng(3)
    runs = []
    for first_only in (False, True):
        scorer, metrics = OnlineScorer(multi_bundle.horizon), Metrics()
        for _ in range(5):
            n = 30
            ticks = pa.table({"instrument": pa.array([f"I{i % 4}" for i in range(n)]),
                              "price": pa.array(100 * np.exp(rng.normal(0, 1e-3, n))),
                              "partition": pa.array([0] * n, pa.int32())})
            forecasts = rng.normal(0, 1e-3, (n, multi_bundle.outputs))
            score(scorer, metrics, ticks, np.arange(n), forecasts[:, 0] if first_only else forecasts)
        runs.append([metrics.registry.get_sample_value(f"tickcast_{m}_total") for m in
                     ("forecast_abs_error", "random_walk_abs_error", "forecasts_scored")])
        rng = np.random.default_rng(3)  # the same batches for the second run
    assert runs[0] == runs[1] and runs[0][2] > 0
