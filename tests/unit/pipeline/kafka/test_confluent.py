"""The librdkafka adapter (pipeline/kafka/confluent.py, confluent_mapping.py) and its mapping onto kafka-python's
interface: config, errors, records, rebalances, seeks, deliveries, transactions. librdkafka itself is replaced
by recording fakes (``ck.Consumer``/``ck.Producer``); the adapter against a real broker is covered by the
integration tests run under both clients."""

from __future__ import annotations

import confluent_kafka as ck
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka import errors as kerr
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.config import ConfigError, RunConfig
from pipeline.kafka import confluent, confluent_mapping
from pipeline.kafka.clients import KafkaClients, make_clients
from pipeline.live.clients import (
    CachingPartitioner,
    consumer_failure,
    open_consumer,
    open_producer,
    publish_error_reason,
)

E = ck.KafkaError
REAL_CONSUMER, REAL_PRODUCER = ck.Consumer, ck.Producer
BROKER_CODES = sorted(c for c in kerr.kafka_errors if c is not None and c > 0)
LOCAL_CODES = sorted(v for k, v in vars(E).items() if k.startswith("_") and isinstance(v, int) and v < 0)


class Msg:
    """A fake of confluent_kafka.Message."""

    def __init__(self, topic="t", partition=0, offset=0, key=b"k", value=b"v", ts=1000, headers=None, error=None):
        self._f = (topic, partition, offset, key, value, ts, headers, error)

    def topic(self): return self._f[0]  # noqa: E704
    def partition(self): return self._f[1]  # noqa: E704
    def offset(self): return self._f[2]  # noqa: E704
    def key(self): return self._f[3]  # noqa: E704
    def value(self): return self._f[4]  # noqa: E704
    def timestamp(self): return (ck.TIMESTAMP_CREATE_TIME, self._f[5])  # noqa: E704
    def headers(self): return self._f[6]  # noqa: E704
    def error(self): return self._f[7]  # noqa: E704


class FakeCkConsumer:
    def __init__(self, config):
        self.config = config
        self.batches: list[list[Msg]] = []
        self.calls: list = []
        self.fetching: set = set()
        self.positions: dict = {}

    def consume(self, n, timeout):
        self.calls.append(("consume", n, timeout))
        return self.batches.pop(0) if self.batches else []

    def poll(self, timeout):
        self.calls.append(("poll", timeout))
        return self.arriving.pop(0) if getattr(self, "arriving", None) else None

    def subscribe(self, topics, on_assign, on_revoke, on_lost):
        self.callbacks = (on_assign, on_revoke, on_lost)

    def assign(self, parts):
        self.calls.append(("assign", [(p.topic, p.partition, p.offset) for p in parts]))

    def unassign(self):
        self.calls.append(("unassign",))

    def seek(self, part):
        if (part.topic, part.partition) not in self.fetching:
            raise ck.KafkaException(E(E._STATE, "Failed to seek: Local: Erroneous state"))
        self.calls.append(("seek", part.topic, part.partition, part.offset))

    def position(self, parts):
        return [ck.TopicPartition(p.topic, p.partition, self.positions.get((p.topic, p.partition), -1001))
                for p in parts]

    def committed(self, parts, timeout):
        return [ck.TopicPartition(p.topic, p.partition, {0: 42}.get(p.partition, -1001)) for p in parts]

    def commit(self, offsets, asynchronous):
        self.calls.append(("commit", [(p.topic, p.partition, p.offset) for p in offsets]))
        if getattr(self, "commit_error", None):
            raise ck.KafkaException(self.commit_error)
        return offsets

    def get_watermark_offsets(self, part, timeout=None, cached=False):
        return (-1001, -1001) if cached else (3, 10)

    def close(self):
        self.calls.append(("close",))
        if hasattr(self, "callbacks"):  # librdkafka revokes while leaving the group
            self.callbacks[1](self, [ck.TopicPartition("t", 0)])


