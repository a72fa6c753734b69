"""In-memory fakes of kafka-python's KafkaConsumer and KafkaProducer, and a factory that hands them to the
runner (``Runner(..., kafka_clients=FakeKafka(broker))``), so unit tests run the real loop without a broker.

The broker keeps each topic's partitions as lists of records, the group's committed offsets, and applies a
transaction's sends and offsets only when it commits. Faults are injected where the real clients raise them:
``FakeProducer.refuse`` (a send's future fails), ``FakeProducer.fail_commits`` (commit_transaction raises),
``FakeProducer.send_errors`` (send raises), ``FakeConsumer.commit_errors`` (commit raises),
``FakeBroker.revoke`` (a rebalance at the next poll). ``FakeProducer.hold_acks``: sends stay unanswered until
``release`` (in any order) or ``flush`` (which, as kafka-python's, waits for every send).
"""

from __future__ import annotations

import threading
from collections import namedtuple

from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import OffsetAndTimestamp, TopicPartition

Record = namedtuple("Record", "topic partition offset key value timestamp headers", defaults=((),))


class FakeFuture:
    def __init__(self, error: BaseException | None = None, done: bool = True):
        self.is_done = done
        self.exception = error

    def failed(self) -> bool:
        return self.exception is not None


class FakeBroker:
    """Topics (lists of records per partition) and committed offsets, shared by every fake client."""

    def __init__(self, topics: dict[str, int] | None = None):
        self.topics: dict[str, list[list[Record]]] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.lock = threading.RLock()
        self.pending_revoke: list[TopicPartition] = []
        for name, n in (topics or {}).items():
            self.create(name, n)

    def create(self, topic: str, partitions: int = 1) -> None:
        self.topics[topic] = [[] for _ in range(partitions)]

    def append(self, topic: str, partition: int, key, value, headers=None, timestamp: int = 0) -> Record:
        with self.lock:
            log = self.topics[topic][partition]
            rec = Record(topic, partition, len(log), key, value, timestamp, tuple(headers or ()))
            log.append(rec)
            return rec

    def records(self, topic: str) -> list[Record]:
        with self.lock:
            return [r for part in self.topics[topic] for r in part]

    def end(self, tp: TopicPartition) -> int:
        return len(self.topics[tp.topic][tp.partition])

    def revoke(self, *tps: TopicPartition) -> None:
        """At the next poll, the group takes these partitions from the consumer."""
        self.pending_revoke.extend(tps)


class FakeProducer:
    """Records every send. ``refuse(topic, key, value, headers) -> exception | None`` decides the outcome;
    ``max_request_size`` is checked at send as kafka-python does; ``missing_for``: partitions_for times out
    this many times first. With a ``broker``, delivered sends land in its topics (a transaction's only when
    it commits); ``fail_commits`` lists what commit_transaction does, one entry per call: raise the error, or
    succeed (None); once the list is empty, it succeeds."""

    def __init__(self, refuse=None, max_request_size: int = 1_048_576, missing_for: int = 0,
                 broker: FakeBroker | None = None, transactional: bool = False):
        self.refuse = refuse or (lambda *a: None)
        self.max_request_size = max_request_size
        self.missing_for = missing_for
        self.broker = broker
        self.transactional = transactional
        self.fail_commits: list[BaseException] = []
        self.send_errors: list[BaseException] = []  # raised by send() itself, one per call, first
        self.sent: list[tuple] = []
        self.delivered: list[tuple] = []
        self.calls: list[str] = []
        self._tx: list[tuple] | None = None
        self._tx_offsets: dict = {}
        self.hold_acks = False  # futures stay not done until release() or flush()
        self.futures: list[FakeFuture] = []  # one per send that returned a future, in send order

    def partitions_for(self, topic):
        if self.missing_for:
            self.missing_for -= 1
            raise KafkaTimeoutError("Failed to update metadata after 5.0 secs.")
        if self.broker is not None:
            return set(range(len(self.broker.topics[topic]))) if topic in self.broker.topics else None
        return {0}

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers or []) + 61
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        if self.send_errors:
            raise self.send_errors.pop(0)
        self.sent.append((topic, key, value, headers))
        error = self.refuse(topic, key, value, headers)
        if error is None:
            self.delivered.append((topic, key, value, dict(headers or [])))
            if self.broker is not None:
                out = (topic, 0 if partition is None else partition, key, value, headers)
                if self._tx is not None:
                    self._tx.append(out)
                else:
                    self.broker.append(*out)
        fut = FakeFuture(error, done=not self.hold_acks)
        self.futures.append(fut)
        return fut

    def release(self, futures) -> None:
        """Acknowledge these held sends now."""
        for fut in futures:
            fut.is_done = True

    def flush(self, timeout=None):
        self.calls.append("flush")
        self.release(self.futures)

    # transactions
    def init_transactions(self):
        self.calls.append("init")

    def begin_transaction(self):
        self.calls.append("begin")
        self._tx, self._tx_offsets = [], {}

    def send_offsets_to_transaction(self, offsets, group):
        self.calls.append("offsets")
        self._tx_offsets = dict(offsets)

    def commit_transaction(self):
        error = self.fail_commits.pop(0) if self.fail_commits else None
        if error is not None:
            raise error
        self.calls.append("commit")
        if self.broker is not None:
            with self.broker.lock:
                for out in self._tx or []:
                    self.broker.append(*out)
                for tp, meta in self._tx_offsets.items():
                    self.broker.committed[tp] = meta.offset
        self._tx, self._tx_offsets = None, {}

    def abort_transaction(self):
        self.calls.append("abort")
        self._tx, self._tx_offsets = None, {}

    def close(self, timeout=None):
        self.calls.append("close")


