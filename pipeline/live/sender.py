"""One record out, with the policy for what the producer or the broker says about it: a dead letter too large
for its topic is sent again cut (``cut``: remembered per source record until its batch is delivered), a
permanent refusal stops the run before anything of the batch is committed (``refused``), anything else is
retriable and left to the caller (``send`` returns it). A topic that does not exist yet is waited out
(``await_topic``)."""

from __future__ import annotations

import time

from kafka.errors import KafkaError

from pipeline import logs
from pipeline.config import RunConfig
from pipeline.live.clients import Connection, publish_error_reason
from pipeline.live.inflight import Outbox
from pipeline.live.stopping import FatalError, PublishTimeout, Stopping
from pipeline.metrics import Metrics
from pipeline.waiting import Backoff, OutOfTime, retry
from pipeline.wire.outgoing import DEAD_LETTER_CUTS, DeadLetter, Outgoing, dead_letter

log = logs.get("run")


class Sender:
    def __init__(self, cfg: RunConfig, conn: Connection, metrics: Metrics, stopping: Stopping):
        self.cfg = cfg
        self.conn = conn
        self.metrics = metrics
        self.stopping = stopping
        self.cuts: dict[tuple[str, int, int], int] = {}  # dead letters (by source) refused for size: cut level

    def outgoing(self, outbox: Outbox) -> list[Outgoing]:
        """Every forecast message, then every dead letter (original bytes, reason; partition None: by key)."""
        out = list(outbox.forecasts)
        out += [self._dead_letter(d) for d in outbox.dead]
        return out

    def _dead_letter(self, d: DeadLetter) -> Outgoing:
        r = d.record
        return dead_letter(self.cfg.dead_letter_topic, d, self.cuts.get((r.topic, r.partition, r.offset), 0))

    def cut(self, msg: Outgoing, exc: BaseException) -> Outgoing:
        """The next, smaller version of a dead letter refused for its size; FatalError when none is left."""
        r = msg.dead.record
        source = (r.topic, r.partition, r.offset)
        level = self.cuts.get(source, 0)
        if level >= len(DEAD_LETTER_CUTS):
            self.refused(msg, exc)
        self.cuts[source] = level + 1
        if level == 0:
            self.metrics.dead_letters_truncated.inc()
        self.metrics.publish_errors.labels("too_large").inc()
        log.warning("dead letter too large for its topic or the producer; sending it cut",
                    extra={"source": f"{r.topic}/{r.partition}/{r.offset}", "bytes": len(msg.value),
                           "cut_to": DEAD_LETTER_CUTS[level], "error": repr(exc)})
        return self._dead_letter(msg.dead)

    def refused(self, msg: Outgoing, exc: BaseException):
        """A record the broker or producer refuses for good (not for time, not a dead letter we can cut): stop
        before committing anything, with what to fix. Nothing is lost: the batch is read again after the fix."""
        self.metrics.publish_errors.labels("refused").inc()
        what = "dead letter" if msg.dead else "forecast message"
        raise FatalError(f"topic {msg.topic!r} refuses a {what} of {len(msg.value)} bytes for good ({exc!r}); "
                         f"nothing of this batch was committed; fix the topic (existence, ACLs, max.message.bytes) "
                         f"and restart") from None

    def send(self, msg: Outgoing):
        """producer.send, with the policy for what it raises synchronously: a dead letter over max_request_size
        is cut and sent at once; a permanent refusal is fatal; a retriable error is returned (send again later)."""
        while True:
            try:
                return self.conn.producer.send(msg.topic, key=msg.key, value=msg.value, headers=msg.headers,
                                               partition=msg.partition)
            except Exception as exc:  # noqa: BLE001 - classified below
                reason = publish_error_reason(exc)
                if reason == "too_large" and msg.dead is not None:
                    msg = self.cut(msg, exc)
                    continue
                if reason in ("too_large", "refused"):
                    self.refused(msg, exc)
                return exc

    def forget_cuts(self, records: list) -> None:
        if self.cuts:
            for r in records:
                self.cuts.pop((r.topic, r.partition, r.offset), None)

    def judge_sends(self, sent: list) -> None:
        """After a failed transaction: dead letters refused for size go out cut in the redo. kafka-python fails
        every batch of an aborted transaction with the first error, so a size error on a forecast message counts
        only when no dead letter explains it; then the redo would be refused again, and the run stops."""
        too_large = [(msg, fut.exception) for msg, fut in sent
                     if fut.is_done and fut.failed() and publish_error_reason(fut.exception) == "too_large"]
        if too_large and all(msg.dead is None for msg, _ in too_large):
            self.refused(*too_large[0])
        for msg, exc in too_large:
            if msg.dead is not None:
                self.cut(msg, exc)

    def await_topic(self, topic: str) -> set:
        """The topic's partitions once the producer knows it. A missing topic is waited out: logged, counted
        (publish_errors{reason="topic_missing"}), readiness false, liveness true, nothing committed meanwhile;
        PublishTimeout when a shutdown's time runs out first."""
        waited_since = None

        def attempt() -> set:
            try:
                partitions = self.conn.producer.partitions_for(topic)  # blocks at most max_block_ms
            except KafkaError as exc:
                if publish_error_reason(exc) == "refused":  # e.g. not authorised: waiting will not help
                    raise FatalError(f"cannot publish to topic {topic!r}: {exc!r}") from None
                raise
            if not partitions:
                raise _TopicMissing(f"topic {topic!r} has no partitions with a leader")
            return partitions

        def on_error(exc: Exception, retry_in_s: float) -> None:
            nonlocal waited_since
            if waited_since is None:
                waited_since = time.monotonic()
            self.metrics.publish_errors.labels("topic_missing").inc()
            self.metrics.block("topic_missing")
            self.metrics.beat()
            log.warning("topic does not exist (or has no leader); waiting for it, nothing is committed",
                        extra={"topic": topic, "waiting_s": round(time.monotonic() - waited_since, 1),
                               "error": repr(exc)})

        try:
            partitions = retry(attempt, on_error, retry_on=(KafkaError, _TopicMissing), backoff=Backoff(0.5, 0.5),
                               deadline=self.stopping.drain_deadline, wake=self.stopping.event)
        except OutOfTime:
            raise PublishTimeout(f"topic {topic!r} still missing") from None
        if waited_since is not None:
            self.metrics.unblock()
            log.warning("topic exists now; publishing", extra={"topic": topic,
                                                               "waited_s": round(time.monotonic() - waited_since, 1)})
        return partitions


class _TopicMissing(Exception):
    pass
