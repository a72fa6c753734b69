"""Read a topic as `read_committed` defines it, from the transaction markers in the log itself.

A Kafka reader with ``isolation.level=read_committed`` skips the records of
aborted transactions with help from the broker: the fetch response lists the
aborted transactions in the fetched range, built from the ABORT markers in the
log. Tansu writes the markers as Kafka does (COMMIT or ABORT control batches,
and an ABORT for a killed producer's open transaction when its successor calls
``init_transactions``), but its fetch response leaves that list empty, so
kafka-python and librdkafka alike hand aborted records to a read_committed
reader there.

This reader applies the rule to the log directly: it reads every batch with
``read_uncommitted`` and keeps a transactional batch only when the next marker
of its producer id is COMMIT. A transaction with no marker yet (open, or left
open by a producer that never came back) is not returned: Kafka would hold it
above the last stable offset until the coordinator aborts it after
``transaction.timeout.ms``. Against Apache Kafka the result is the same as its
own read_committed reader's.

The batch headers (producer id, control flag) are not exposed by the public
consumer API of either client, so the reader taps kafka-python's fetcher where
it unpacks each fetched record set, and only for the topic it reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer import fetcher as _fetcher
from kafka.record.memory_records import MemoryRecords


FIRST_RECORD_S = 90.0  # the longest wait for the first record set of a topic the broker says holds records


@dataclass(frozen=True)
class LogRecord:
    """One record; accessors named like confluent-kafka's Message so callers read either."""

    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: tuple
    producer_id: int = -1  # the producer that wrote it (-1: not known): says who published a duplicate

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list:
        return list(self._headers)


@dataclass(frozen=True)
class _Batch:
    partition: int
    base_offset: int
    producer_id: int
    transactional: bool
    control: bool
    abort: bool
    records: tuple[LogRecord, ...]


_tap_lock = threading.Lock()
_taps: dict[str, list[_Batch]] = {}


def _partition_records_class():
    for obj in vars(_fetcher.Fetcher).values():
        if isinstance(obj, type) and hasattr(obj, "_unpack_records"):
            return obj
    raise RuntimeError("this kafka-python has no Fetcher.PartitionRecords._unpack_records to read batch headers from")


def _install_tap() -> None:
    cls = _partition_records_class()
    if getattr(cls._unpack_records, "_txlog_tap", False):
        return
    original = cls._unpack_records

    def unpack(self, tp, records, key_deserializer, value_deserializer):
        sink = _taps.get(tp.topic)
        if sink is not None:
            sink.extend(_batches(tp.partition, MemoryRecords(bytes(records._buffer))))
        return original(self, tp, records, key_deserializer, value_deserializer)

    unpack._txlog_tap = True
    cls._unpack_records = unpack


def _batches(partition: int, records: MemoryRecords):
    batch = records.next_batch()
    while batch is not None:
        if batch.magic == 2:
            control = batch.is_control_batch
            rows = list(batch)
            yield _Batch(partition, batch.base_offset, batch.producer_id, batch.is_transactional, control,
                         control and bool(rows) and rows[0].abort,
                         () if control else tuple(LogRecord(partition, r.offset, r.key, r.value, tuple(r.headers), batch.producer_id)
                                                  for r in rows))
        else:  # message format v0/v1: no transactions
            yield _Batch(partition, batch.base_offset, -1, False, False, False,
                         tuple(LogRecord(partition, r.offset, r.key, r.value, ()) for r in batch))
        batch = records.next_batch()


def committed(batches: list[_Batch]) -> list[LogRecord]:
    """The records read_committed returns, in offset order per partition (one partition's batches at a time)."""
    seen: dict[tuple[int, int], _Batch] = {}
    for b in batches:  # a record set can be fetched twice; keep one copy of each batch
        seen.setdefault((b.partition, b.base_offset), b)
    out: list[LogRecord] = []
    pending: dict[tuple[int, int], list[LogRecord]] = {}
    for b in sorted(seen.values(), key=lambda b: (b.partition, b.base_offset)):
        key = (b.partition, b.producer_id)
        if b.control:
            done = pending.pop(key, [])
            if not b.abort:
                out.extend(done)
        elif b.transactional:
            pending.setdefault(key, []).extend(b.records)
        else:
            out.extend(b.records)
    return sorted(out, key=lambda r: (r.partition(), r.offset()))


def read_committed(bootstrap: str, topic: str, partitions: int, timeout: float = 10.0) -> list[LogRecord]:
    """Every committed record of ``topic`` (all partitions, from the start); stops after ``timeout`` s idle,
    counted from the first record set if the broker lists any."""
    with _tap_lock:
        _install_tap()
        _taps[topic] = sink = []
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_uncommitted")
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        # The quiet time runs from the first record set when the broker lists any (connecting and the first
        # fetch can take longer than ``timeout`` on a busy machine), else from now.
        first = any(end > 0 for end in consumer.end_offsets(tps).values())
        start = idle_since = time.monotonic()
        while (time.monotonic() - start < FIRST_RECORD_S if first else time.monotonic() - idle_since < timeout):
            before = len(sink)
            consumer.poll(timeout_ms=500)
            if len(sink) != before:
                first = False
                idle_since = time.monotonic()
    finally:
        consumer.close()
        with _tap_lock:
            _taps.pop(topic, None)
    return committed(sink)
