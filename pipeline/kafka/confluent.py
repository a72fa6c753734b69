"""librdkafka (confluent-kafka) behind the kafka-python interface the runtime uses: ``kafka_client = confluent``.

The runtime is written against kafka-python's clients (``poll() -> {TopicPartition: [record]}``, ``send() ->
future``, ``kafka.errors`` classes). ``ConfluentClients`` makes a ``Consumer`` and a ``Producer`` that speak that
subset over ``confluent_kafka``, so the loop, the restore policy, the delivery policy and the topic reader stay
one code path for both clients. What differs, and how it is bridged:

- Config and errors: translated by ``pipeline.kafka.confluent_mapping`` (kafka-python options to librdkafka
  properties; librdkafka errors to the ``kafka.errors`` class of the same code or meaning).
- Records: a ``Record`` tuple with ``topic partition offset timestamp key value headers``.
- Sends: ``send`` returns a ``SendResult`` (``is_done``, ``failed()``, ``exception``), completed by librdkafka's
  delivery report, which ``flush`` serves.
- Rebalances: librdkafka calls on_assign/on_revoke inside ``poll`` on the loop's own thread; they are forwarded
  to the kafka-python listener. ``close`` does not forward the revoke librdkafka makes while leaving (kafka-python
  does not call the listener on close either).
- Seeking a partition librdkafka is not fetching yet (just assigned) fails with a state error; it is assigned
  again at that offset instead. ``position`` falls back to the last seek until a record has been consumed.
- Calls kafka-python bounds by a timeout and librdkafka does not (a synchronous commit) run on a helper thread
  and fail with ``KafkaTimeoutError`` after it.
"""

from __future__ import annotations

import time
from collections import namedtuple

import confluent_kafka as ck
from kafka import errors as kerr
from kafka.structs import OffsetAndTimestamp, TopicPartition

from pipeline.kafka.confluent_mapping import (
    LIBRDKAFKA_LOG as log,
    consumer_config,
    kafka_error,
    producer_config,
    raise_kafka_error,
)
from pipeline.waiting import Backoff, OutOfTime, bounded, retry

Record = namedtuple("Record", "topic partition offset timestamp key value headers")
_new_record = tuple.__new__
_E = ck.KafkaError
NO_OFFSET = ck.OFFSET_INVALID  # librdkafka's "no offset" (-1001)


def _ck(tp: TopicPartition, offset: int = NO_OFFSET) -> ck.TopicPartition:
    return ck.TopicPartition(tp.topic, tp.partition, offset)


