"""The pipelined loop (``max_batches_in_flight``) and the batch size the latency budget allows, against the
in-memory Kafka fakes: the next batch is stepped while the previous one's acknowledgements (or transaction
commit) are pending, yet offsets are committed in input order and only for acknowledged batches.
"""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from pipeline.live import runner as runner_module
from pipeline.live.inflight import BatchSizer
from tests.support.live_loop import (
    TP0,
    TP1,
    all_committed,
    assert_same_forecasts,
    feed,
    forecasts,
    make_runner,
    new_broker,
    reference,
    run_until,
    sample,
)


def watch_steps(runner, before=None) -> list[int]:
    """Ticks of every operator step, in order; ``before(n_steps_so_far)`` runs before each step."""
    sizes: list[int] = []
    step = runner.forecaster.step

    def watched(ticks):
        if before is not None:
            before(len(sizes))
        sizes.append(ticks.num_rows)
        return step(ticks)

    runner.forecaster.step = watched
    return sizes


def sources(producer, futures) -> set[tuple[int, int]]:
    """(partition, offset) of the input record behind each forecast send among ``futures``."""
    by_future = {id(f): s for s, f in zip(producer.sent, producer.futures)}
    out = set()
    for fut in futures:
        topic, _key, value, _headers = by_future[id(fut)]
        if topic == "forecasts":
            m = json.loads(value)
            out.add((m["partition"], m["offset"]))
    return out


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_at_most_max_batches_in_flight_are_stepped_and_not_committed(bundle, depth):
    broker = new_broker()
    feed(broker)
    # A budget no step misses, so batches are cut by max_batch_ticks alone, however loaded the machine.
    runner, fake = make_runner(bundle, broker, max_batches_in_flight=depth, max_batch_ticks=50, max_batch_ms=60_000)
    fake.on_producer = lambda p: setattr(p, "hold_acks", True)  # acknowledged only when the loop flushes
    in_flight_at_step = []
    watch_steps(runner, before=lambda _n: in_flight_at_step.append(len(runner.inflight)))
    assert run_until(runner, all_committed(broker)) == 0
    assert len(in_flight_at_step) == 8, "400 ticks in batches of 50"
    # While a batch is stepped, at most depth - 1 older ones are dispatched and not committed, and (with
    # acknowledgements held back) the pipeline does fill to that. depth 1: one batch at a time.
    assert max(in_flight_at_step) == depth - 1
    assert len(forecasts(broker)) == 400


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_exactly_once_keeps_one_transaction_open_at_a_time_whatever_the_depth(bundle, tmp_path, depth):
    """The open transaction is settled before the next one begins; with depth > 1 its commit runs while the
    next batch is stepped, never two open."""
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, processing="exactly_once", checkpoint_uri=str(tmp_path),
                               max_batches_in_flight=depth, max_batch_ticks=50, max_batch_ms=60_000)
    events = []

    def watch(producer):
        begin, commit = producer.begin_transaction, producer.commit_transaction
        producer.begin_transaction = lambda: (events.append("begin"), begin())[1]
        producer.commit_transaction = lambda: (time.sleep(0.02), commit(), events.append("committed"))[1]

    fake.on_producer = watch
    in_flight_at_step = []
    watch_steps(runner, before=lambda _n: in_flight_at_step.append(len(runner.inflight)))
    assert run_until(runner, all_committed(broker)) == 0
    assert events == ["begin", "committed"] * 8, "a transaction began before the one before it was committed"
    assert max(in_flight_at_step) == min(depth, 2) - 1
    assert len(forecasts(broker)) == 400


