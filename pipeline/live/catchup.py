"""Catch-up reads: past records of some input partitions, read with a consumer of their own, up to a target
that moves, for a model that joins a running deployment (a candidate whose state must be rebuilt from a
``warmup`` window of input while the primary keeps publishing).

The main loop owns every record at or after a partition's target (the primary's stepped position); a
``CatchUp`` hands ``step`` each record before it exactly once, in offset order per partition. Its consumer has
no group and commits nothing (``assign``), so the group's offsets and the main consumer are untouched. One
``advance`` reads at most ``max_records`` with one bounded poll: the loop is never held for long. A broker
error is logged, counted and retried at the next ``advance``.

Offsets are counted, not assumed: a transactional topic has control records and a compacted one has holes,
so a partition has reached its target when the consumer's position is at or past it, not when a record at
``target - 1`` was read. Records a fetch returns at or past the target (or past the round's budget) are
dropped and the partition sought back, so the next round reads them again, or leaves them to the main loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline import logs
from pipeline.config import RunConfig, parse_duration_ns
from pipeline.kafka.clients import KafkaClients
from pipeline.kafka.topics import first_offsets_at
from pipeline.live.clients import client_options
from pipeline.metrics import Metrics

log = logs.get("run")


def open_catchup_consumer(clients: KafkaClients, cfg: RunConfig) -> Any:
    """A consumer for catch-up reads: no group, no commits, the main consumer's isolation level (the records a
    candidate is warmed with are the ones the primary stepped) and security options."""
    return clients.consumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        isolation_level="read_committed" if cfg.processing == "exactly_once" else "read_uncommitted",
        max_poll_records=cfg.max_batch_ticks, fetch_max_bytes=cfg.fetch_max_bytes,
        max_partition_fetch_bytes=min(cfg.fetch_max_bytes, 4 * 1024 * 1024), fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        **client_options(cfg))


def warmup_start_offsets(consumer: Any, tps: Iterable[TopicPartition], until_ms: int,
                         warmup: str) -> dict[TopicPartition, int | None]:
    """Per partition, the first offset whose record timestamp is at or after ``until_ms - warmup`` (None: no
    record in the window, nothing to replay). Leaves ``consumer`` unassigned (``first_offsets_at``)."""
    window_ms = parse_duration_ns(warmup, "warmup") // 1_000_000
    return first_offsets_at(consumer, list(tps), int(until_ms) - window_ms)


class CatchUp:
    """Reads partitions from a start offset up to a moving target, for one model's state (``candidate``: its
    model version, for the metrics). ``open_consumer()`` makes the consumer (``open_catchup_consumer``); it is
    opened at the first ``begin`` and closed when nothing is pending. Single-threaded: the loop's thread."""

    def __init__(self, open_consumer: Callable[[], Any], metrics: Metrics, candidate: str = "",
                 poll_timeout_ms: int = 50):
        self._open = open_consumer
        self.metrics = metrics
        self.candidate = candidate
        self.poll_timeout_ms = poll_timeout_ms
        self._consumer: Any = None
        self._next: dict[TopicPartition, int] = {}  # per pending partition: the next offset to step
        self._paused: set[TopicPartition] = set()
        self._placed = False  # the consumer's assignment and positions are ours (else: assign and seek first)
        metrics.candidate_catchup_records.labels(candidate)  # a series at 0 from the start

    def pending(self) -> set[TopicPartition]:
        """The partitions still catching up."""
        return set(self._next)

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset ``advance`` would step for ``tp`` (None: not pending)."""
        return self._next.get(tp)

    def begin(self, tp: TopicPartition, start_offset: int) -> None:
        """Catch ``tp`` up from ``start_offset`` (again from there, if it was already pending)."""
        self._next[tp] = int(start_offset)
        self._placed = False
        self._gauge()

    def cancel(self, tp: TopicPartition) -> None:
        """Stop catching ``tp`` up (revoked); its records are never stepped."""
        if self._next.pop(tp, None) is not None:
            self._placed = False
            self._gauge()
        self._close_if_idle()

    def start_offsets(self, tps: Iterable[TopicPartition], until_ms: int,
                      warmup: str) -> dict[TopicPartition, int | None]:
        """``warmup_start_offsets`` asked with this catch-up's consumer (broker errors raise)."""
        consumer = self._client()
        self._placed = False  # the probe leaves the consumer unassigned
        try:
            return warmup_start_offsets(consumer, tps, until_ms, warmup)
        finally:
            self._close_if_idle()

    def advance(self, targets: dict[TopicPartition, int], step: Callable[[list], None],
                max_records: int) -> set[TopicPartition]:
        """Step at most ``max_records`` records before their partition's target; the partitions that reached
        their target (position >= target), now finished and no longer pending. A partition without a target
        here is not read this round. ``step`` gets the records read (offset order per partition) in one call,
        if any; if it raises, the records count as not stepped and are read again next time."""
        if not self._next:
            return set()
        done = {tp for tp, nxt in self._next.items() if tp in targets and nxt >= targets[tp]}
        active = {tp for tp in self._next if tp in targets and tp not in done}
        taken: list = []
        moved: dict[TopicPartition, int] = {}
        try:
            if active and max_records > 0:
                consumer = self._place(active)
                polled = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=max_records)
                room = max_records
                for tp in sorted(active):
                    nxt, target, cut = self._next[tp], targets[tp], False
                    for r in polled.get(tp, ()):
                        if r.offset < nxt:
                            continue  # read before (a fetch from an older position)
                        if r.offset >= target or room <= 0:
                            # Nothing came between: [nxt, target) holds holes only, the target is reached.
                            nxt, cut = (target if r.offset >= target else nxt), True
                            break
                        taken.append(r)
                        nxt, room = r.offset + 1, room - 1
                    if cut:
                        consumer.seek(tp, nxt)  # what follows is read again, or is the main loop's
                    else:  # past control records and holes too, so the target is reached without a record
                        nxt = max(nxt, consumer.position(tp, timeout_ms=self.poll_timeout_ms) or nxt)
                    moved[tp] = nxt
        except KafkaError as exc:
            self._placed = False  # position unsure: seek again from what was stepped
            self.metrics.broker_errors.labels("catchup").inc()
            log.warning("catch-up read failed; retrying at the next round",
                        extra={"candidate": self.candidate, "error": repr(exc)})
            return self._finish(done)
        if taken:
            self._placed = False  # until step returns: the records of a step that raised are read again
            step(taken)
            self._placed = True
            self.metrics.candidate_catchup_records.labels(self.candidate).inc(len(taken))
        self._next.update(moved)
        return self._finish(done | {tp for tp, nxt in moved.items() if nxt >= targets[tp]})

    def close(self) -> None:
        """Close the consumer; nothing is pending after this."""
        self._next.clear()
        self._gauge()
        self._close_if_idle()

    def _finish(self, done: set[TopicPartition]) -> set[TopicPartition]:
        for tp in done:
            log.info("catch-up reached its target", extra={
                "candidate": self.candidate, "partition": f"{tp.topic}/{tp.partition}", "offset": self._next.pop(tp)})
        if done:
            self._placed = False
            self._gauge()
            self._close_if_idle()
        return done

    def _place(self, active: set[TopicPartition]) -> Any:
        """The consumer, assigned every pending partition at its next offset, reading only ``active`` ones."""
        consumer = self._client()
        if not self._placed:
            consumer.assign(sorted(self._next))
            consumer.resume(*sorted(self._next))  # kafka-python keeps a kept partition's pause across assign
            for tp, nxt in self._next.items():
                consumer.seek(tp, nxt)
            self._paused = set()
            self._placed = True
        idle = set(self._next) - active
        if idle != self._paused:
            if self._paused - idle:
                consumer.resume(*sorted(self._paused - idle))
            if idle - self._paused:
                consumer.pause(*sorted(idle - self._paused))
            self._paused = idle
        return consumer

    def _client(self) -> Any:
        if self._consumer is None:
            self._consumer = self._open()
            self._placed = False
        return self._consumer

    def _close_if_idle(self) -> None:
        if not self._next and self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close(autocommit=False)
            except Exception as exc:  # noqa: BLE001 - a failed close must not stop the loop
                log.warning("catch-up consumer close failed", extra={"error": repr(exc)})

    def _gauge(self) -> None:
        self.metrics.candidate_catchup_partitions.labels(self.candidate).set(len(self._next))
