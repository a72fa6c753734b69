"""The real live loop (``Runner.run``) against in-memory Kafka clients (tests/support/fake_kafka.py).

Each test names one guarantee of the loop and injects the fault it is about where kafka-python would raise
it; the broker-backed proofs of the same guarantees are in tests/integration/.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time

import pytest
from kafka.errors import (
    FencedInstanceIdError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
)

from pipeline.checkpoint import StoreUnavailable
from tests.support.faults import failing_first
from tests.support.live_loop import (TP0, TP1, all_committed, assert_same_forecasts, feed, forecasts, make_runner,
                                     new_broker, reference, run_until, sample)


def test_a_batch_publishes_its_forecasts_and_commits_only_after_they_are_acknowledged(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker)
    at_commit = []
    fake.on_consumer = lambda c: setattr(c, "before_commit", lambda offsets: at_commit.append(
        (dict(offsets), len(broker.records("forecasts")), fake.producers[-1].calls[-1:])))
    assert run_until(runner, all_committed(broker)) == 0
    published = forecasts(broker)
    assert len(published) == 400, "one forecast per valid tick"
    assert at_commit, "offsets were committed"
    for offsets, n_published, last_call in at_commit:
        # Every forecast of the records a commit covers was out and flushed before it.
        covered = sum(o.offset for o in offsets.values())
        assert n_published >= covered and last_call == ["flush"]
    assert sample(runner, "tickcast_forecasts_published_total") == 400


def test_a_send_that_raises_a_retriable_error_is_resent_and_nothing_is_committed_before(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, max_batch_ticks=10_000, max_batch_ms=200)
    committed_when_refused = []

    def faults(producer):
        producer.send_errors = [NotLeaderForPartitionError()]  # send() itself raises
        failures = [NotLeaderForPartitionError()]  # and one future fails

        def refuse(topic, *_a):
            if topic == "forecasts" and failures:
                committed_when_refused.append(dict(broker.committed))
                return failures.pop()
            return None

        producer.refuse = refuse

    fake.on_producer = faults
    assert run_until(runner, all_committed(broker)) == 0
    assert committed_when_refused == [{}], "nothing is committed while a send is unacknowledged"
    assert len(forecasts(broker)) == 400, "both refused forecasts were sent again, once"
    assert sample(runner, "tickcast_publish_errors_total", reason="retriable") == 1
    assert len(fake.consumers[0].commits) == 1, "one batch, committed once it was all acknowledged"


def test_a_commit_that_times_out_is_retried_until_it_goes_through(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, max_batch_ticks=10_000, max_batch_ms=200)
    fake.on_consumer = lambda c: setattr(c, "commit_errors", [KafkaTimeoutError(), KafkaTimeoutError()])
    assert run_until(runner, all_committed(broker)) == 0
    assert fake.consumers[0].commit_errors == []
    assert sample(runner, "tickcast_broker_errors_total", operation="commit") == 2
    assert len(forecasts(broker)) == 400, "the batch was published once; only its commit was retried"


def test_a_rebalance_mid_run_drops_the_revoked_partitions_state(bundle):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker)
    pid1 = runner.partitions.part_id("ticks", 1)

    revoked = []

    def revoked_after_first_batches():
        if not revoked:
            if not all_committed(broker)():
                return False
            broker.revoke(TP1)
            feed(broker, 200, start=400)  # both partitions go on; only partition 0 is ours now
            revoked.append(True)
        return TP1 not in runner.partitions.assigned and broker.committed.get(TP0) == broker.end(TP0)

    assert run_until(runner, revoked_after_first_batches) == 0
    state = runner.forecaster.state
    held = set(state.column("partition")[: len(state)].tolist())
    assert pid1 not in held and 0 in held, "the revoked partition's rows are gone, the kept one's stay"
    assert all(p != pid1 for p, _ in runner.scorer._keys)
    assert TP1 not in runner.partitions
    assert sample(runner, "tickcast_consumer_lag_records", topic="ticks", partition="1") is None
    assert broker.committed[TP1] < broker.end(TP1), "records of a revoked partition are not processed here"
    assert not [s for s in forecasts(broker) if s[0] == 1 and s[1] >= broker.committed[TP1]]


def test_exactly_once_an_aborted_transaction_rewinds_and_each_forecast_is_published_once(bundle, tmp_path):
    """The second batch's transaction fails: it is aborted, the state goes back to the committed offsets (no
    checkpoint yet: rebuilt by a silent replay from the partition's start) and the batch is redone."""
    expected = reference(bundle)
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, processing="exactly_once", checkpoint_uri=str(tmp_path),
                               max_batch_ticks=150)
    fake.on_producer = lambda p: p.fail_commits.extend([None, KafkaTimeoutError("no answer")]) \
        if not fake.producers else None
    assert run_until(runner, all_committed(broker)) == 0
    assert fake.producers[0].calls.count("abort") == 1
    assert sample(runner, "tickcast_transactions_total", result="aborted") == 1
    assert sample(runner, "tickcast_partition_restores_total", source="replay_from_start") >= 1
    assert_same_forecasts(bundle, forecasts(broker), expected)  # after the rewind: each once, the same numbers


