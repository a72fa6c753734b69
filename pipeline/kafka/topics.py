"""Read a time range of a Kafka topic for backtests and training, without disturbing anyone.

Manual assignment (no consumer group, no commits: a live group's offsets are
never touched). Per partition, the range is Kafka's own definition: from the
first offset whose record timestamp is at or after ``from`` to the first one at
or after ``to`` (exclusive), found with ``offsets_for_times``; an open end
stops at the partition's high-watermark as the first fetch reports it (not the
ListOffsets answer, which some brokers report late). Records come back in
offset order per partition, decoded into canonical tick columns plus
``partition`` and ``offset``; messages that are not valid ticks come back as
rejections with their reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from operators.errors import TickcastError
from pipeline.wire.ticks import decode_records

log = logging.getLogger(__name__)


class TopicReadError(TickcastError):
    """The topic cannot be read (unknown topic, broker unreachable)."""


@dataclass(frozen=True)
class TopicRange:
    ticks: pa.Table  # canonical columns + partition (int32) + offset (int64), offset order per partition
    rejected: pa.Table  # partition, offset, reason, detail


def read_topic_range(bootstrap: str, topic: str, from_ms: int | None, to_ms: int | None, *,
                     client_options: dict | None = None, timeout_s: float = 60.0, progress=None,
                     clients=None) -> TopicRange:
    """``clients``: the factory of the consumer (``pipeline.kafka.clients.make_clients``); kafka-python's
    ``KafkaConsumer`` when None."""
    consumer = (clients.consumer if clients is not None else KafkaConsumer)(
        bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", max_poll_records=20_000, fetch_max_bytes=32 * 1024 * 1024,
        client_id="tickcast-backtest", **(client_options or {}))
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TopicReadError(f"topic {topic!r} does not exist on {bootstrap} (or has no partitions)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        starts = _offsets_at(consumer, tps, from_ms, beginning=True)
        ends = _offsets_at(consumer, tps, to_ms, beginning=False) if to_ms is not None else {}
        if to_ms is not None:  # a `to` past the end: read to the high-watermark
            ends = {tp: off for tp, off in ends.items() if off is not None}
        wanted = {tp: starts[tp] for tp in tps if starts[tp] is not None}
        consumer.assign(list(wanted))
        for tp, off in wanted.items():
            consumer.seek(tp, off)
        keys, values, partitions, offsets, stamps = [], [], [], [], []
        done: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + timeout_s
        idle_polls = 0
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise TopicReadError(f"reading {topic} did not reach the range end within {timeout_s:g}s "
                                     f"(partitions done: {sorted(tp.partition for tp in done)})")
            polled = consumer.poll(timeout_ms=500)
            got = 0
            for tp, records in polled.items():
                if tp in done:
                    continue
                end = _end_for(consumer, tp, ends)
                for r in records:
                    if end is not None and r.offset >= end:
                        break
                    keys.append(r.key)
                    values.append(r.value)
                    partitions.append(tp.partition)
                    offsets.append(r.offset)
                    stamps.append(r.timestamp)
                    got += 1
            if progress is not None and got:
                progress(got)
            for tp in wanted:
                if tp in done:
                    continue
                end = _end_for(consumer, tp, ends)
                pos = consumer.position(tp)
                if end is not None and pos >= end:
                    done[tp] = end
                    consumer.pause(tp)
            idle_polls = idle_polls + 1 if got == 0 else 0
            if idle_polls >= 20 and not got:  # empty fetches: nothing beyond what we have
                for tp in wanted:
                    if tp not in done and consumer.highwater(tp) is None:
                        end = consumer.position(tp)
                        done[tp] = end
    finally:
        consumer.close(autocommit=False)
    return _decode(keys, values, np.array(partitions, dtype=np.int32), np.array(offsets, dtype=np.int64),
                   np.array(stamps, dtype=np.int64))


def _offsets_at(consumer: KafkaConsumer, tps: list[TopicPartition], at_ms: int | None,
                beginning: bool) -> dict[TopicPartition, int | None]:
    """First offset with a record timestamp >= at_ms, per partition (None: no such record yet)."""
    if at_ms is None:
        return consumer.beginning_offsets(tps) if beginning else {tp: None for tp in tps}
    return first_offsets_at(consumer, tps, at_ms)


def first_offsets_at(consumer: KafkaConsumer, tps: list[TopicPartition], at_ms: int) -> dict:
    """Per partition, the first offset whose record timestamp is >= ``at_ms``, or None past the end.

    Asks the broker (``offsets_for_times``) and checks the answer against the records themselves: some
    Kafka-protocol brokers answer offset 0 for any time. When the answer does not hold, binary search by
    fetching single records (this assumes timestamps do not decrease within a partition, as they do not
    for CreateTime set from event time or for LogAppendTime). Leaves ``consumer`` unassigned.
    """
    hints = consumer.offsets_for_times({tp: int(at_ms) for tp in tps})
    out = {}
    for tp in tps:
        consumer.assign([tp])
        lo = consumer.beginning_offsets([tp])[tp]
        first = _timestamp_at(consumer, tp, lo)
        hi = consumer.highwater(tp)
        if first is None or hi is None:  # empty partition
            out[tp] = None
            continue
        hint = hints.get(tp)
        if hint is not None and hint.timestamp != -1 and lo <= hint.offset < hi \
                and (_timestamp_at(consumer, tp, hint.offset) or -1) >= at_ms \
                and (hint.offset == lo or (_timestamp_at(consumer, tp, hint.offset - 1) or at_ms) < at_ms):
            out[tp] = hint.offset
            continue
        if hint is not None and hint.timestamp != -1:
            log.debug("offsets_for_times answer does not hold; searching", extra={"partition": tp.partition})
        # Smallest offset in [lo, hi) with timestamp >= at_ms; hi means none.
        left, right = lo, hi
        while left < right:
            mid = (left + right) // 2
            ts = _timestamp_at(consumer, tp, mid)
            if ts is not None and ts >= at_ms:
                right = mid
            else:
                left = mid + 1
        out[tp] = left if left < hi else None
    consumer.assign([])
    return out


def _timestamp_at(consumer: KafkaConsumer, tp: TopicPartition, offset: int, timeout_s: float = 10.0) -> int | None:
    """Timestamp of the first record at or after ``offset`` (None if there is none)."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in consumer.poll(timeout_ms=200, max_records=1).get(tp, []):
            if r.offset >= offset:
                return r.timestamp
        hw = consumer.highwater(tp)
        if hw is not None and offset >= hw:
            return None
    return None