class FakeCkProducer:
    def __init__(self, config):
        self.config = config
        self.produced: list = []
        self.full = 0  # produce raises BufferError this many times
        self.produce_error = None
        self.left = 0

    def produce(self, topic, value, key, partition, on_delivery, timestamp, headers):
        if self.produce_error is not None:
            raise ck.KafkaException(self.produce_error)
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.produced.append((topic, value, key, partition, on_delivery, timestamp, headers))

    def poll(self, timeout):
        for report, err in getattr(self, "reports", []):  # delivery reports waiting to be served
            report(err, None)
        self.reports = []
        return 0

    def flush(self, timeout):
        return self.left

    def purge(self, in_queue, in_flight):
        self.produced.clear()

    def init_transactions(self, timeout):
        self.tx = [("init", timeout)]

    def begin_transaction(self):
        self.tx.append(("begin",))

    def send_offsets_to_transaction(self, parts, group_metadata, timeout):
        self.tx.append(("offsets", [(p.topic, p.partition, p.offset) for p in parts], group_metadata))

    def commit_transaction(self, timeout):
        if getattr(self, "commit_error", None):
            raise ck.KafkaException(self.commit_error)
        self.tx.append(("commit",))

    def abort_transaction(self, timeout):
        self.tx.append(("abort",))


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(confluent.ck, "Consumer", FakeCkConsumer)
    monkeypatch.setattr(confluent.ck, "Producer", FakeCkProducer)


def _cfg(**kw) -> RunConfig:
    return RunConfig(model="m", kafka_client="confluent", **kw)


# -- errors ------------------------------------------------------------------------------------
@given(st.sampled_from(BROKER_CODES))
def test_a_broker_error_maps_to_kafka_pythons_class_of_the_same_code(code):
    exc = confluent_mapping.kafka_error(E(code))
    assert type(exc) is kerr.for_code(code)
    assert publish_error_reason(exc) == publish_error_reason(kerr.for_code(code)())


@given(st.sampled_from(LOCAL_CODES), st.booleans(), st.booleans())
def test_every_local_error_maps_to_a_kafka_error_that_retries_only_when_librdkafka_says_so(code, retriable, fatal):
    exc = confluent_mapping.kafka_error(E(code, "x", fatal=fatal, retriable=retriable))
    assert isinstance(exc, kerr.KafkaError)
    if code not in confluent_mapping.LOCAL_ERRORS:
        assert exc.retriable == (retriable and not fatal)
        assert (consumer_failure(exc) is not None) == fatal, "a fatal error ends the run; others are retried"


@pytest.mark.parametrize("code, reason", [
    (E.MSG_SIZE_TOO_LARGE, "too_large"), (E.RECORD_LIST_TOO_LARGE, "too_large"), (E._MSG_TIMED_OUT, "timeout"),
    (E._TIMED_OUT, "timeout"), (E._FENCED, "fenced"), (E.PRODUCER_FENCED, "fenced"),
    (E.INVALID_PRODUCER_EPOCH, "fenced"), (E._TRANSPORT, "retriable"), (E._ALL_BROKERS_DOWN, "retriable"),
    (E.NOT_LEADER_FOR_PARTITION, "retriable"), (E._UNKNOWN_TOPIC, "retriable"),
    (E.TOPIC_AUTHORIZATION_FAILED, "refused"), (E.INVALID_RECORD, "refused")])
def test_publish_errors_get_the_policy_class_kafka_python_would_give_them(code, reason):
    assert publish_error_reason(confluent_mapping.kafka_error(E(code))) == reason


@pytest.mark.parametrize("code", [E.REBALANCE_IN_PROGRESS, E.ILLEGAL_GENERATION, E.UNKNOWN_MEMBER_ID,
                                  E._ASSIGNMENT_LOST])
def test_a_commit_the_group_refuses_is_commit_failed(fakes, code):
    c = confluent.Consumer(group_id="g")
    c._c.commit_error = E(code)
    with pytest.raises(kerr.CommitFailedError):
        c.commit({TopicPartition("t", 0): OffsetAndMetadata(5, "", -1)}, timeout_ms=1000)


