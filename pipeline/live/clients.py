"""The run's Kafka clients: how they are configured and opened (from a factory of
``pipeline.kafka.clients``), how they are closed within the shutdown budget, the key partitioner and the
stall watch. (Retries and bounded calls: ``pipeline.waiting``.)
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka.errors import (
    FencedInstanceIdError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    RecordListTooLargeError,
)
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

from pipeline import logs
from pipeline.config import RunConfig
from pipeline.kafka.clients import KafkaClients
from pipeline.metrics import Metrics
from pipeline.waiting import bounded

log = logs.get("run")
# How long one producer call may block on metadata or a full buffer before the loop looks again.
PRODUCER_MAX_BLOCK_MS = 5000
FENCED = (ProducerFencedError, InvalidProducerEpochError)
FENCED_BY_ANOTHER = ("another process with the same transactional_id took over (fenced); give every process its "
                     "own transactional_id")
FENCED_INSTANCE = ("another process joined the group with the same group_instance_id (fenced); give every process "
                   "its own group_instance_id")


@dataclass
class Connection:
    """The clients in use now; the producer is replaced after a fenced or failed transaction."""

    consumer: Any = None
    producer: Any = None


def client_options(cfg: RunConfig) -> dict:
    return {"bootstrap_servers": cfg.bootstrap_servers.split(","), "request_timeout_ms": cfg.request_timeout_ms,
            "client_id": "tickcast", **cfg.kafka_security()}


def open_consumer(clients: KafkaClients, cfg: RunConfig) -> Any:
    """The group's consumer: offsets committed by hand, read_committed under exactly-once."""
    return clients.consumer(
        group_id=cfg.group_id, group_instance_id=cfg.group_instance_id or None, enable_auto_commit=False,
        isolation_level="read_committed" if cfg.processing == "exactly_once" else "read_uncommitted",
        auto_offset_reset=cfg.auto_offset_reset, max_poll_records=cfg.max_batch_ticks,
        fetch_max_bytes=cfg.fetch_max_bytes,
        max_partition_fetch_bytes=min(cfg.fetch_max_bytes, 4 * 1024 * 1024),
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3), fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        **client_options(cfg))


def open_producer(clients: KafkaClients, cfg: RunConfig, partitioner: CachingPartitioner) -> Any:
    """The output producer; under exactly-once a transactional one, initialised (which fences its predecessor)."""
    # A missing topic is waited out (see Sender.await_topic), never created with the broker's defaults; no call
    # blocks longer than PRODUCER_MAX_BLOCK_MS, so the loop keeps control (liveness, shutdown).
    opts = {**client_options(cfg), "max_block_ms": min(PRODUCER_MAX_BLOCK_MS, cfg.request_timeout_ms),
            "allow_auto_create_topics": False}
    if cfg.processing != "exactly_once":
        return clients.producer(acks="all", linger_ms=2, retries=5, max_in_flight_requests_per_connection=1,
                                partitioner=partitioner, batch_size=256 * 1024, **opts)
    tid = cfg.transactional_id or f"{cfg.group_id}-{socket.gethostname()}"
    producer = clients.producer(acks="all", linger_ms=2, enable_idempotence=True, transactional_id=tid,
                                transaction_timeout_ms=cfg.transaction_timeout_ms,
                                partitioner=partitioner, batch_size=256 * 1024, **opts)
    try:
        producer.init_transactions()  # fences an earlier incarnation, aborts its open transaction
    except BaseException:
        producer.close(timeout=0)
        raise
    log.info("transactional producer ready", extra={"transactional_id": tid})
    return producer


def serve_deliveries(producer) -> None:
    """Let the producer complete the futures of sends acknowledged by now, without waiting. librdkafka hands its
    delivery reports over only when asked (the confluent adapter's ``serve_deliveries``); kafka-python's I/O
    thread completes its futures on its own."""
    serve = getattr(producer, "serve_deliveries", None)
    if serve is not None:
        serve()


def close(conn: Connection, deadline: float | None = None) -> None:
    """Close both clients by ``deadline`` (monotonic; None: each within its own timeouts); a failure to close,
    or a close still running at its deadline (a stalled broker), is logged and abandoned, never raised: it
    must not mask the exit path. The consumer (LeaveGroup) gets half of the time left, the producer the rest."""
    def left_s(share: float) -> float:
        return 30.0 if deadline is None else max(0.0, (deadline - time.monotonic()) * share)

    if conn.consumer is not None:
        consumer, conn.consumer = conn.consumer, None
        ms = int(left_s(0.5) * 1000)
        _close_within(lambda: consumer.close(autocommit=False, **_timeout_ms(consumer, ms)), ms, "consumer")
    if conn.producer is not None:
        producer, conn.producer = conn.producer, None
        s = min(5.0, left_s(1.0))
        _close_within(lambda: producer.close(timeout=s), int(s * 1000) + 100, "producer")


def _timeout_ms(consumer, ms: int) -> dict:
    """kafka-python's close takes a timeout for its LeaveGroup; librdkafka's (the adapter's) does not."""
    params = inspect.signature(consumer.close).parameters
    return {"timeout_ms": ms} if "timeout_ms" in params else {}