def test_acknowledgements_handed_over_only_when_asked_for_are_asked_for_while_the_next_batch_is_collected(bundle):
    """librdkafka completes a send's future only inside ``poll`` or ``flush`` (the confluent adapter's
    ``serve_deliveries``). Pipelined, the loop asks while it collects the next batch, so a batch whose
    acknowledgements are in is committed then, not only when the batch after it is dispatched."""
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, max_batches_in_flight=2, max_batch_ticks=50, max_batch_ms=60_000)

    def librdkafka_like(producer):
        producer.hold_acks = True
        producer.serve_deliveries = lambda: producer.release(producer.futures)

    fake.on_producer = librdkafka_like
    in_flight_at_step = []
    watch_steps(runner, before=lambda _n: in_flight_at_step.append(len(runner.inflight)))
    assert run_until(runner, all_committed(broker)) == 0
    assert len(in_flight_at_step) == 8 and max(in_flight_at_step) == 0, in_flight_at_step
    assert len(forecasts(broker)) == 400


def test_offsets_are_committed_in_order_when_acknowledgements_arrive_out_of_order(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, max_batches_in_flight=3, max_batch_ticks=50, max_batch_ms=60_000)
    fake.on_producer = lambda p: setattr(p, "hold_acks", True)
    out_of_order = []

    def ack_newest_first(_n):
        # The newest batch in flight is acknowledged before the older one: a newer batch's acks come first.
        if len(runner.inflight) == 2:
            older, newer = runner.inflight.batches[0], runner.inflight.batches[1]
            fake.producers[-1].release(f for _, f in newer.pending)
            out_of_order.append(newer.acknowledged() and not older.acknowledged())

    watch_steps(runner, before=ack_newest_first)
    commits = []

    def check(offsets):
        p = fake.producers[-1]
        acked = sources(p, [f for f in p.futures if f.is_done])
        covered = {(tp.partition, o) for tp, meta in offsets.items() for o in range(meta.offset)}
        commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})
        assert covered <= acked, "offsets committed past a forecast not yet acknowledged"

    fake.on_consumer = lambda c: setattr(c, "before_commit", check)
    assert run_until(runner, all_committed(broker)) == 0
    assert out_of_order and all(out_of_order), "newer batches were acknowledged before older ones"
    assert len(commits) == 8, "one commit per batch"
    for p in (0, 1):
        seen = [c[p] for c in commits if p in c]
        assert seen == sorted(seen), "offsets committed in input order"
    assert len(forecasts(broker)) == 400


def test_a_send_failing_in_one_batch_while_the_next_is_stepped_is_resent_before_anything_is_committed(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, max_batches_in_flight=2, max_batch_ticks=100)
    failures = [NotLeaderForPartitionError()]

    def faults(producer):
        producer.hold_acks = True
        producer.refuse = lambda topic, *_a: failures.pop() if topic == "forecasts" and failures else None

    fake.on_producer = faults
    sizes = watch_steps(runner)
    at_commit = []
    fake.on_consumer = lambda c: setattr(c, "before_commit", lambda offsets: at_commit.append(
        (sum(m.offset for m in offsets.values()), len(sizes), len(broker.records("forecasts")))))
    assert run_until(runner, all_committed(broker)) == 0
    covered, steps, published = at_commit[0]
    assert steps == 2, "the next batch was stepped while the first one's failed send was pending"
    assert covered == sizes[0], "the first commit covers the first batch only"
    assert published == sizes[0], "its refused forecast was sent again and acknowledged before the commit"
    assert len(forecasts(broker)) == 400, "each forecast out once"
    assert sample(runner, "tickcast_publish_errors_total", reason="retriable") == 1


def test_exactly_once_an_abort_rewinds_the_batch_in_flight_and_the_one_stepped_after_it(bundle, tmp_path):
    """Batch 2's commit (on the helper thread) fails while batch 3 is stepped: both are rewound, and every
    forecast comes out once with the numbers of an undisturbed sequential run."""
    expected = reference(bundle)
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, processing="exactly_once", checkpoint_uri=str(tmp_path),
                               max_batch_ticks=150, max_batches_in_flight=2)
    sizes = watch_steps(runner)
    steps_at_abort = []

    def faults(producer):
        if fake.producers:
            return
        producer.fail_commits.extend([None, KafkaTimeoutError("no answer")])
        abort = producer.abort_transaction
        producer.abort_transaction = lambda: (steps_at_abort.append(len(sizes)), abort())

    fake.on_producer = faults
    assert run_until(runner, all_committed(broker)) == 0
    assert steps_at_abort == [3], "batch 3 was stepped when batch 2's transaction was aborted"
    assert sample(runner, "tickcast_transactions_total", result="aborted") == 1
    assert sample(runner, "tickcast_partition_restores_total", source="replay_from_start") >= 1
    assert_same_forecasts(bundle, forecasts(broker), expected)