def test_a_restore_whose_checkpoint_store_fails_is_retried_then_restores_the_checkpoint(bundle, tmp_path, caplog):
    expected = reference(bundle, 600)
    broker = new_broker()
    feed(broker)
    ckpt = str(tmp_path / "ckpt")
    first, _ = make_runner(bundle, broker, checkpoint_uri=ckpt)
    assert run_until(first, all_committed(broker)) == 0  # checkpoints at shutdown
    feed(broker, 200, start=400)
    second, _ = make_runner(bundle, broker, checkpoint_uri=ckpt)
    second.store.latest = failing_first(2, second.store.latest,
                                      StoreUnavailable("cannot list: AWS Error NETWORK_CONNECTION"))
    with caplog.at_level(logging.WARNING, logger="tickcast.run"):
        assert run_until(second, all_committed(broker)) == 0
    assert [r.getMessage() for r in caplog.records].count("checkpoint store unreachable; retrying the restore") == 2
    assert sample(second, "tickcast_partition_restores_total", source="checkpoint") == 2, \
        "not an empty or replayed start"
    # After the restore, the forecasts are those of a run that never stopped.
    assert_same_forecasts(bundle, forecasts(broker), expected)


def test_last_per_instrument_publishes_per_batch_the_forecast_of_each_instruments_last_tick(bundle):
    broker = new_broker()
    feed(broker)
    expected = reference(bundle)
    runner, fake = make_runner(bundle, broker, output_mode="last_per_instrument", max_batch_ticks=50)
    batches = []  # per commit: the offsets it covers, and how many forecasts were out by then
    fake.on_consumer = lambda c: setattr(c, "before_commit", lambda offsets: batches.append(
        ({tp: o.offset for tp, o in offsets.items()}, len(broker.records("forecasts")))))
    assert run_until(runner, all_committed(broker)) == 0
    assert len(batches) > 4, "several batches"
    instrument = {(r.partition, r.offset): r.key.decode() for r in broker.records("ticks")}
    published = [json.loads(r.value) for r in broker.records("forecasts")]
    start, n_before = {0: 0, 1: 0}, 0
    for offsets, n_out in batches:
        last = {}  # (partition, instrument) -> the last offset of the batch
        for tp, end in offsets.items():
            for o in range(start[tp.partition], end):
                last[(tp.partition, instrument[(tp.partition, o)])] = o
            start[tp.partition] = end
        out = published[n_before:n_out]
        n_before = n_out
        assert sorted((m["partition"], m["instrument"]) for m in out) == sorted(last), \
            "exactly one forecast per instrument of the batch"
        assert {(m["partition"], m["offset"]) for m in out} == {(p, o) for (p, _), o in last.items()}, \
            "each the forecast of the instrument's last tick in the batch"
    got = {(m["partition"], m["offset"]): m["forecast"] for m in published}
    assert_same_forecasts(bundle, got, {k: expected[k] for k in got})
    assert n_before == len(published) and start == {0: broker.end(TP0), 1: broker.end(TP1)}


def test_a_finished_runner_leaves_no_thread_behind(bundle, tmp_path):
    """A process that makes runner after runner (benchmarks, an embedding application) keeps no thread per
    runner: the stall watch and the transaction committer stop with the run (the committer's thread ends on
    its own once shut down, so it is given a moment)."""

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "stall-watch" or t.name.startswith("tx-commit")]

    before = ours()
    for i, processing in enumerate(("at_least_once", "exactly_once", "at_least_once")):
        broker = new_broker()
        feed(broker, 100)
        runner, _ = make_runner(bundle, broker, processing=processing, checkpoint_uri=str(tmp_path / str(i)))
        assert run_until(runner, all_committed(broker)) == 0
    deadline = time.monotonic() + 5
    while ours() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours() == before