def _close_within(call: Callable[[], Any], limit_ms: int, what: str) -> None:
    try:
        bounded(call, limit_s=max(1, limit_ms) / 1000, error=KafkaTimeoutError, what=f"{what}-close")
    except KafkaTimeoutError:
        log.warning(f"{what} close abandoned at the shutdown deadline", extra={"limit_ms": limit_ms})
    except Exception as exc:  # noqa: BLE001
        log.warning(f"{what} close failed", extra={"error": repr(exc)})


def publish_error_reason(exc: BaseException) -> str:
    """The policy class of a producer error: too_large, fenced, retriable, timeout or refused (permanent)."""
    if isinstance(exc, (MessageSizeTooLargeError, RecordListTooLargeError)):
        return "too_large"
    if isinstance(exc, FENCED):
        return "fenced"
    if isinstance(exc, KafkaTimeoutError):
        return "timeout"
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return "retriable"
    return "refused"


def consumer_failure(exc: BaseException) -> str | None:
    """Why a consumer error ends the run (None: retried). A static member whose ``group_instance_id`` another
    process took is fenced for good; librdkafka reports that, like any state its client cannot leave, as a
    fatal error (``fatal`` on the adapter's exception)."""
    if isinstance(exc, FencedInstanceIdError):
        return FENCED_INSTANCE
    if getattr(exc, "fatal", False):
        return f"the Kafka consumer failed for good ({exc}); check the log above, fix and restart"
    return None


class CachingPartitioner(DefaultPartitioner):
    """kafka-python's key partitioner (murmur2, as the Java client), memoised per (topic, key, partitions).

    The pure-Python murmur2 is a fifth of a send's cost; instruments repeat, so each key is hashed once.
    Only the keys of ``cached_topics`` are memoised (all topics when None): the forecast topic's keys are
    instruments, which ``forget`` drops again when the state table expires them, so the memo follows the
    instruments the process holds; a dead-letter key may be any bytes and is hashed each time (dead letters
    are rare; memoising a flood of distinct keys would only grow). ``max_keys`` bounds it whatever happens.
    """

    def __init__(self, max_keys: int = 1_000_000, cached_topics: frozenset[str] | None = None):
        self._cache: dict = {}
        self._widths: dict[str, set[int]] = {}  # topic -> partition counts its memoised keys were placed for
        self._max_keys = max_keys
        self.cached_topics = cached_topics

    def __len__(self) -> int:
        return len(self._cache)

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        parts = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not parts:  # no key (random pick) or an unknown topic (the library's error)
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        if self.cached_topics is not None and topic not in self.cached_topics:
            return sorted(parts)[(murmur2(serialized_key) & 0x7FFFFFFF) % len(parts)]
        return self.of_key(topic, serialized_key, parts)

    def of_key(self, topic: str, serialized_key: bytes, partitions) -> int:
        """The partition for this key among the topic's partition ids (DefaultPartitioner's rule)."""
        n = len(partitions)
        hit = self._cache.get((topic, serialized_key, n))
        if hit is None:
            hit = sorted(partitions)[(murmur2(serialized_key) & 0x7FFFFFFF) % n]
            if len(self._cache) >= self._max_keys:
                self._cache = {}  # a fresh dict: a cleared one keeps its table size
            self._cache[(topic, serialized_key, n)] = hit
            self._widths.setdefault(topic, set()).add(n)
        return hit

    def forget(self, topic: str, keys) -> None:
        """Drop these keys' memoised placements in ``topic`` (instruments the state table expired)."""
        cache = self._cache
        for n in self._widths.get(topic, ()):
            for k in keys:
                cache.pop((topic, k, n), None)


class StallWatch:
    """Says so, in a log line and in metrics, when a broker call has been waiting longer than ``after_s``.

    kafka-python retries through an outage inside a blocking call (flush, commit, transaction commit), so the
    outage would otherwise be silent until the call returns.
    """

    def __init__(self, metrics: Metrics, after_s: float = 5.0):
        self.metrics = metrics
        self.after_s = after_s
        self._op: str | None = None
        self._since = 0.0
        self._flagged = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="stall-watch")
        self._thread.start()

    def close(self) -> None:
        """Stop the watching thread (a process that makes runner after runner keeps no thread per runner)."""
        self._closed.set()
        self._thread.join(timeout=2)

    def __call__(self, operation: str) -> StallWatch:
        with self._lock:
            self._op, self._since, self._flagged = operation, time.monotonic(), False
        return self

    def __enter__(self) -> StallWatch:
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            op, flagged, waited = self._op, self._flagged, time.monotonic() - self._since
            self._op = None
        if flagged:
            log.warning("broker answering again", extra={"operation": op, "waited_s": round(waited, 1)})
            self.metrics.broker_up.set(1 if exc[0] is None else 0)

    def _watch(self) -> None:
        while not self._closed.wait(0.5):
            with self._lock:
                op, since, flagged = self._op, self._since, self._flagged
                if op is None or flagged or time.monotonic() - since < self.after_s:
                    continue
                self._flagged = True
            self.metrics.broker_up.set(0)
            self.metrics.broker_errors.labels(f"{op}_stalled").inc()
            log.warning("broker not answering; still waiting, nothing is skipped",
                        extra={"operation": op, "waiting_s": round(time.monotonic() - since, 1)})
