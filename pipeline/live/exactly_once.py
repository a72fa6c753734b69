"""Exactly-once delivery: ``dispatch`` sends a batch's forecasts and dead letters in one Kafka transaction,
whose input offsets and commit run on a helper thread while the loop steps the next batch; ``settle`` waits
for that commit. One transaction at a time: the next batch is dispatched only after the open one is settled
(``depth`` at most 2: one open, one being stepped). A failed transaction is aborted and the state rewound to
the committed offsets: every batch in flight is dropped, and its records come again. A revoke waits for the
open commit first, so the partitions' next owner reads committed offsets that include it (nothing twice)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from kafka.errors import KafkaTimeoutError, ProducerFencedError

from pipeline import logs
from pipeline.config import RunConfig
from pipeline.kafka.clients import KafkaClients
from pipeline.live.clients import (
    FENCED,
    FENCED_BY_ANOTHER,
    CachingPartitioner,
    Connection,
    StallWatch,
    open_producer,
)
from pipeline.live.inflight import InFlight, Outbox
from pipeline.live.sender import Sender
from pipeline.live.stopping import FatalError, Stopping
from pipeline.metrics import Metrics
from pipeline.waiting import Backoff, OutOfTime, bounded, retry

log = logs.get("run")


@dataclass
class Transaction:
    """One batch's open transaction: its sends, when it began, its producer, and its commit (running on the
    helper thread)."""

    begun: float
    producer: object
    commit: Future = field(default_factory=Future)
    sent: list = field(default_factory=list)
    empty: bool = False  # nothing to send or commit

    def acknowledged(self) -> bool:
        """Committed, without waiting. A failed commit is not: the loop meets it where an abort may rewind."""
        return committed(self.commit)


def committed(commit: Future) -> bool:
    return commit.done() and not commit.cancelled() and commit.exception() is None


class _Unanswered(Exception):
    pass


class ExactlyOnce:
    def __init__(self, cfg: RunConfig, conn: Connection, clients: KafkaClients, partitioner: CachingPartitioner,
                 metrics: Metrics, stopping: Stopping, stall: StallWatch, sender: Sender,
                 rewind: Callable[[], None]):
        self.cfg = cfg
        self.conn = conn
        self.clients = clients
        self.partitioner = partitioner
        self.metrics = metrics
        self.stopping = stopping
        self.stall = stall
        self.sender = sender
        self.rewind = rewind
        self.depth = min(cfg.max_batches_in_flight, 2)  # one transaction open while the next batch is stepped
        self.committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tx-commit")

    def close(self) -> None:
        """Stop the stall watch and the committer's thread (the clients are closed by the runner)."""
        self.stall.close()
        self.committer.shutdown(wait=False)

    def dispatch(self, outbox: Outbox) -> Transaction | None:
        """Forecasts, dead letters and the input offsets in one transaction: sends issued here, the offsets and
        the commit on the helper thread (``settle`` waits for them). None: it failed, aborted, rewound.

        A dead letter refused for its size is cut in the redo (``Sender.cuts`` remembers it by source); a permanent
        refusal stops the run. Fenced after the transaction was open longer than transaction_timeout_ms: the
        broker aborted it for time, so a new producer takes over and the batch is redone from the committed
        offsets. Fenced sooner: another process took the transactional id, which is fatal."""
        offsets = outbox.offsets
        tx = Transaction(time.monotonic(), self.conn.producer)
        if not outbox.forecasts and not outbox.dead and not offsets:
            tx.commit.set_result(None)
            tx.empty = True
            return tx
        outgoing = self.sender.outgoing(outbox)
        for topic in dict.fromkeys(m.topic for m in outgoing):
            self.sender.await_topic(topic)
        self.metrics.beat()
        tx.begun = time.monotonic()
        producer = tx.producer
        try:
            with self.stall("transaction"):
                producer.begin_transaction()
                for msg in outgoing:
                    fut = self.sender.send(msg)
                    if isinstance(fut, BaseException):
                        raise fut
                    tx.sent.append((msg, fut))
            group = self.conn.consumer.group_metadata() if offsets else None
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: abort, rewind, redo from the committed offsets
            self._aborted(tx, exc)
            return None
        tx.commit = self.committer.submit(self._commit, producer, offsets, group)
        return tx

    def _commit(self, producer, offsets: dict, group) -> None:
        """On the helper thread: the input offsets into the transaction, then its commit; each bounded."""
        if offsets:
            self._bounded(producer.send_offsets_to_transaction, offsets, group)
        self._bounded(producer.commit_transaction)

    def settle(self, outbox: Outbox, tx: Transaction) -> bool:
        """Wait for the transaction's commit. False: it failed, was aborted and the state rewound (every batch
        in flight is to be dropped)."""
        if tx.empty:
            return True
        try:
            with self.stall("transaction"):
                self._await_commit(tx)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: abort, rewind, redo from the committed offsets
            self._aborted(tx, exc)
            return False
        self.metrics.transactions.labels("committed").inc()
        self.metrics.broker_up.set(1)
        self.metrics.unblock()
        self.metrics.beat()
        self.sender.forget_cuts(outbox.records)
        self.metrics.commits.inc()
        return True

    def revoke(self, inflight: InFlight, partitions: Iterable) -> bool:
        """Let every open transaction's commit end (success or not) before the partitions go. True: every batch
        in flight is committed now (none failed, none still running)."""
        for entry in inflight.batches:
            with contextlib.suppress(TimeoutError):  # still running: the loop's thread judges it later
                entry.pending.commit.exception(timeout=self.cfg.longest_bounded_wait_ms / 1000)
        return bool(inflight) and all(entry.pending.acknowledged() for entry in inflight.batches)

    def _await_commit(self, tx: Transaction) -> None:
        """The commit's outcome from the helper thread; after a stop request, not past the flush's deadline (the
        commit was given its limits before the stop: they may end later)."""
        def answered() -> None:
            futures_wait([tx.commit], timeout=0.2)
            if not tx.commit.done():
                raise _Unanswered

        try:
            retry(answered, retry_on=_Unanswered, backoff=Backoff(0.0, 0.0), deadline=self.stopping.drain_deadline)
        except OutOfTime:
            raise KafkaTimeoutError("transaction commit unanswered at the shutdown deadline") from None
        tx.commit.result()

    def _aborted(self, tx: Transaction, exc: BaseException) -> None:
        """A failed transaction: abort it (or fence its producer) and rewind to the committed offsets."""
        if isinstance(exc, FENCED):
            open_s = time.monotonic() - tx.begun
            if open_s < self.cfg.transaction_timeout_ms / 1000:
                raise FatalError(FENCED_BY_ANOTHER) from None
            self.metrics.transactions.labels("aborted").inc()
            self.metrics.publish_errors.labels("fenced_by_timeout").inc()
            log.warning("the broker aborted the transaction for time and fenced this producer; replacing it and "
                        "rewinding to the committed offsets", extra={"open_s": round(open_s, 1), "error": repr(exc),
                                                                     "transaction_timeout_ms": self.cfg.transaction_timeout_ms})
            self.replace_producer()
            self.rewind()
            return
        self.sender.judge_sends(tx.sent)
        self.metrics.transactions.labels("aborted").inc()
        self.metrics.broker_up.set(0)
        self.metrics.publish_errors.labels("timeout" if isinstance(exc, KafkaTimeoutError) else "retriable").inc()
        log.warning("transaction failed; aborting and rewinding to the committed offsets",
                    extra={"error": repr(exc)})
        try:
            self._bounded(tx.producer.abort_transaction)
        except Exception as abort_exc:  # noqa: BLE001 - a fresh producer fences this one below
            log.warning("abort failed; replacing the producer", extra={"error": repr(abort_exc)})
            self.replace_producer()
        self.metrics.beat()
        self.rewind()

    def _bounded(self, call, *args):
        """A transaction call kafka-python waits on without a timeout (a response lost in a broken connection
        would block it forever): at most the config's longest bounded wait (twice the request timeout, kept
        below transaction_timeout_ms), cut to the flush's deadline at shutdown; then KafkaTimeoutError (the
        caller aborts, replaces the producer, which fences the stuck one, and rewinds)."""
        limit_s = self.stopping.cap_s(self.cfg.longest_bounded_wait_ms / 1000)
        return bounded(call, *args, limit_s=limit_s, error=KafkaTimeoutError, beat=self.metrics.beat)

    def replace_producer(self) -> None:
        """A new transactional producer (same id: it fences the old one); retried until the broker answers."""
        try:
            self.conn.producer.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass
        self.conn.producer = None

        def on_error(exc: Exception, retry_in_s: float) -> None:
            if isinstance(exc, ProducerFencedError):
                raise FatalError(FENCED_BY_ANOTHER) from None
            self.metrics.broker_errors.labels("producer").inc()  # broker away: keep trying
            log.warning("cannot create the transactional producer; retrying",
                        extra={"error": repr(exc), "retry_in_s": retry_in_s})

        self.conn.producer = retry(self.make_producer, on_error, stop=self.stopping.event,
                                   beat=self.metrics.beat)  # waiting on the broker on purpose

    def make_producer(self):
        return open_producer(self.clients, self.cfg, self.partitioner)
