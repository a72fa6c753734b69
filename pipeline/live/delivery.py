"""Getting a batch's output out and its input offsets committed, in two halves so the loop can step the
next batch in between (``inflight``).

At-least-once: ``send`` every forecast and dead letter; ``settle``: flush, check every acknowledgement
(resend until all are acknowledged, or shutdown gives up: then nothing is committed), then commit the
offsets. Exactly-once: ``start_transaction`` sends the same records in one Kafka transaction whose offsets
and commit run on a helper thread; ``finish_transaction`` waits for it; a failed one is aborted and the
state rewound to the committed offsets (the batch, and any stepped after it, comes again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from kafka.errors import (
    CommitFailedError,
    KafkaTimeoutError,
    ProducerFencedError,
)

from pipeline import logs
from pipeline.config import RunConfig
from pipeline.kafka.clients import KafkaClients
from pipeline.live.clients import (
    FENCED,
    FENCED_BY_ANOTHER,
    GIVE_UP,
    CachingPartitioner,
    Connection,
    StallWatch,
    bounded,
    open_producer,
    publish_error_reason,
    retry,
)
from pipeline.live.inflight import Outbox, Transaction
from pipeline.live.sender import Sender
from pipeline.live.status import RunStats
from pipeline.live.stopping import FatalError, Stopping
from pipeline.metrics import Metrics

log = logs.get("run")


class _Unacknowledged(Exception):
    def __init__(self, reasons: set[str], count: int):
        super().__init__(f"{count} messages unacknowledged")
        self.reasons, self.count = reasons, count


class Delivery:
    def __init__(self, cfg: RunConfig, conn: Connection, clients: KafkaClients, partitioner: CachingPartitioner,
                 metrics: Metrics, stats: RunStats, stopping: Stopping, stall: StallWatch,
                 rewind: Callable[[], None]):
        self.cfg = cfg
        self.conn = conn
        self.clients = clients
        self.partitioner = partitioner
        self.metrics = metrics
        self.stats = stats
        self.stopping = stopping
        self.stall = stall
        self.rewind = rewind
        self.transactional = cfg.processing == "exactly_once"
        self.sender = Sender(cfg, conn, metrics, stopping)
        # exactly-once: a transaction's commit runs here while the loop steps the next batch
        self.committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tx-commit") \
            if self.transactional else None

    def close(self) -> None:
        """Stop the stall watch and the transaction committer's thread (the clients are closed by the runner)."""
        self.stall.close()
        if self.committer is not None:
            self.committer.shutdown(wait=False)

    # -- at-least-once ------------------------------------------------------------------------
    def send(self, outbox: Outbox) -> list:
        """Issue every send of the batch without waiting for acknowledgements: (message, future) pairs for
        ``settle`` (a send that raised a retriable error holds the exception instead of a future)."""
        pending = self.sender.outgoing(outbox)
        for topic in dict.fromkeys(m.topic for m in pending):
            self.sender.await_topic(topic)
        return [(msg, self.sender.send(msg)) for msg in pending]

    def settle(self, outbox: Outbox, sent: list) -> None:
        """Wait for every acknowledgement of a batch issued by ``send`` (resending what failed), then commit its
        offsets. Called oldest batch first: offsets are committed in input order."""
        self.publish(outbox, sent)
        self.commit(outbox.offsets)

    def publish(self, outbox: Outbox, sent: list | None = None) -> None:
        """Send (unless ``sent`` holds the sends already issued) and wait for every acknowledgement; never
        return with a send missing.

        Per record: retriable errors and timeouts are sent again (at-least-once: duplicates possible); a dead
        letter too large is cut (``Sender.cut``); any other permanent refusal stops the run (``Sender.refused``)."""
        if sent is None:
            sent = self.send(outbox)
        if not sent:
            return
        pending: list[Outgoing] = []
        issued = [sent]  # the first round judges the sends already issued

        def attempt() -> None:
            nonlocal pending
            while True:
                failed, reasons = self._flushed(issued.pop() if issued else [(m, self.sender.send(m)) for m in pending])
                if not failed:
                    return
                pending = failed
                if reasons:
                    raise _Unacknowledged(reasons, len(failed))
                self.metrics.beat()  # only cut dead letters to resend: at once

        def on_error(exc: Exception, retry_in_s: float) -> None:
            if not isinstance(exc, _Unacknowledged):
                raise exc
            self.metrics.broker_up.set(0)
            self.metrics.broker_errors.labels("publish").inc()
            self.metrics.block("publish_retrying")
            for reason in exc.reasons:
                self.metrics.publish_errors.labels(reason).inc()
            self.stopping.give_up_if_past_deadline(str(exc))
            log.warning("publish not acknowledged; resending (at-least-once: duplicates possible)",
                        extra={"unacknowledged": exc.count, "reasons": ",".join(sorted(exc.reasons)),
                               "retry_in_s": retry_in_s})

        retry(attempt, on_error, wait=time.sleep, beat=self.metrics.beat)
        self.metrics.broker_up.set(1)
        self.metrics.unblock()
        self.sender.forget_cuts(outbox.records)

    def _flushed(self, sent: list) -> tuple[list[Outgoing], set[str]]:
        """One round: flush what was sent, judge every send. (what to send again, the reasons of the failures)."""
        try:
            with self.stall("publish"):
                self.conn.producer.flush(timeout=self.stopping.cap_s(self.cfg.request_timeout_ms / 1000))
        except Exception as exc:  # noqa: BLE001 - flush timeout: check futures below
            log.warning("flush incomplete", extra={"error": repr(exc)})
        failed, reasons = [], set()
        for msg, fut in sent:
            if isinstance(fut, BaseException):
                error = fut
            elif not fut.is_done:
                error = KafkaTimeoutError("not acknowledged within request_timeout_ms")
            elif fut.failed():
                error = fut.exception
            else:
                continue
            reason = publish_error_reason(error)
            if reason == "too_large" and msg.dead is not None:
                failed.append(self.sender.cut(msg, error))
                continue
            if reason in ("too_large", "refused"):
                self.sender.refused(msg, error)
            reasons.add(reason)
            failed.append(msg)
        return failed, reasons

    def commit(self, offsets: dict) -> None:
        """Commit the offsets, retrying until the broker answers; a rebalance's refusal or a shutdown's
        deadline ends the retries (the records are then processed again, by us or the new owner)."""
        if not offsets:
            return

        def attempt() -> None:
            with self.stall("commit"):
                # Bounded, so this loop keeps control (liveness, shutdown) through an outage.
                self.conn.consumer.commit(offsets, timeout_ms=int(self.stopping.cap_s(
                    self.cfg.request_timeout_ms / 1000) * 1000))
            self.metrics.commits.inc()

        def on_error(exc: Exception, retry_in_s: float):
            self.metrics.broker_errors.labels("commit").inc()
            if isinstance(exc, CommitFailedError):
                log.warning("commit refused after a rebalance; the new owner reprocesses these records",
                            extra={"error": repr(exc)})
                return GIVE_UP
            if self.stopping.event.is_set() and self.stopping.past_deadline():
                log.error("commit failed at shutdown; records will be reprocessed", extra={"error": repr(exc)})
                return GIVE_UP
            log.warning("commit failed; retrying", extra={"error": repr(exc), "retry_in_s": retry_in_s})
            return None

        retry(attempt, on_error, wait=time.sleep, beat=self.metrics.beat)  # beat: waiting on the broker on purpose

    # -- exactly-once -------------------------------------------------------------------------
    def transaction(self, outbox: Outbox) -> bool:
        tx = self.start_transaction(outbox)
        return tx is not None and self.finish_transaction(outbox, tx)

    def start_transaction(self, outbox: Outbox) -> Transaction | None:
        """Forecasts, dead letters and the input offsets in one transaction: sends issued here, the offsets and
        the commit on a helper thread (``finish_transaction`` waits for them). None: it failed, aborted, rewound.

        A dead letter refused for its size is cut in the redo (``Sender.cuts`` remembers it by source); a permanent
        refusal stops the run. Fenced after the transaction was open longer than transaction_timeout_ms: the
        broker aborted it for time, so a new producer takes over and the batch is redone from the committed
        offsets. Fenced sooner: another process took the transactional id, which is fatal."""
        offsets = outbox.offsets
        tx = Transaction([], time.monotonic(), self.conn.producer, Future())
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

    def finish_transaction(self, outbox: Outbox, tx: Transaction) -> bool:
        """Wait for the transaction's commit. False: it failed, was aborted and the state rewound."""
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

    def _await_commit(self, tx: Transaction) -> None:
        """The commit's outcome from the helper thread; after a stop request, not past the flush's deadline (the
        commit was given its limits before the stop: they may end later)."""
        while not tx.commit.done():
            if self.stopping.past_deadline():
                raise KafkaTimeoutError("transaction commit unanswered at the shutdown deadline")
            futures_wait([tx.commit], timeout=0.2)
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
        limit_ms = int(self.stopping.cap_s(self.cfg.longest_bounded_wait_ms / 1000) * 1000)
        return bounded(call, *args, limit_ms=limit_ms, beat=self.metrics.beat)

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

        self.conn.producer = retry(self.make_producer, on_error, wait=self.stopping.event.wait,
                                   beat=self.metrics.beat,  # waiting on the broker on purpose
                                   stopped=self.stopping.event.is_set)

    def make_producer(self):
        return open_producer(self.clients, self.cfg, self.partitioner)