def test_at_least_once_a_revoke_with_a_batch_in_flight_commits_nothing_for_the_revoked_partition(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, max_batches_in_flight=2, max_batch_ticks=1000)
    watch_steps(runner, before=lambda n: broker.revoke(TP1) if n == 0 else None)  # at the next poll
    commits = []
    fake.on_consumer = lambda c: setattr(c, "before_commit", lambda offsets: commits.append(set(offsets)))
    assert run_until(runner, lambda: TP1 not in runner.partitions.assigned
                     and broker.committed.get(TP0) == broker.end(TP0)) == 0
    assert commits == [{TP0}], "the batch in flight held both partitions; only the kept one is committed"
    assert TP1 not in broker.committed


def test_exactly_once_a_revoke_waits_for_the_open_transaction_so_the_next_owner_sees_it(bundle, tmp_path, caplog):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, processing="exactly_once", checkpoint_uri=str(tmp_path),
                               max_batches_in_flight=2, max_batch_ticks=1000)

    def slow_commits(producer):
        commit = producer.commit_transaction
        producer.commit_transaction = lambda: (time.sleep(0.5), commit())

    fake.on_producer = slow_commits
    watch_steps(runner, before=lambda n: broker.revoke(TP1) if n == 0 else None)
    at_revoke = []
    on_revoked = runner.on_revoked
    runner.on_revoked = lambda revoked: (on_revoked(revoked), at_revoke.append(dict(broker.committed)))
    with caplog.at_level(logging.WARNING, logger="tickcast.run"):
        assert run_until(runner, lambda: bool(at_revoke) and broker.committed.get(TP0) == broker.end(TP0)) == 0
    assert at_revoke[0].get(TP1) == broker.end(TP1), "the transaction holding TP1's offsets ended before the revoke"
    assert "not checkpointing: the last batch was not committed" not in caplog.text, \
        "the revoke checkpoint was taken of committed state"
    assert len(forecasts(broker)) == 400, "each forecast once"


def test_periodic_checkpoints_are_taken_while_input_flows_with_batches_in_flight(bundle, tmp_path):
    """A checkpoint holds committed state only: when one is due, the batches in flight are settled first,
    then it is taken, without waiting for the input to pause."""
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, checkpoint_uri=str(tmp_path), checkpoint_every_batches=2,
                               checkpoint_interval_s=0, max_batch_ticks=50, max_batches_in_flight=2,
                               max_batch_ms=60_000)  # batches cut by max_batch_ticks alone, however loaded
    fake.on_producer = lambda p: setattr(p, "hold_acks", True)
    sizes = watch_steps(runner)
    snapshots_at = []
    snapshots = runner.checkpointer.snapshots

    def watched(partitions):
        assert not runner.partitions.dirty and not runner.inflight, "a snapshot of state ahead of the commits"
        snapshots_at.append(len(sizes))
        return snapshots(partitions)

    runner.checkpointer.snapshots = watched
    assert run_until(runner, all_committed(broker)) == 0
    assert len(sizes) == 8
    assert [n for n in snapshots_at if n < 8], "periodic checkpoints while batches were still coming"


def test_a_slow_batch_makes_the_next_ones_smaller_instead_of_filling_to_the_cap(bundle):
    broker = new_broker()
    feed(broker, 1000)
    runner, _ = make_runner(bundle, broker, max_batch_ticks=400, max_batch_ms=20)
    sizes = watch_steps(runner, before=lambda _n: None)
    step = runner.forecaster.step

    def slow(ticks):
        time.sleep(0.0005 * ticks.num_rows)  # 0.5 ms a tick: 20 ms hold 40 ticks
        return step(ticks)

    runner.forecaster.step = slow
    assert run_until(runner, all_committed(broker)) == 0
    assert sizes[0] == 400, "the first batch knows no step time yet"
    assert len(sizes) > 3 and max(sizes[1:]) <= 40, "later batches: the floor (a tenth), not the 400-tick cap"
    assert sum(sizes) == 1000


