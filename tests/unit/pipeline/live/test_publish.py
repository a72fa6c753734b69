"""The producer-error policy of the live loop, with in-memory fakes of KafkaProducer and its futures.

What is checked here is the logic (which error leads to what); the same guarantees against a real broker
are in tests/integration/test_producer_faults.py.
"""

from __future__ import annotations

import configparser
import time
from collections import namedtuple
from pathlib import Path

import pytest
from kafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerFencedError,
    TopicAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from operators.features import FEATURE_NAMES
from pipeline.config import ConfigError, RunConfig
from pipeline.live import status
from pipeline.kafka.clients import KafkaClients
from pipeline.live.inflight import Outbox
from pipeline.wire.outgoing import DeadLetter, Outgoing
from pipeline.live.runner import Runner
from pipeline.live.stopping import FatalError, PublishTimeout
from pipeline.metrics import Metrics
from tests.support.fake_kafka import FakeConsumer, FakeProducer
from tests.support.features import numpy_bundle
from tests.support.live_loop import feed, new_broker
from tests.support.live_loop import make_runner as make_live_runner

Record = namedtuple("Record", "topic partition offset key value timestamp")
DEPLOY = Path(__file__).resolve().parents[4] / "deploy"


BUNDLE = numpy_bundle(FEATURE_NAMES)


def make_runner(producer, processing="at_least_once", **cfg) -> Runner:
    """A Runner made as ``tickcast run`` makes it, its clients in-memory fakes set in place of a connection
    (no broker: only the publish path is used), its liveness beats and its rewinds counted."""
    r = Runner(RunConfig(model="m", processing=processing, checkpoint_uri="ckpt", **cfg), BUNDLE,
               Metrics(CollectorRegistry()), kafka_clients=KafkaClients())
    r.conn.consumer, r.conn.producer = FakeConsumer(), producer
    r.beats = 0
    beat = r.metrics.beat

    def counting_beat():
        r.beats += 1
        beat()

    r.metrics.beat = counting_beat
    r.rewinds = 0
    if processing == "exactly_once":  # the strategy that rewinds
        rewind = r.delivery.rewind

        def counting_rewind():
            r.rewinds += 1
            rewind()

        r.delivery.rewind = counting_rewind
    return r


def _outbox(messages, dead, records, offsets=None) -> Outbox:
    return Outbox(messages, [DeadLetter(records[i], reason, detail) for i, reason, detail in dead], records,
                  offsets or {})


def deliver(r: Runner, outbox: Outbox) -> bool:
    """A batch's delivery from dispatch to settling, as the loop does it. False: aborted and rewound."""
    pending = r.delivery.dispatch(outbox)
    return pending is not None and r.delivery.settle(outbox, pending)


def publish(r: Runner, messages, dead, records) -> None:
    """At-least-once publishing of forecast messages and dead letters (record index, reason, detail)."""
    assert deliver(r, _outbox(messages, dead, records))


def transaction(r: Runner, messages, dead, records, offsets) -> bool:
    return deliver(r, _outbox(messages, dead, records, offsets))


def sample(r: Runner, name: str, **labels) -> float | None:
    return r.metrics.registry.get_sample_value(name, labels)


FORECAST = Outgoing("forecasts", b"AAA", b'{"forecast": 1.0}', None, None)


def dead_record(value: bytes, key: bytes = b"AAA", offset: int = 7) -> Record:
    return Record("ticks", 0, offset, key, value, 0)


# -- at-least-once ---------------------------------------------------------------------------------

def test_dead_letter_over_max_request_size_goes_out_cut_with_its_reason_and_source():
    producer = FakeProducer(max_request_size=10_000)
    r = make_runner(producer)
    big = b"x" * 50_000
    publish(r, [FORECAST], [(0, "bad_json", "Expecting value")], [dead_record(big)])
    dlq = [d for d in producer.delivered if d[0] == "ticks.dlq"]
    assert len(dlq) == 1
    _, key, value, headers = dlq[0]
    assert value == big[:1024] and key == b"AAA"
    assert headers["tickcast.truncated"] == b"true"
    assert headers["tickcast.original_size"] == b"50000"
    assert headers["tickcast.reason"] == b"bad_json" and headers["tickcast.source"] == b"ticks/0/7"
    assert [d[0] for d in producer.delivered].count("forecasts") == 1
    assert sample(r, "tickcast_dead_letters_truncated_total") == 1
    assert not r.delivery.sender.cuts, "forgotten once delivered"