class Consumer:
    """``confluent_kafka.Consumer`` with the kafka-python ``KafkaConsumer`` methods the runtime calls."""

    def __init__(self, **config):
        self._max_records = config.get("max_poll_records") or 500
        self._timeout_s = (config.get("request_timeout_ms") or 30_000) / 1000
        self._c = ck.Consumer(consumer_config(config))
        self._listener = None
        self._closing = False
        self._assignment: list[TopicPartition] = []
        self._seeked: dict[TopicPartition, int] = {}  # the last seek, until a record is consumed

    # -- reading ---------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        """Records by partition, in offset order. An error with no record beside it is raised (kafka-python's
        class); librdkafka retries on its own, so with records it is only logged."""
        limit = max_records or self._max_records
        # librdkafka's consume() waits out its whole timeout unless the batch fills; kafka-python's poll returns
        # as soon as records are there. So: what is queued now, else wait for one record, then what came with it.
        msgs = self._c.consume(limit, 0)
        if not msgs and timeout_ms > 0:
            first = self._c.poll(timeout_ms / 1000)
            msgs = [] if first is None else [first] + (self._c.consume(limit - 1, 0) if limit > 1 else [])
        by: dict = {}
        error = None
        for m in msgs:
            if m.error() is not None:
                if m.error().code() != _E._PARTITION_EOF:
                    error = m.error()
                continue
            key = (m.topic(), m.partition())
            recs = by.get(key)
            if recs is None:
                recs = by[key] = []
            recs.append(_new_record(Record, (key[0], key[1], m.offset(), m.timestamp()[1], m.key(), m.value(),
                                             m.headers() or ())))
        if error is not None:
            if not by:
                raise kafka_error(error)
            log.debug("consumer error beside records", extra={"error": error.str()})
        return {TopicPartition(t, p): recs for (t, p), recs in by.items()}

    def subscribe(self, topics, listener=None) -> None:
        self._listener = listener
        self._c.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                          on_lost=self._on_lost)

    def _on_assign(self, consumer, partitions) -> None:
        self._assignment = [TopicPartition(p.topic, p.partition) for p in partitions]
        consumer.assign(partitions)
        if self._listener is not None and not self._closing:
            self._listener.on_partitions_assigned(list(self._assignment))

    def _on_revoke(self, consumer, partitions) -> None:
        revoked = [TopicPartition(p.topic, p.partition) for p in partitions]
        if self._listener is not None and not self._closing:
            self._listener.on_partitions_revoked(revoked)
        self._forget(revoked)

    def _on_lost(self, consumer, partitions) -> None:
        lost = [TopicPartition(p.topic, p.partition) for p in partitions]
        if self._listener is not None and not self._closing:
            getattr(self._listener, "on_partitions_lost", self._listener.on_partitions_revoked)(lost)
        self._forget(lost)

    def _forget(self, tps) -> None:
        gone = set(tps)
        self._assignment = [tp for tp in self._assignment if tp not in gone]
        for tp in gone:
            self._seeked.pop(tp, None)

    def assign(self, partitions) -> None:
        self._assignment = list(partitions)
        self._seeked.clear()
        if self._assignment:
            self._c.assign([_ck(tp) for tp in self._assignment])
        else:
            self._c.unassign()

    def assignment(self) -> set:
        return set(self._assignment)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._c.seek(_ck(tp, offset))
        except ck.KafkaException as exc:
            if exc.args[0].code() != _E._STATE:
                raise_kafka_error(exc)
            # Not fetching it yet (just assigned): assign again, this partition starting at ``offset``.
            starts = {t: self._start_of(t) for t in self._assignment}
            starts[tp] = offset
            self._c.assign([_ck(t, o) for t, o in starts.items()])
        if offset >= 0:
            self._seeked[tp] = offset
        else:
            self._seeked.pop(tp, None)

    def _start_of(self, tp: TopicPartition) -> int:
        pos = self.position(tp)
        return NO_OFFSET if pos is None else pos  # NO_OFFSET: the committed offset (or auto_offset_reset)

    def seek_to_beginning(self, *partitions) -> None:
        for tp in partitions:
            self.seek(tp, ck.OFFSET_BEGINNING)

    def seek_to_end(self, *partitions) -> None:
        for tp in partitions:
            self.seek(tp, ck.OFFSET_END)

    def pause(self, *partitions) -> None:
        self._c.pause([_ck(tp) for tp in partitions])

    def resume(self, *partitions) -> None:
        self._c.resume([_ck(tp) for tp in partitions])

    # -- offsets ---------------------------------------------------------------------------
    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        """The next offset to read: librdkafka's (past transaction markers too), else the last seek; None
        when neither is known yet (kafka-python would block to look it up)."""
        pos = self._c.position([_ck(tp)])[0].offset
        return pos if pos >= 0 else self._seeked.get(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The high-watermark as the last fetch reported it (None before one)."""
        _, high = self._c.get_watermark_offsets(_ck(tp), cached=True)
        return high if high >= 0 else None

    def committed(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        try:
            got = self._c.committed([_ck(tp)], timeout=(timeout_ms or self._timeout_s * 1000) / 1000)[0]
        except ck.KafkaException as exc:
            raise_kafka_error(exc)
        if got.error is not None:
            raise kafka_error(got.error)
        return got.offset if got.offset >= 0 else None

    def commit(self, offsets: dict, timeout_ms: int | None = None) -> None:
        parts = [ck.TopicPartition(tp.topic, tp.partition, om.offset, *((om.metadata,) if om.metadata else ()))
                 for tp, om in offsets.items()]

        def call():
            try:
                return self._c.commit(offsets=parts, asynchronous=False)
            except ck.KafkaException as exc:
                raise_kafka_error(exc, commit=True)

        done = bounded(call, limit_s=(timeout_ms or self._timeout_s * 1000) / 1000, error=kerr.KafkaTimeoutError,
                       what="commit")
        for part in done or ():
            if part.error is not None:
                raise kafka_error(part.error, commit=True)

    def _watermarks(self, tps) -> dict:
        try:
            return {tp: self._c.get_watermark_offsets(_ck(tp), timeout=self._timeout_s, cached=False)
                    for tp in tps}
        except ck.KafkaException as exc:
            raise_kafka_error(exc)

    def beginning_offsets(self, partitions) -> dict:
        return {tp: lo for tp, (lo, _) in self._watermarks(partitions).items()}

    def end_offsets(self, partitions) -> dict:
        return {tp: hi for tp, (_, hi) in self._watermarks(partitions).items()}

    def offsets_for_times(self, timestamps: dict) -> dict:
        """Per partition, the first offset at or after the time, or None. librdkafka does not return that
        record's timestamp: it is None here (readers check the answer against the record anyway)."""
        query = [ck.TopicPartition(tp.topic, tp.partition, int(ms)) for tp, ms in timestamps.items()]
        try:
            got = self._c.offsets_for_times(query, timeout=self._timeout_s)
        except ck.KafkaException as exc:
            raise_kafka_error(exc)
        out = {}
        for part in got:
            if part.error is not None:
                raise kafka_error(part.error)
            out[TopicPartition(part.topic, part.partition)] = (
                OffsetAndTimestamp(part.offset, None, -1) if part.offset >= 0 else None)
        return out

    def partitions_for_topic(self, topic: str) -> set | None:
        try:
            meta = self._c.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        except ck.KafkaException as exc:
            raise_kafka_error(exc)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return set(meta.partitions)

    def group_metadata(self):
        return self._c.consumer_group_metadata()

    def close(self, autocommit: bool = False) -> None:
        self._closing = True  # the revoke librdkafka makes while leaving is not the runtime's rebalance
        self._c.close()


class _NotInMetadata(Exception):
    pass


_QUEUE_FULL = Backoff(0.05, 0.05)  # librdkafka's poll between tries: delivery reports make room
_METADATA_AGAIN = Backoff(0.2, 0.2)


class SendResult:
    """A send's outcome, completed by librdkafka's delivery report (the shape of kafka-python's future)."""

    __slots__ = ("is_done", "exception", "offset")

    def __init__(self):
        self.is_done = False
        self.exception = None
        self.offset = None

    def __call__(self, err, msg) -> None:  # the delivery report
        if err is not None:
            self.exception = kafka_error(err)
        else:
            self.offset = msg.offset()
        self.is_done = True

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None


class Producer:
    """``confluent_kafka.Producer`` with the kafka-python ``KafkaProducer`` methods the runtime calls."""

    METADATA_TTL_S = 30.0

    def __init__(self, **config):
        self._max_block_s = (config.get("max_block_ms") or 60_000) / 1000
        self._timeout_s = 2 * (config.get("request_timeout_ms") or 30_000) / 1000  # a transaction call's bound
        self._p = ck.Producer(producer_config(config))
        self._topics: dict[str, tuple[float, set]] = {}
        self._unpolled = 0

    def send(self, topic: str, value=None, key=None, headers=None, partition=None, timestamp_ms=None) -> SendResult:
        """Queue one record; its SendResult completes at the acknowledgement. A full queue is waited out for at
        most max_block_ms (KafkaTimeoutError), as kafka-python blocks on a full buffer."""
        fut = SendResult()

        def produce() -> None:
            self._p.produce(topic, value, key, -1 if partition is None else partition, on_delivery=fut,
                            timestamp=timestamp_ms or 0, headers=headers or None)

        try:
            try:
                produce()
            except BufferError:  # a full queue: waited out by serving delivery reports, which empties it
                retry(produce, retry_on=BufferError, backoff=_QUEUE_FULL,
                      deadline=time.monotonic() + self._max_block_s, sleep=self._p.poll)
        except ck.KafkaException as exc:
            raise_kafka_error(exc)
        except OutOfTime:
            raise kerr.KafkaTimeoutError("the producer's queue stayed full for max_block_ms") from None
        self._unpolled += 1
        if self._unpolled >= 1000:  # serve delivery reports now and then, not only at flush
            self._unpolled = 0
            self._p.poll(0)
        return fut

    def serve_deliveries(self) -> None:
        """Complete the ``SendResult`` of every send acknowledged by now, without waiting: librdkafka hands its
        delivery reports over only inside ``poll`` or ``flush``."""
        self._p.poll(0)

    def flush(self, timeout: float | None = None) -> None:
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise kerr.KafkaTimeoutError(f"{left} messages not acknowledged within {timeout} s")

    def partitions_for(self, topic: str) -> set:
        """The topic's partition ids; KafkaTimeoutError when it is not known within max_block_ms (a missing
        topic is never created by this producer). Known topics are cached for METADATA_TTL_S."""
        now = time.monotonic()
        hit = self._topics.get(topic)
        if hit is not None and now - hit[0] < self.METADATA_TTL_S:
            return hit[1]
        deadline = now + self._max_block_s

        def known() -> set:
            try:
                meta = self._p.list_topics(topic, timeout=max(0.1, deadline - time.monotonic())).topics.get(topic)
            except ck.KafkaException as exc:
                raise_kafka_error(exc)
            if meta is None or meta.error is not None or not meta.partitions:
                raise _NotInMetadata
            return set(meta.partitions)

        try:
            parts = retry(known, retry_on=_NotInMetadata, backoff=_METADATA_AGAIN, deadline=deadline)
        except OutOfTime:
            raise kerr.KafkaTimeoutError(f"topic {topic!r} not in the metadata after {self._max_block_s:g} s") from None
        self._topics[topic] = (time.monotonic(), parts)
        return parts

    # -- transactions -----------------------------------------------------------------------
    def _tx(self, call, *args):
        try:
            return call(*args)
        except ck.KafkaException as exc:
            self._p.poll(0)  # the delivery reports that came meanwhile: the caller judges the sends by them
            raise_kafka_error(exc)

    def init_transactions(self) -> None:
        self._tx(self._p.init_transactions, self._timeout_s)

    def begin_transaction(self) -> None:
        self._tx(self._p.begin_transaction)

    def send_offsets_to_transaction(self, offsets: dict, group_metadata) -> None:
        parts = [ck.TopicPartition(tp.topic, tp.partition, om.offset) for tp, om in offsets.items()]
        self._tx(self._p.send_offsets_to_transaction, parts, group_metadata, self._timeout_s)

    def commit_transaction(self) -> None:
        self._tx(self._p.commit_transaction, self._timeout_s)

    def abort_transaction(self) -> None:
        self._tx(self._p.abort_transaction, self._timeout_s)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued for up to ``timeout`` seconds (0: not at all), then drop the rest."""
        if timeout != 0:
            self._p.flush(-1 if timeout is None else timeout)
        self._p.purge(in_queue=True, in_flight=True)
        self._p.poll(0)


class ConfluentClients:
    """The factory of ``kafka_client = confluent``: the same methods as ``pipeline.kafka.clients.KafkaClients``."""

    def consumer(self, **config) -> Consumer:
        return Consumer(**config)

    def producer(self, **config) -> Producer:
        return Producer(**config)
