"""A candidate added to a running deployment (the checkpoint holds only the primary) with ``warmup`` set: warmed
by a catch-up that replays the warm-up window for it alone while the primary keeps publishing, joining the
batches once it reached the primary (``pipeline.live.warming``), on the real live loop over the Kafka fakes."""

from __future__ import annotations

import logging
import time
import zlib

from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from operators.forecaster import Forecaster
from pipeline.checkpoint import group_store
from pipeline.wire.ticks import decode_batch
from tests.support.bundles import in_target_units
from tests.support.live_loop import (TICKS, TP0, TP1, all_committed, assert_same_forecasts, forecasts, make_runner,
                                     new_broker, run_until, sample)

SHADOW = "forecasts.shadow"
HOUR_MS = 3_600_000
NOW_MS = int(time.time() * 1000)


def stamp(i: int) -> int:
    """Record timestamps: ticks 0-199 ten hours old, later ones within the last hour (a 5h window starts at
    the first of these, whatever the moment the run asks)."""
    return NOW_MS - 10 * HOUR_MS + i if i < 200 else NOW_MS - HOUR_MS + i


def feed(broker, start: int, stop: int) -> None:
    for i in range(start, stop):
        key, value, _ = TICKS[i]
        broker.append("ticks", zlib.crc32(key) % 2, key, value, timestamp=stamp(i))


def stepped_from(bundle, broker, since: dict[int, int]) -> dict[tuple[int, int], float]:
    """A separate Forecaster of ``bundle`` stepped once over each partition's records from ``since[p]`` on."""
    out = {}
    for p in range(2):
        recs = [r for r in broker.topics["ticks"][p] if r.offset >= since[p]]
        decoded = decode_batch([r.key for r in recs], [r.value for r in recs], [r.timestamp for r in recs])
        idx = decoded.ticks.column("index").to_numpy()
        res = Forecaster(bundle).step(decoded.ticks)
        for row, value in zip(res.rows.tolist(), res.forecasts.tolist()):
            out[(p, recs[idx[row]].offset)] = value
    return out


def window_start(broker, p: int) -> int:
    """Independently: the first offset of partition ``p`` stamped within the last five hours."""
    return next(r.offset for r in broker.topics["ticks"][p] if r.timestamp >= NOW_MS - 5 * HOUR_MS)


def primary_only_reference(bundle, n: int) -> dict:
    broker = new_broker()
    feed(broker, 0, n)
    runner, _ = make_runner(bundle, broker)
    assert run_until(runner, all_committed(broker)) == 0
    return forecasts(broker)


def catchup_never_reads(consumer):
    """The catch-up's reads fail (its probe for the window's start, one record at a time, does not)."""
    if consumer.config.get("group_id", "g") is None and "isolation_level" in consumer.config:
        poll = consumer.poll

        def failing(timeout_ms=0, max_records=None):
            if max_records != 1:
                raise KafkaConnectionError("away")
            return poll(timeout_ms=timeout_ms, max_records=max_records)
        consumer.poll = failing


def joined(runner, bundle2) -> dict[int, int]:
    return {tp.partition: at for (v, tp), at in runner.models.warming.joined.items() if v == bundle2.model_version}


def test_a_candidate_added_is_warmed_on_the_window_while_the_primary_publishes_without_a_gap(
        bundle, bundle2, tmp_path, caplog):
    broker = new_broker()
    feed(broker, 0, 400)
    first, _ = make_runner(bundle, broker, checkpoint_uri=str(tmp_path))
    assert run_until(first, all_committed(broker)) == 0
    resumed = {p: broker.end(tp) for p, tp in enumerate((TP0, TP1))}
    starts = {p: window_start(broker, p) for p in range(2)}
    assert all(0 < starts[p] < resumed[p] for p in range(2)), "the window begins before the resume point"
    feed(broker, 400, 430)  # the primary has work at once: the catch-up chases a moving target

    second, _ = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path), warmup="5h",
                            max_batch_ticks=40)
    fed = []

    def joined_then_more():
        if not fed:
            if len(joined(second, bundle2)) < 2:
                return False
            feed(broker, 430, 800)  # after it joined on both partitions: shadow forecasts for all of these
            fed.append(True)
        return all_committed(broker)()

    with caplog.at_level(logging.INFO, logger="tickcast.run"):
        assert run_until(second, joined_then_more) == 0
    at = joined(second, bundle2)
    for p in range(2):
        assert f"candidate {bundle2.model_version} warms up on ticks/{p}: replaying 5h of input from offset " \
               f"{starts[p]} ({resumed[p] - starts[p]} records before the resume point" in caplog.text
        assert f"candidate {bundle2.model_version} joined ticks/{p}: warm, stepped with the primary from offset " \
               f"{at[p]}" in caplog.text
    assert all(resumed[p] <= at[p] <= broker.end(TP0) + broker.end(TP1) for p in range(2)), at

    # the primary across the restart: exactly the primary-only run's forecasts, each once (no gap)
    assert_same_forecasts(bundle, forecasts(broker), primary_only_reference(bundle, 800))
    # the candidate: a Forecaster stepped over exactly the window's records and everything after, published
    # from the offset it joined at on, nothing before
    expected = stepped_from(bundle2, broker, starts)
    assert_same_forecasts(bundle2, forecasts(broker, SHADOW),
                          {(p, o): f for (p, o), f in expected.items() if o >= at[p]})
    cold = stepped_from(bundle2, broker, resumed)  # what starting empty at the resume point would give
    warm_keys = [k for k in expected if k[1] >= at[k[0]]]
    diffs = in_target_units(bundle2, [expected[k] for k in warm_keys]) - \
        in_target_units(bundle2, [cold[k] for k in warm_keys])
    assert abs(diffs).max() > 1e-2, "the test tells warm from cold"
    assert sample(second, "tickcast_candidate_catchup_records_total", candidate=bundle2.model_version) >= \
        sum(resumed[p] - starts[p] for p in range(2))
    assert sample(second, "tickcast_candidate_catchup_partitions", candidate=bundle2.model_version) == 0
    # joined: the shutdown checkpoint holds the candidate, at the primary's offset
    store = group_store(str(tmp_path), "g")
    for p in range(2):
        assert bundle2.model_version in store.latest("ticks", p).states