# -- config ------------------------------------------------------------------------------------
def test_the_runtimes_consumer_and_producer_options_all_translate(fakes, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = _cfg(processing="exactly_once", bootstrap_servers="a:1,b:2", security_protocol="SASL_SSL",
               sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p", ssl_cafile=str(ca),
               group_instance_id="tickcast-0")
    consumer = open_consumer(confluent.ConfluentClients(), cfg)._c.config
    assert consumer["bootstrap.servers"] == "a:1,b:2" and consumer["group.id"] == cfg.group_id
    assert consumer["group.instance.id"] == "tickcast-0"
    assert "group.instance.id" not in open_consumer(confluent.ConfluentClients(), _cfg())._c.config, "dynamic"
    assert consumer["isolation.level"] == "read_committed" and consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["queued.max.messages.kbytes"] == cfg.fetch_max_bytes // 1024, "the prefetch is bounded"
    assert (consumer["sasl.mechanism"], consumer["sasl.username"], consumer["sasl.password"]) == (
        "SCRAM-SHA-512", "u", "p")
    assert consumer["ssl.ca.location"] == str(ca) and consumer["security.protocol"] == "SASL_SSL"
    producer = open_producer(confluent.ConfluentClients(), cfg, CachingPartitioner())
    p = producer._p.config
    assert p["transactional.id"] and p["enable.idempotence"] is True and p["acks"] == "all"
    assert p["allow.auto.create.topics"] is False, "a missing output topic is waited out, never created"
    assert p["partitioner"] == "murmur2_random", "keyed records land where kafka-python's murmur2 puts them"
    assert p["message.max.bytes"] == 1_048_576, "the size refusals of kafka-python's max_request_size"


@pytest.mark.parametrize("processing", ["at_least_once", "exactly_once"])
def test_librdkafka_accepts_the_translated_config(fakes, processing):
    """librdkafka checks its properties (and their combinations) when a client is made, before any connection."""
    cfg = _cfg(processing=processing, bootstrap_servers="127.0.0.1:1")
    consumer = open_consumer(confluent.ConfluentClients(), cfg)._c.config
    producer = open_producer(confluent.ConfluentClients(), cfg, CachingPartitioner())._p.config
    probe = confluent.Consumer(group_id=None, enable_auto_commit=False, bootstrap_servers="127.0.0.1:1")._c.config
    assert probe["group.id"].startswith("tickcast-no-group-") and probe["enable.auto.commit"] is False
    for config in (consumer, probe):
        REAL_CONSUMER(config).close()
    REAL_PRODUCER(producer).flush(0)


def test_an_option_without_a_translation_is_refused_not_dropped(fakes):
    with pytest.raises(TypeError, match="compression_type"):
        confluent.Producer(bootstrap_servers="a:1", compression_type="gzip")
    with pytest.raises(TypeError, match="max_poll_interval_ms"):
        confluent.Consumer(bootstrap_servers="a:1", max_poll_interval_ms=1)


def test_kafka_client_is_chosen_by_config_and_checked_in_one_line(monkeypatch):
    assert isinstance(make_clients("confluent"), confluent.ConfluentClients)
    assert isinstance(make_clients("kafka-python"), KafkaClients)
    assert RunConfig.load(env={"TICKCAST_KAFKA_CLIENT": "confluent"}, flags={"model": "m"}).kafka_client == "confluent"
    with pytest.raises(ConfigError, match="kafka_client = 'rdkafka' is not one of") as bad:
        RunConfig.load(env={}, flags={"model": "m", "kafka_client": "rdkafka"})
    assert "\n" not in str(bad.value)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "confluent_kafka" else True)
    with pytest.raises(ConfigError, match=r"needs the confluent-kafka package; install it with pip install "
                                          r"'tickcast\[confluent\]'"):
        RunConfig.load(env={}, flags={"model": "m", "kafka_client": "confluent"})