def test_dead_letter_refused_by_the_topic_is_cut_until_it_fits_and_an_oversized_key_too():
    # The broker side (a topic's max.message.bytes = 512): refused in the future, not at send().
    producer = FakeProducer(refuse=lambda t, k, v, h: MessageSizeTooLargeError() if t == "ticks.dlq" and
                            len(v) + len(k or b"") > 512 else None)
    r = make_runner(producer)
    key = b"K" * 1000
    publish(r, [], [(0, "oversized_key", "")], [dead_record(b"y" * 5000, key=key)])
    (_, k, v, headers), = producer.delivered
    assert (len(k), v) == (256, b""), "cut twice: value to 1 KiB (still too large), then to nothing"
    assert headers["tickcast.original_size"] == b"5000" and headers["tickcast.original_key_size"] == b"1000"
    assert headers["tickcast.reason"] == b"oversized_key"
    assert sample(r, "tickcast_publish_errors_total", reason="too_large") == 2


def test_dead_letter_refused_even_when_empty_stops_the_run():
    producer = FakeProducer(refuse=lambda t, *a: MessageSizeTooLargeError() if t == "ticks.dlq" else None)
    r = make_runner(producer)
    with pytest.raises(FatalError, match="refuses a dead letter"):
        publish(r, [], [(0, "bad_json", "")], [dead_record(b"z" * 100)])
    assert r.conn.consumer.commits == []


@pytest.mark.parametrize("error", [TopicAuthorizationFailedError(), MessageSizeTooLargeError()],
                         ids=["not-authorised", "too-large"])
def test_forecast_refused_for_good_stops_the_run_with_nothing_committed(error):
    producer = FakeProducer(refuse=lambda t, *a: error if t == "forecasts" else None)
    r = make_runner(producer)
    with pytest.raises(FatalError, match="refuses a forecast message"):
        publish(r, [FORECAST], [], [])
    assert sample(r, "tickcast_publish_errors_total", reason="refused") == 1
    assert r.conn.consumer.commits == []


def test_retriable_failures_are_resent_with_liveness_beating_and_readiness_false_meanwhile():
    seen_blocked = []
    failures = iter([NotLeaderForPartitionError(), NotLeaderForPartitionError(), None])

    def refuse(*_a):
        seen_blocked.append(r.metrics.blocked)
        return next(failures)

    producer = FakeProducer(refuse=refuse)
    r = make_runner(producer)
    publish(r, [FORECAST], [], [])
    assert len(producer.delivered) == 1 and len(producer.sent) == 3
    assert seen_blocked == [None, "publish_retrying", "publish_retrying"]
    assert r.metrics.blocked is None and sample(r, "tickcast_output_blocked") == 0
    assert r.beats >= 3
    assert sample(r, "tickcast_publish_errors_total", reason="retriable") == 2


def test_unacknowledged_sends_at_shutdown_give_up_without_committing():
    producer = FakeProducer(refuse=lambda *a: KafkaTimeoutError())
    r = make_runner(producer, shutdown_timeout_s=0.001)
    r.stopping.requested_at = time.monotonic() - 1
    with pytest.raises(PublishTimeout):
        publish(r, [FORECAST], [], [])


def test_missing_topic_is_waited_out_counted_and_not_ready():
    producer = FakeProducer(missing_for=3)
    r = make_runner(producer)
    blocked = []
    wait = r.stop_event.wait
    r.stop_event.wait = lambda t: blocked.append(r.metrics.blocked) or wait(0)
    publish(r, [FORECAST], [], [])
    assert blocked == ["topic_missing"] * 3
    assert sample(r, "tickcast_publish_errors_total", reason="topic_missing") == 3
    assert r.beats >= 3
    assert producer.delivered and r.metrics.blocked is None and r.metrics.is_ready is False  # not assigned yet
    r.metrics.ready = True
    assert r.metrics.is_ready


def test_missing_topic_at_shutdown_gives_up():
    producer = FakeProducer(missing_for=10**9)
    r = make_runner(producer, shutdown_timeout_s=0.001)
    r.stopping.requested_at = time.monotonic() - 1
    with pytest.raises(PublishTimeout, match="still missing"):
        publish(r, [FORECAST], [], [])
    assert producer.sent == []


def test_commit_retries_beat_liveness():
    r = make_runner(FakeProducer())
    failures = iter([KafkaTimeoutError(), KafkaTimeoutError(), None])

    def commit(offsets, timeout_ms=None):
        assert timeout_ms == r.cfg.request_timeout_ms, "a commit must not block without bound"
        error = next(failures)
        if error:
            raise error

    r.conn.consumer.commit = commit
    r.stop_event.wait = lambda s: False  # the backoff between tries, slept out at once
    r.delivery.commit({TopicPartition("ticks", 0): OffsetAndMetadata(1, "", -1)})
    assert r.beats >= 3


# -- exactly-once ---------------------------------------------------------------------------------