def test_a_checkpoint_written_while_the_candidate_catches_up_does_not_hold_it(bundle, bundle2, tmp_path):
    broker = new_broker()
    feed(broker, 0, 400)
    first, _ = make_runner(bundle, broker, checkpoint_uri=str(tmp_path))
    assert run_until(first, all_committed(broker)) == 0

    second, fake = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path), warmup="5h")

    fake.on_consumer = catchup_never_reads
    fed = []

    def stuck_then_more():
        if not fed:
            if not (sample(second, "tickcast_broker_errors_total", operation="catchup") or 0) >= 1:
                return False
            feed(broker, 400, 500)
            fed.append(True)
        return all_committed(broker)()

    assert run_until(second, stuck_then_more) == 0
    assert sample(second, "tickcast_candidate_catchup_records_total", candidate=bundle2.model_version) == 0
    assert forecasts(broker, SHADOW) == {}, "not stepped by the batches while catching up"
    store = group_store(str(tmp_path), "g")
    for p, tp in enumerate((TP0, TP1)):
        loaded = store.latest("ticks", p)
        assert loaded.manifest.offset == broker.end(tp), "a checkpoint written after the restart"
        assert list(loaded.states) == [bundle.model_version]


def test_a_revoke_cancels_the_catch_up_of_that_partition(bundle, bundle2, tmp_path):
    broker = new_broker()
    feed(broker, 0, 400)
    first, _ = make_runner(bundle, broker, checkpoint_uri=str(tmp_path))
    assert run_until(first, all_committed(broker)) == 0
    second, fake = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path), warmup="5h")
    fake.on_consumer = catchup_never_reads
    pid0, pid1 = (second.partitions.part_id("ticks", p) for p in range(2))
    seen = []

    def revoked_while_catching_up():
        warming = second.models.warming
        if not seen:
            if warming.waiting(bundle2.model_version) != {pid0, pid1}:
                return False
            broker.revoke(TP1)
            seen.append(None)
        if TP1 in second.partitions.assigned:
            return False
        seen.append((warming.waiting(bundle2.model_version), warming._catchups[bundle2.model_version].pending()))
        return True

    assert run_until(second, revoked_while_catching_up) == 0
    assert seen[-1] == ({pid0}, {TP0}), "TP1's catch-up ends with the revoke, TP0's goes on"


def test_exactly_once_a_rewind_begins_the_catch_up_again_and_every_forecast_is_published_once(
        bundle, bundle2, tmp_path):
    """An aborted transaction rewinds every partition (restore from the checkpoint, which lacks the candidate):
    its catch-up begins again from the window; each topic holds each forecast once, the references'."""
    broker = new_broker()
    feed(broker, 0, 400)
    first, _ = make_runner(bundle, broker, checkpoint_uri=str(tmp_path), processing="exactly_once")
    assert run_until(first, all_committed(broker)) == 0
    starts = {p: window_start(broker, p) for p in range(2)}
    feed(broker, 400, 700)
    second, fake = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path), warmup="5h",
                               processing="exactly_once", max_batch_ticks=40)

    def fail_third_commit(producer):
        if not fake.producers:
            producer.fail_commits.extend([None, None, KafkaTimeoutError("no answer")])

    fake.on_producer = fail_third_commit
    fed = []

    def joined_then_more():
        if not fed:
            if (sample(second, "tickcast_transactions_total", result="aborted") or 0) < 1 \
                    or len(joined(second, bundle2)) < 2:
                return False
            feed(broker, 700, 800)
            fed.append(True)
        return all_committed(broker)()

    assert run_until(second, joined_then_more) == 0
    assert sample(second, "tickcast_transactions_total", result="aborted") == 1
    assert_same_forecasts(bundle, forecasts(broker), primary_only_reference(bundle, 800))
    expected = stepped_from(bundle2, broker, starts)
    shadow = forecasts(broker, SHADOW)  # each once
    at = joined(second, bundle2)
    assert {k for k in expected if k[1] >= at[k[0]]} <= shadow.keys()
    assert_same_forecasts(bundle2, shadow, {k: expected[k] for k in shadow})