class FakeConsumer:
    """A group consumer over a FakeBroker (the only member: it is assigned every partition of its topics at
    the first poll). Without a broker, only ``commit`` and ``group_metadata`` (the publish path's needs).
    ``commit_errors`` lists errors commit raises, one per call, before it succeeds; ``poll_errors`` the same
    for poll."""

    def __init__(self, broker: FakeBroker | None = None, **config):
        self.broker = broker
        self.config = config
        self.commits: list = []
        self.commit_errors: list[BaseException] = []
        self.poll_errors: list[BaseException] = []
        self.before_commit = None  # called with the offsets before each commit attempt
        self.listener = None
        self.topics: list[str] = []
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.closed = False

    def subscribe(self, topics, listener=None):
        self.topics, self.listener = list(topics), listener

    def poll(self, timeout_ms=0, max_records=None):
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        b = self.broker
        if not self.assigned and self.topics:
            self.assigned = {TopicPartition(t, p) for t in self.topics for p in range(len(b.topics[t]))}
            self.listener.on_partitions_assigned(set(self.assigned))
        if b.pending_revoke:
            gone, b.pending_revoke = set(b.pending_revoke) & self.assigned, []
            self.listener.on_partitions_revoked(gone)
            self.assigned -= gone
        out, room = {}, max_records or 500
        with b.lock:
            for tp in sorted(self.assigned - self.paused):
                pos = self.positions.setdefault(tp, self._reset(tp))
                recs = b.topics[tp.topic][tp.partition][pos:pos + room]
                if recs:
                    out[tp] = recs
                    self.positions[tp] = pos + len(recs)
                    room -= len(recs)
        return out

    def _reset(self, tp):
        if tp in self.broker.committed:
            return self.broker.committed[tp]
        return 0 if self.config.get("auto_offset_reset") == "earliest" else self.broker.end(tp)

    def committed(self, tp, timeout_ms=None):
        return self.broker.committed.get(tp)

    def commit(self, offsets, timeout_ms=None):
        if self.before_commit is not None:
            self.before_commit(offsets)
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.commits.append(offsets)
        if self.broker is not None:
            for tp, meta in offsets.items():
                self.broker.committed[tp] = meta.offset

    def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def assign(self, tps):
        self.assigned = set(tps)
        self.paused &= self.assigned

    def pause(self, *tps):
        self.paused |= set(tps) & self.assigned

    def resume(self, *tps):
        self.paused -= set(tps)

    def offsets_for_times(self, timestamps):
        """As Kafka answers: per partition the first record with a timestamp at or after the one asked, or None."""
        out = {}
        with self.broker.lock:
            for tp, at_ms in timestamps.items():
                hit = next((r for r in self.broker.topics[tp.topic][tp.partition] if r.timestamp >= at_ms), None)
                out[tp] = None if hit is None else OffsetAndTimestamp(hit.offset, hit.timestamp, -1)
        return out

    def seek(self, tp, offset):
        self.positions[tp] = offset

    def seek_to_beginning(self, tp):
        self.positions[tp] = 0

    def seek_to_end(self, tp):
        self.positions[tp] = self.broker.end(tp)

    def highwater(self, tp):
        return self.broker.end(tp)

    def position(self, tp, timeout_ms=None):
        return self.positions.get(tp)

    def group_metadata(self):
        return None

    def close(self, autocommit=True):
        self.closed = True


class FakeKafka:
    """The runner's client factory over one FakeBroker; keeps every client it made, newest last."""

    def __init__(self, broker: FakeBroker):
        self.broker = broker
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []
        self.on_producer = None  # called with each new producer (to inject faults)
        self.on_consumer = None  # likewise with each new consumer

    def consumer(self, **config) -> FakeConsumer:
        c = FakeConsumer(self.broker, **config)
        if self.on_consumer is not None:
            self.on_consumer(c)
        self.consumers.append(c)
        return c

    def producer(self, **config) -> FakeProducer:
        p = FakeProducer(broker=self.broker, transactional="transactional_id" in config)
        if self.on_producer is not None:
            self.on_producer(p)
        self.producers.append(p)
        return p