# -- consuming ---------------------------------------------------------------------------------
def test_poll_gives_records_by_partition_in_order_with_kafka_pythons_fields(fakes):
    c = confluent.Consumer(max_poll_records=7)
    c._c.batches.append([Msg("t", 1, 5, b"a", b"1", 11, [("h", b"x")]), Msg("t", 0, 2, None, None, 12),
                         Msg("t", 1, 6, b"b", b"2", 13), Msg(error=E(E._PARTITION_EOF))])
    got = c.poll(timeout_ms=250)
    assert c._c.calls == [("consume", 7, 0)], "records already there: no waiting"
    assert list(got) == [TopicPartition("t", 1), TopicPartition("t", 0)]
    r = got[TopicPartition("t", 1)][0]
    assert (r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, r.headers) == ("t", 1, 5, b"a", b"1", 11,
                                                                                      [("h", b"x")])
    assert [r.offset for r in got[TopicPartition("t", 1)]] == [5, 6]
    assert got[TopicPartition("t", 0)][0].headers == () and got[TopicPartition("t", 0)][0].value is None


def test_poll_returns_as_soon_as_a_record_is_there_as_kafka_pythons_does(fakes):
    """librdkafka's consume() would wait out its whole timeout unless the batch fills: the adapter waits for the
    first record only (librdkafka's poll), then takes what is already queued."""
    c = confluent.Consumer(max_poll_records=100)
    c._c.batches += [[], [Msg(offset=2), Msg(offset=3)], []]
    c._c.arriving = [Msg(offset=1)]
    got = c.poll(timeout_ms=500, max_records=10)
    assert [r.offset for r in got[TopicPartition("t", 0)]] == [1, 2, 3]
    assert c._c.calls == [("consume", 10, 0), ("poll", 0.5), ("consume", 9, 0)]
    assert c.poll(timeout_ms=200) == {} and c._c.calls[-1] == ("poll", 0.2), "nothing within the timeout"


def test_a_consumer_error_is_raised_only_when_no_record_came_with_it(fakes):
    c = confluent.Consumer()
    c._c.batches += [[Msg(offset=1), Msg(error=E(E._TRANSPORT))], [Msg(error=E(E._TRANSPORT))]]
    assert len(c.poll(timeout_ms=0)[TopicPartition("t", 0)]) == 1, "records are never dropped for an error"
    with pytest.raises(kerr.KafkaConnectionError):
        c.poll(timeout_ms=0)


class Listener:
    def __init__(self):
        self.events = []

    def on_partitions_assigned(self, tps):
        self.events.append(("assigned", sorted(tps)))

    def on_partitions_revoked(self, tps):
        self.events.append(("revoked", sorted(tps)))


def test_rebalances_reach_the_listener_as_kafka_python_partitions_but_not_the_revoke_of_close(fakes):
    c, listener = confluent.Consumer(group_id="g"), Listener()
    c.subscribe(["t"], listener=listener)
    on_assign, on_revoke, on_lost = c._c.callbacks
    on_assign(c._c, [ck.TopicPartition("t", 1), ck.TopicPartition("t", 0)])
    assert ("assign", [("t", 1, -1001), ("t", 0, -1001)]) in c._c.calls
    on_revoke(c._c, [ck.TopicPartition("t", 1)])
    on_lost(c._c, [ck.TopicPartition("t", 0)])  # no on_partitions_lost: treated as revoked, as kafka-python does
    c.close()
    assert listener.events == [("assigned", [TopicPartition("t", 0), TopicPartition("t", 1)]),
                               ("revoked", [TopicPartition("t", 1)]), ("revoked", [TopicPartition("t", 0)])]
    assert c.assignment() == set()


def test_seeking_a_partition_not_fetched_yet_assigns_it_again_at_that_offset(fakes):
    c = confluent.Consumer()
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    c.assign([a, b])
    c._c.positions[("t", 1)] = 17  # b has been read up to 17
    c.seek(a, 40)
    assert c._c.calls[-1] == ("assign", [("t", 0, 40), ("t", 1, 17)]), "the other partition keeps its place"
    assert c.position(a) == 40, "until a record is consumed, the position is the seek's"
    c._c.fetching.add(("t", 0))
    c.seek(a, 3)
    assert c._c.calls[-1] == ("seek", "t", 0, 3) and c.position(a) == 3
    c._c.positions[("t", 0)] = 9
    assert c.position(a) == 9, "librdkafka's own position once it has one"
    c.seek_to_beginning(b)
    assert c._c.calls[-1][0] == "assign" and ("t", 1, ck.OFFSET_BEGINNING) in c._c.calls[-1][1]