class FencingProducer(FakeProducer):
    """Its transaction stays open ``delay_s`` (sends blocked on a full buffer, say), then the commit is fenced."""

    def __init__(self, delay_s: float):
        super().__init__()
        self.delay_s = delay_s

    def send(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return super().send(*args, **kwargs)

    def commit_transaction(self):
        raise ProducerFencedError()


def test_fenced_after_our_transaction_outlived_its_timeout_replaces_the_producer_and_rewinds():
    old = FencingProducer(delay_s=0.05)
    r = make_runner(old, processing="exactly_once", request_timeout_ms=10, transaction_timeout_ms=21)
    fresh = FakeProducer()
    r.delivery.make_producer = lambda: fresh
    assert transaction(r, [FORECAST], [], [], {}) is False
    assert r.conn.producer is fresh and r.rewinds == 1
    assert sample(r, "tickcast_publish_errors_total", reason="fenced_by_timeout") == 1
    assert transaction(r, [FORECAST], [], [], {}) is True


def test_fenced_while_our_transaction_was_young_is_another_process_and_fatal():
    r = make_runner(FencingProducer(delay_s=0.0), processing="exactly_once")
    with pytest.raises(FatalError, match="another process with the same transactional_id"):
        transaction(r, [FORECAST], [], [], {})
    assert r.rewinds == 0


def test_transaction_with_a_dead_letter_refused_for_size_is_redone_with_it_cut():
    def refuse(t, k, v, h):
        return MessageSizeTooLargeError() if t == "ticks.dlq" and len(v) > 2000 else None

    class TxProducer(FakeProducer):
        def commit_transaction(self):
            failed = [s for s in self.sent if s[0] == "ticks.dlq" and len(s[2]) > 2000]
            if failed:
                raise MessageSizeTooLargeError("transaction has an abortable error")

    producer = TxProducer(refuse=refuse)
    r = make_runner(producer, processing="exactly_once")
    rec = dead_record(b"q" * 9000)
    assert transaction(r, [FORECAST], [(0, "bad_json", "")], [rec], {}) is False
    assert r.rewinds == 1 and "abort" in producer.calls
    producer.sent.clear()
    producer.delivered.clear()
    assert transaction(r, [FORECAST], [(0, "bad_json", "")], [rec], {}) is True
    dlq = [d for d in producer.delivered if d[0] == "ticks.dlq"]
    assert dlq[0][2] == b"q" * 1024 and dlq[0][3]["tickcast.original_size"] == b"9000"


def test_bounded_call_beats_liveness_while_it_waits():
    r = make_runner(FakeProducer(), processing="exactly_once", request_timeout_ms=1500)
    assert r.delivery._bounded(lambda: time.sleep(1.2) or "answered") == "answered"
    assert r.beats >= 1


# -- timeouts and exit codes -------------------------------------------------------------------------

def test_transaction_timeout_must_exceed_the_longest_bounded_wait():
    with pytest.raises(ConfigError, match=r"transaction_timeout_ms = 60000 must exceed .* = 60000") as info:
        RunConfig.load(env={}, flags={"model": "m", "transaction_timeout_ms": 60000})
    assert "\n" not in str(info.value)
    assert RunConfig.load(env={}, flags={"model": "m"}).transaction_timeout_ms > 2 * 30000


def test_systemd_restart_policy_matches_the_exit_codes(bundle):
    """1 (a transient failure: shutdown gave up on the broker) restarts; 2 (needs an operator: fenced by another
    process, a topic refusing records, a model mismatch) does not; 0 is a requested stop."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((DEPLOY / "systemd" / "tickcast.service").read_text())
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {"2"}

    def code_for(error: BaseException) -> int:
        """The exit code of a run whose first batch meets ``error`` (raised where the loop steps it)."""
        broker = new_broker()
        feed(broker, 10)
        r, _ = make_live_runner(bundle, broker)

        def step(_ticks):
            raise error

        r.forecaster.step = step
        return r.run()

    assert code_for(PublishTimeout("3 messages unacknowledged")) == 1
    assert code_for(FatalError("another process")) == 2


# -- metrics of revoked partitions and of several input topics ----------------------------------------

def test_revoked_partition_lag_series_is_removed_and_ticks_are_counted_per_topic():
    r = make_runner(FakeProducer(), input_topics=["a", "b"])
    r.on_assigned([TopicPartition("a", 0), TopicPartition("b", 0)])
    for tp in r.partitions.assigned:
        r.metrics.lag.labels(tp.topic, str(tp.partition)).set(5)
    r.on_revoked([TopicPartition("a", 0)])
    assert sample(r, "tickcast_consumer_lag_records", topic="a", partition="0") is None
    assert sample(r, "tickcast_consumer_lag_records", topic="b", partition="0") == 5

    import numpy as np
    pid = np.array([0, 0, 1 << 20, 1 << 20, 1 << 20])  # a/0 twice, b/0 three times
    status.count_received(r.metrics, r.partitions, pid)
    assert sample(r, "tickcast_ticks_received_total", topic="a", partition="0") == 2
    assert sample(r, "tickcast_ticks_received_total", topic="b", partition="0") == 3