def test_the_loop_freezes_what_is_alive_at_its_start_out_of_the_full_collections(bundle):
    """The model, TensorFlow's modules and the clients are alive for the whole run; a full cyclic collection
    that walks them pauses the loop for hundreds of milliseconds (the p99 latency). After the first batch
    they are frozen, and a full collection then walks only what the run made since."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    broker = new_broker()
    feed(broker, 100)
    runner, _ = make_runner(bundle, broker)
    try:
        assert run_until(runner, all_committed(broker)) == 0
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the model, numpy, pyarrow, kafka's modules: far more than one run makes
        assert len(gc.get_objects()) < frozen / 2
    finally:
        gc.unfreeze()


def _fatal_from_librdkafka() -> KafkaError:
    exc = KafkaError("_FATAL: Fatal consumer error: static consumer fenced by another with the same group.instance.id")
    exc.fatal = True  # what pipeline.kafka.confluent_mapping.kafka_error sets for a fatal librdkafka error
    return exc


def test_the_group_instance_id_reaches_the_consumer_and_a_passing_poll_error_is_retried(bundle):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, group_instance_id="tickcast-0")
    fake.on_consumer = lambda c: c.poll_errors.extend([KafkaConnectionError(), KafkaTimeoutError()])
    assert run_until(runner, all_committed(broker)) == 0
    assert fake.consumers[0].config["group_instance_id"] == "tickcast-0"
    assert sample(runner, "tickcast_broker_errors_total", operation="poll") == 2
    assert len(forecasts(broker)) == 400


@pytest.mark.parametrize("error, reason", [
    (FencedInstanceIdError(), "same group_instance_id"),
    (_fatal_from_librdkafka(), "the Kafka consumer failed for good"),
])
def test_a_consumer_fenced_or_failed_for_good_stops_the_run_with_exit_2_and_says_why(bundle, caplog, error, reason):
    """Retrying would loop forever: another process holds this member's group_instance_id (or librdkafka's
    client cannot go on). The run ends by itself with the configuration-error code and says why."""
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, group_instance_id="tickcast-0")
    fake.on_consumer = lambda c: c.poll_errors.append(error)
    code: list[int] = []
    with caplog.at_level(logging.ERROR):
        thread = threading.Thread(target=lambda: code.append(runner.run()), daemon=True)
        thread.start()
        thread.join(30)
        stopped_by_itself = bool(code)
        runner.request_stop()
        thread.join(30)
    assert stopped_by_itself and code == [2], f"the run went on after the error (exit {code})"
    assert any(reason in str(getattr(r, "reason", "")) for r in caplog.records), caplog.text
    assert not forecasts(broker) and broker.committed == {}


def test_the_run_says_and_exports_whether_the_compiled_loop_steps_the_model(bundle, monkeypatch, caplog):
    from operators import compiled

    broker = new_broker()
    with caplog.at_level(logging.INFO):
        runner, _ = make_runner(bundle, broker)
    assert compiled.load() is not None, compiled.unavailable()  # numba is a dependency: the loop must load here
    assert sample(runner, "tickcast_compiled_loop") == 1
    assert any(r.levelno == logging.INFO and "compiled time loop: on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(compiled, "_STATE", {})
    monkeypatch.setenv("TICKCAST_NATIVE_KERNEL", "0")
    with caplog.at_level(logging.INFO):
        slow, _ = make_runner(bundle, new_broker())
    assert sample(slow, "tickcast_compiled_loop") == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("compiled time loop: OFF" in m and "TICKCAST_NATIVE_KERNEL=0" in m for m in warned), warned


def test_the_summary_tells_start_up_latency_from_the_steady_state():
    """Batches settled in the first STARTUP_S after the first batch arrived count as start-up, later ones as
    the steady state; the summary's figures of each are over its own batches only."""
    from pipeline.live.status import STARTUP_S, RunStats

    s = RunStats()
    s.first_batch_at = 100.0
    s.add_latencies(100.5, [0.3, 0.4])  # the first batch: slow
    s.add_latencies(100.0 + STARTUP_S - 0.01, [0.2])
    s.add_latencies(100.0 + STARTUP_S, [0.01, 0.02])
    s.add_latencies(100.0 + 5 * STARTUP_S, [0.03])
    summary = s.summary()
    assert list(s.startup_latencies) == [0.3, 0.4, 0.2] and list(s.steady_latencies) == [0.01, 0.02, 0.03]
    assert summary["startup_max_ms"] == pytest.approx(400) and summary["steady_max_ms"] == pytest.approx(30)
    assert summary["steady_p50_ms"] == pytest.approx(20) and summary["max_ms"] == pytest.approx(400)


def test_every_latency_of_a_run_is_start_up_or_steady_state(bundle):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, max_batch_ticks=50)
    assert run_until(runner, all_committed(broker)) == 0
    s = runner.stats
    assert len(s.startup_latencies) + len(s.steady_latencies) == len(s.latencies) == 400


def test_exactly_once_runs_after_a_first_connect_that_failed(bundle, tmp_path):
    """A connect retried (broker not up yet) closes the clients it made, not the delivery: the transaction
    committer still takes the first commit."""
    broker = new_broker()
    feed(broker, 100)
    runner, fake = make_runner(bundle, broker, processing="exactly_once", checkpoint_uri=str(tmp_path))
    failures = [KafkaConnectionError("broker not up yet")]

    def first_fails(_consumer):
        if failures:
            raise failures.pop()

    fake.on_consumer = first_fails
    assert run_until(runner, all_committed(broker)) == 0
    assert len(fake.consumers) == 1, "the first consumer failed; the second one ran"