def _end_for(consumer: KafkaConsumer, tp: TopicPartition, ends: dict) -> int | None:
    """The exclusive end offset: the `to` offset if the topic has reached it, else the high-watermark."""
    end = ends.get(tp)
    if end is not None:
        return end
    return consumer.highwater(tp)


def _decode(keys, values, partitions: np.ndarray, offsets: np.ndarray,
            stamps: np.ndarray | None = None) -> TopicRange:
    # record timestamps: the same timestamp verdicts as live
    decoded = decode_records(keys, values, stamps, partitions, offsets)
    ticks = decoded.ticks
    bad = [i for i, _, _ in decoded.rejected]
    rejected = pa.table({"partition": pa.array(partitions[bad] if bad else [], pa.int32()),
                         "offset": pa.array(offsets[bad] if bad else [], pa.int64()),
                         "reason": pa.array([r.label for _, r, _ in decoded.rejected], pa.string()),
                         "detail": pa.array([d for _, _, d in decoded.rejected], pa.string())})
    return TopicRange(ticks, rejected)


def load_topic_range(bootstrap: str, topic: str, time_from: str | None, time_to: str | None, *,
                     quiet: bool = False, kafka_client: str = "kafka-python") -> TopicRange:
    """A topic's ticks between two ISO 8601 times (``--from``/``--to``), with a progress bar on stderr.

    The user-facing read behind ``--topic``: an unreachable broker or an empty range is a ConfigError
    in one line."""
    from kafka.errors import KafkaError  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from pipeline.config import ConfigError, check_kafka_client, parse_time_ns  # noqa: PLC0415
    from pipeline.kafka.clients import make_clients  # noqa: PLC0415

    check_kafka_client(kafka_client, "--kafka-client")
    lo, hi = parse_time_ns(time_from, "--from"), parse_time_ns(time_to, "--to")
    with tqdm(unit="msg", unit_scale=True, desc=f"reading {topic}", disable=quiet, mininterval=0.5) as bar:
        try:
            got = read_topic_range(bootstrap, topic, None if lo is None else lo // 1_000_000,
                                   None if hi is None else hi // 1_000_000, progress=bar.update,
                                   clients=make_clients(kafka_client))
        except KafkaError as exc:
            raise ConfigError(f"cannot read {topic} from {bootstrap}: {exc}; is Kafka "
                              "running and the address right?") from None
    if got.ticks.num_rows == 0 and got.rejected.num_rows == 0:
        raise ConfigError(f"no records in {topic} for the given --from/--to; widen the range")
    return got