def test_offsets_none_where_kafka_python_says_none(fakes):
    c = confluent.Consumer()
    assert c.committed(TopicPartition("t", 0)) == 42 and c.committed(TopicPartition("t", 1)) is None
    assert c.highwater(TopicPartition("t", 0)) is None, "no fetch yet"
    assert c.beginning_offsets([TopicPartition("t", 0)]) == {TopicPartition("t", 0): 3}
    assert c.end_offsets([TopicPartition("t", 0)]) == {TopicPartition("t", 0): 10}
    c.commit({TopicPartition("t", 0): OffsetAndMetadata(8, "", -1)}, timeout_ms=1000)
    assert c._c.calls[-1] == ("commit", [("t", 0, 8)])


# -- producing ---------------------------------------------------------------------------------
def test_a_send_completes_with_the_delivery_report(fakes):
    p = confluent.Producer(max_block_ms=1000)
    ok, bad = p.send("t", key=b"k", value=b"v", headers=[("h", b"1")]), p.send("t", value=b"w", partition=2)
    assert [x[3] for x in p._p.produced] == [-1, 2], "no partition: by key (librdkafka's murmur2)"
    assert not ok.is_done and not ok.failed()
    p._p.produced[0][4](None, Msg(offset=7))
    p._p.produced[1][4](E(E.MSG_SIZE_TOO_LARGE), None)
    assert ok.is_done and ok.succeeded() and ok.offset == 7
    assert bad.is_done and bad.failed() and isinstance(bad.exception, kerr.MessageSizeTooLargeError)


def test_send_raises_kafka_pythons_errors(fakes):
    p = confluent.Producer(max_block_ms=200)
    p._p.full = 2
    assert p.send("t", value=b"v") is not None, "a full queue is waited out"
    p._p.full = 10**9
    with pytest.raises(kerr.KafkaTimeoutError):
        p.send("t", value=b"v")
    p._p.full, p._p.produce_error = 0, E(E.MSG_SIZE_TOO_LARGE)
    with pytest.raises(kerr.MessageSizeTooLargeError):
        p.send("t", value=b"v")


def test_flush_that_leaves_messages_unacknowledged_raises_a_timeout(fakes):
    p = confluent.Producer()
    p.flush(timeout=1)
    p._p.left = 3
    with pytest.raises(kerr.KafkaTimeoutError, match="3 messages"):
        p.flush(timeout=1)


def test_a_transaction_carries_the_offsets_and_fencing_is_kafka_pythons_fenced(fakes):
    p = confluent.Producer(transactional_id="x", request_timeout_ms=1000)
    p.init_transactions()
    p.begin_transaction()
    p.send_offsets_to_transaction({TopicPartition("t", 0): OffsetAndMetadata(9, "", -1)}, b"group-metadata")
    p.commit_transaction()
    assert p._p.tx == [("init", 2.0), ("begin",), ("offsets", [("t", 0, 9)], b"group-metadata"), ("commit",)]
    p._p.commit_error = E(E._FENCED, "fenced", fatal=True)
    with pytest.raises(kerr.ProducerFencedError):
        p.commit_transaction()
    p._p.commit_error = E(E.INVALID_PRODUCER_EPOCH)
    with pytest.raises(kerr.InvalidProducerEpochError):
        p.commit_transaction()


def test_a_failed_commit_leaves_the_sends_judged_by_their_delivery_reports(fakes):
    """A record the broker refused for size in a transaction: by the time commit_transaction raises, its
    future says so (exactly_once.py cuts a dead letter refused for size in the redo)."""
    p = confluent.Producer(transactional_id="x")
    p.init_transactions()
    fut = p.send("dlq", value=b"big")
    p._p.reports = [(p._p.produced[0][4], E(E.MSG_SIZE_TOO_LARGE))]
    p._p.commit_error = E(E._INVALID_ARG, "txn requires abort")
    with pytest.raises(kerr.KafkaError):
        p.commit_transaction()
    assert fut.failed() and publish_error_reason(fut.exception) == "too_large"