def test_a_trickling_batch_closes_when_its_own_work_would_overrun_the_budget(bundle, monkeypatch):
    """On a virtual clock: one record a poll, 2 ms apart, and the batch's work costs 1 ms a tick. Collecting
    for the whole 50 ms budget and then working would hand the first tick's forecast over some 75 ms after its
    receipt (26 ticks); once the work per tick is measured, a batch closes so that its work ends within the
    budget (18 ticks: 34 ms of collecting, 18 ms of work)."""
    clock = [0.0]
    monkeypatch.setattr(runner_module, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                               perf_counter=lambda: clock[0]))
    broker = new_broker()
    feed(broker, 200)
    runner, fake = make_runner(bundle, broker, max_batch_ms=50, max_batch_ticks=1000)

    def trickle(consumer):
        poll = consumer.poll

        def one_record(timeout_ms=0, max_records=None):
            clock[0] += 0.002
            return poll(timeout_ms, 1)

        consumer.poll = one_record

    fake.on_consumer = trickle
    sizes = watch_steps(runner, before=lambda _n: None)
    step = runner.forecaster.step

    def working(ticks):
        clock[0] += 0.001 * ticks.num_rows
        return step(ticks)

    runner.forecaster.step = working
    assert run_until(runner, all_committed(broker)) == 0
    assert sum(sizes) == 200
    assert sizes[0] == 26, "the first batch knows no work time yet: it collects for the whole budget"
    full = sizes[1:-1]  # the last one ends with the input
    assert full and all(n == 18 for n in full), sizes


def test_batch_sizer_closes_a_batch_so_that_its_work_ends_within_the_budget():
    sizer = BatchSizer(max_batch_ticks=5000, max_batch_ms=50)
    assert sizer.close_at(10.0, 100) == 10.05, "nothing measured yet: the whole budget"
    sizer.observe(100, 0.01, 0.02)  # 0.2 ms of work a tick
    assert sizer.close_at(10.0, 100) == pytest.approx(10.03)
    assert sizer.close_at(10.0, 250) <= 10.0, "250 ticks of work fill the budget: close at once"
    sizer.observe(100, 0.01, None)  # an aborted batch: its step counts, no work time
    assert sizer.close_at(10.0, 100) == pytest.approx(10.03)


def test_batch_sizer_grows_back_when_batches_get_fast():
    sizer = BatchSizer(max_batch_ticks=5000, max_batch_ms=50)
    assert sizer.limit() == 5000
    sizer.observe(5000, 0.25)  # 50 us a tick: 1,000 ticks fit in 50 ms
    assert sizer.limit() == 1000
    sizer.observe(5000, 50.0)  # a very slow batch: not below a tenth of the cap
    assert sizer.limit() == 500
    for _ in range(60):
        sizer.observe(250, 0.00125)  # 5 us a tick: 10,000 would fit
    assert sizer.limit() == 5000


@given(st.integers(1, 100_000), st.integers(1, 10_000),
       st.lists(st.tuples(st.integers(0, 100_000), st.floats(0, 100, allow_nan=False)), max_size=30))
def test_batch_sizer_stays_between_its_floor_and_the_cap_and_within_the_budget(cap, budget_ms, observed):
    sizer = BatchSizer(max_batch_ticks=cap, max_batch_ms=budget_ms)
    for ticks, seconds in observed:
        sizer.observe(ticks, seconds)
        n = sizer.limit()
        assert max(1, cap // 10) <= n <= cap
        if n > max(1, cap // 10) and sizer.seconds_per_tick:
            assert n * sizer.seconds_per_tick <= budget_ms / 1000 * (1 + 1e-9)
