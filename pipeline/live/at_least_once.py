"""At-least-once delivery: ``dispatch`` issues every send of a batch; ``settle`` flushes, checks every
acknowledgement (resending until all are acknowledged, or shutdown gives up: then nothing is committed),
then commits the batch's offsets. A revoke forgets the revoked partitions' offsets of every batch in flight:
their new owner processes those records again (duplicates possible, nothing lost)."""

from __future__ import annotations

from collections.abc import Iterable

from kafka.errors import CommitFailedError, KafkaTimeoutError

from pipeline import logs
from pipeline.config import RunConfig
from pipeline.live.clients import Connection, StallWatch, publish_error_reason
from pipeline.live.inflight import InFlight, Outbox
from pipeline.live.sender import Sender
from pipeline.live.stopping import PublishTimeout, Stopping
from pipeline.metrics import Metrics
from pipeline.waiting import GIVE_UP, OutOfTime, retry
from pipeline.wire.outgoing import Outgoing

log = logs.get("run")


class Sends(list):
    """One batch's sends, issued by ``dispatch``: (message, future) pairs (a send that raised a retriable error
    holds the exception instead of a future)."""

    def acknowledged(self) -> bool:
        """Every send answered, without waiting. The last send is usually the last to be answered: checked first."""
        return all(fut.is_done for _, fut in reversed(self) if not isinstance(fut, BaseException))


class _Unacknowledged(Exception):
    def __init__(self, reasons: set[str], count: int):
        super().__init__(f"{count} messages unacknowledged")
        self.reasons, self.count = reasons, count


class AtLeastOnce:
    def __init__(self, cfg: RunConfig, conn: Connection, metrics: Metrics, stopping: Stopping, stall: StallWatch,
                 sender: Sender):
        self.cfg = cfg
        self.conn = conn
        self.metrics = metrics
        self.stopping = stopping
        self.stall = stall
        self.sender = sender
        self.depth = cfg.max_batches_in_flight

    def close(self) -> None:
        self.stall.close()

    def dispatch(self, outbox: Outbox) -> Sends:
        """Issue every send of the batch without waiting for acknowledgements."""
        pending = self.sender.outgoing(outbox)
        for topic in dict.fromkeys(m.topic for m in pending):
            self.sender.await_topic(topic)
        return Sends([(msg, self.sender.send(msg)) for msg in pending])

    def settle(self, outbox: Outbox, sends: Sends) -> bool:
        """Wait for every acknowledgement of the batch (resending what failed), then commit its offsets. Called
        oldest batch first: offsets are committed in input order. Always True (nothing here rewinds)."""
        self._publish(outbox, sends)
        self.commit(outbox.offsets)
        return True

    def revoke(self, inflight: InFlight, partitions: Iterable) -> bool:
        """Never commit a revoked partition's offsets (its new owner reprocesses them). False: the batches in
        flight are not committed."""
        inflight.forget_partitions(partitions)
        return False

    def _publish(self, outbox: Outbox, sent: Sends) -> None:
        """Wait for every acknowledgement of ``sent``; never return with a send missing.

        Per record: retriable errors and timeouts are sent again (at-least-once: duplicates possible); a dead
        letter too large is cut (``Sender.cut``); any other permanent refusal stops the run (``Sender.refused``);
        past the flush's deadline at shutdown, ``PublishTimeout``."""
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

        def on_error(exc: _Unacknowledged, retry_in_s: float) -> None:
            self.metrics.broker_up.set(0)
            self.metrics.broker_errors.labels("publish").inc()
            self.metrics.block("publish_retrying")
            for reason in exc.reasons:
                self.metrics.publish_errors.labels(reason).inc()
            log.warning("publish not acknowledged; resending (at-least-once: duplicates possible)",
                        extra={"unacknowledged": exc.count, "reasons": ",".join(sorted(exc.reasons)),
                               "retry_in_s": retry_in_s})

        try:
            retry(attempt, on_error, retry_on=_Unacknowledged, deadline=self.stopping.drain_deadline,
                  wake=self.stopping.event, beat=self.metrics.beat)
        except OutOfTime as exc:
            raise PublishTimeout(str(exc.__cause__)) from None
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
        """Commit the offsets, retrying until the broker answers; a rebalance's refusal or the flush's deadline
        at shutdown ends the retries (the records are then processed again, by us or the new owner)."""
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
            log.warning("commit failed; retrying", extra={"error": repr(exc), "retry_in_s": retry_in_s})
            return None

        try:  # beat: waiting on the broker on purpose
            retry(attempt, on_error, deadline=self.stopping.drain_deadline, wake=self.stopping.event,
                  beat=self.metrics.beat)
        except OutOfTime as exc:
            self.metrics.broker_errors.labels("commit").inc()
            log.error("commit failed at shutdown; records will be reprocessed", extra={"error": repr(exc.__cause__)})
