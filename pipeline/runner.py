"""The live loop: poll -> micro-batch -> decode -> operator -> publish -> commit.

Order of one batch (at-least-once), written down because it is the contract:

1. collect records until ``max_batch_ticks`` or ``max_batch_ms`` after the first;
2. decode the batch into columns; messages that are not ticks get a reason;
3. ``Forecaster.step`` on the valid ticks; ticks it refuses get a reason;
4. send every forecast to the output topic and every refused message, with its
   original key and value and the reason in headers, to the dead-letter topic;
5. flush the producer and check every send was acknowledged (retry until it is,
   or until shutdown gives up: then nothing is committed and the batch is
   processed again after restart);
6. commit the offsets after the batch's last records.

A restart (or a partition moving to another process) resumes at the committed
offsets. A partition this process starts to own is restored from its newest
valid checkpoint and replayed silently up to the committed offset; with
checkpoints off it begins with empty state, and the log says so loudly.
``processing = exactly_once`` replaces steps 4-6 with one Kafka transaction.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import (
    CommitFailedError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    RecordListTooLargeError,
)
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata, TopicPartition

from operators.forecaster import Forecaster, ForecasterConfig
from operators.model import Bundle
from operators.validation import RejectReason
from pipeline import logs
from pipeline.checkpoint import DATA_ERRORS, CheckpointError, Problem, StoreUnavailable, group_store
from pipeline.config import RunConfig, parse_date_ns, parse_duration_ns
from pipeline.metrics import Metrics
from pipeline.scoring import OnlineScorer
from pipeline.sinks import ARROW_CONTENT_TYPE, FORECAST_MESSAGE_SCHEMA, encode_forecast_batch
from pipeline.ticks import decode_batch
from pipeline.topics import first_offsets_at

log = logs.get("run")
_OPERATOR_LABELS = {int(r): r.label for r in RejectReason}
_TICK_COLUMNS = ("instrument", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size")
# Partition ids in the state table: topic index in the high bits, so two input
# topics' partition 0 never share state rows.
_TOPIC_SHIFT = 20
_PARTITION_MASK = (1 << _TOPIC_SHIFT) - 1
# Arrow output: rows per message, and bytes per message (a row is ~45 B plus its instrument name, at most
# the 256-byte key limit): every message stays far below the producer's 1 MiB max_request_size.
_ARROW_ROWS_PER_MESSAGE = 8192
_ARROW_MESSAGE_BYTES = 512 * 1024
# A dead letter refused for its size is sent again cut: its value to 1 KiB, then to nothing (key to 256 bytes).
_DEAD_LETTER_CUTS = (1024, 0)
_DEAD_LETTER_KEY_BYTES = 256
# How long one producer call may block on metadata or a full buffer before the loop looks again.
_PRODUCER_MAX_BLOCK_MS = 5000
# An outgoing forecast message: key, value, partition (None: by key), headers.
Message = tuple[bytes | None, bytes, int | None, list | None]
_FENCED = (ProducerFencedError, InvalidProducerEpochError)
_FENCED_BY_ANOTHER = ("another process with the same transactional_id took over (fenced); give every process its "
                      "own transactional_id")


@dataclass
class Outgoing:
    """One record to produce. ``dead`` (record, reason, detail): a dead letter, rebuilt when it must be cut."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list | None
    partition: int | None
    dead: tuple | None = None


def publish_error_reason(exc: BaseException) -> str:
    """The policy class of a producer error: too_large, fenced, retriable, timeout or refused (permanent)."""
    if isinstance(exc, (MessageSizeTooLargeError, RecordListTooLargeError)):
        return "too_large"
    if isinstance(exc, _FENCED):
        return "fenced"
    if isinstance(exc, KafkaTimeoutError):
        return "timeout"
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return "retriable"
    return "refused"


class CachingPartitioner(DefaultPartitioner):
    """kafka-python's key partitioner (murmur2, as the Java client), memoised per (topic, key, partitions).

    The pure-Python murmur2 is a fifth of a send's cost; instruments repeat, so each key is hashed once.
    """

    def __init__(self, max_keys: int = 1_000_000):
        self._cache: dict = {}
        self._max_keys = max_keys

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        parts = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not parts:  # no key (random pick) or an unknown topic (the library's error)
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        return self.of_key(topic, serialized_key, parts)

    def of_key(self, topic: str, serialized_key: bytes, partitions) -> int:
        """The partition for this key among the topic's partition ids (DefaultPartitioner's rule)."""
        n = len(partitions)
        hit = self._cache.get((topic, serialized_key, n))
        if hit is None:
            hit = sorted(partitions)[(murmur2(serialized_key) & 0x7FFFFFFF) % n]
            if len(self._cache) >= self._max_keys:
                self._cache.clear()
            self._cache[(topic, serialized_key, n)] = hit
        return hit


@dataclass
class RunStats:
    ticks: int = 0
    forecasts: int = 0
    dead_letters: int = 0
    batches: int = 0
    commits: int = 0
    replayed: int = 0  # ticks stepped silently to rebuild state (recovery, warm-up)
    checkpoints: int = 0
    checkpoint_failures: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first batch's records arrived
    last_batch_done: float | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=200_000))

    def percentiles(self) -> dict[str, float | None]:
        if not self.latencies:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        a = np.fromiter(self.latencies, dtype=np.float64)
        return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3),
                "max_ms": float(a.max() * 1e3)}


class PublishTimeout(Exception):
    """Forecasts could not be acknowledged before shutdown gave up."""


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
        threading.Thread(target=self._watch, daemon=True, name="stall-watch").start()

    def __call__(self, operation: str) -> "StallWatch":
        with self._lock:
            self._op, self._since, self._flagged = operation, time.monotonic(), False
        return self

    def __enter__(self) -> "StallWatch":
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            op, flagged, waited = self._op, self._flagged, time.monotonic() - self._since
            self._op = None
        if flagged:
            log.warning("broker answering again", extra={"operation": op, "waited_s": round(waited, 1)})
            self.metrics.broker_up.set(1 if exc[0] is None else 0)

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                op, since, flagged = self._op, self._since, self._flagged
                if op is None or flagged or time.monotonic() - since < self.after_s:
                    continue
                self._flagged = True
            self.metrics.broker_up.set(0)
            self.metrics.broker_errors.labels(f"{op}_stalled").inc()
            log.warning("broker not answering; still waiting, nothing is skipped",
                        extra={"operation": op, "waiting_s": round(time.monotonic() - since, 1)})


class JsonNames:
    """Instrument name -> its JSON string literal, memoised for the forecast encoder.

    Bounded: when the new names of a batch would take it past ``max_size`` it is
    cleared first (a hot set of instruments stays cached; a flood of one-off
    names costs a ``json.dumps`` each, not memory).
    """

    def __init__(self, max_size: int = 32_768):
        self.max_size = max_size
        self._cache: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def lookup(self, names: list[str]) -> dict[str, str]:
        """A mapping that holds every name of ``names``."""
        cache = self._cache
        new = set(names) - cache.keys()
        if len(cache) + len(new) > self.max_size:
            self._cache = cache = {}  # a fresh dict: a cleared one keeps its table size
            new = set(names)
        for nm in new:
            cache[nm] = json.dumps(nm)
        return cache


class FatalError(Exception):
    """The run cannot go on (fenced producer, incompatible checkpoint); the message says why."""


class Runner:
    def __init__(self, config: RunConfig, bundle: Bundle, metrics: Metrics):
        self.cfg = config
        self.bundle = bundle
        self.metrics = metrics
        self.forecaster = Forecaster(bundle, ForecasterConfig(
            reset_gap_ns=parse_duration_ns(config.reset_gap) if config.reset_gap else None,
            expire_after_ns=parse_duration_ns(config.expire_after) if config.expire_after else None,
            ts_floor_ns=parse_date_ns(config.ts_floor), max_ts_ahead_ns=parse_duration_ns(config.max_ts_ahead),
            max_instruments=config.max_instruments or None,
        ))
        self.metrics.state_rows_limit.set(config.max_instruments)
        self.scorer = OnlineScorer(bundle.horizon)
        self.stats = RunStats()
        self.stop_event = threading.Event()
        self._stop_requested_at: float | None = None
        self.consumer = None
        self.producer = None
        self._assigned: set = set()
        self._revoked: set = set()
        self._json_names = JsonNames()
        self._lag: dict[TopicPartition, int] = {}  # last lag seen per assigned partition (status line, gauges)
        self._cuts: dict[tuple[str, int, int], int] = {}  # dead letters (by source) refused for size: cut level
        self._partitioner = CachingPartitioner()  # shared by every producer this run makes
        self._to_restore: set = set()
        # Durability: where each assigned partition's state stands, and what is replayed silently.
        self.store = (group_store(config.checkpoint_uri, config.group_id, config.checkpoint_keep)
                      if config.checkpoint_uri else None)
        self._next_offset: dict[TopicPartition, int] = {}  # the state reflects every record before this
        self._checkpointed: dict[TopicPartition, int] = {}  # offset of the last checkpoint written or restored
        self._replay_until: dict[TopicPartition, int] = {}  # records before this offset: step, do not emit
        self._replay_until_ts: dict[TopicPartition, int] = {}  # fresh warm-up: records stamped before this (ms)
        self._started_ms = int(time.time() * 1000)
        self._dirty = False  # state stepped past the committed offsets (between step and commit)
        self._fatal: str | None = None
        self._last_checkpoint = time.monotonic()
        self._batches_since_checkpoint = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint") if self.store else None
        self._pending_write: Future | None = None
        self._transactional = config.processing == "exactly_once"
        self._stall = StallWatch(metrics)
        metrics.model_info.info({"version": bundle.model_version, "horizon_ticks": str(bundle.horizon),
                                 "layers": str(bundle.shape.layers), "hidden": str(bundle.shape.hidden)})

    # -- lifecycle --------------------------------------------------------------------
    def request_stop(self, *_args) -> None:
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            log.info("stop requested; finishing the current batch")
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Run until stopped. Returns the process exit code."""
        if not self._connect():
            return 0 if self.stop_event.is_set() else 1
        last_status = time.monotonic()
        code = 0
        try:
            while not self.stop_event.is_set():
                records, received_at = self._collect()
                if self._fatal:
                    raise FatalError(self._fatal)
                if records:
                    self._process(records, received_at)
                    self._maybe_checkpoint()
                now = time.monotonic()
                if self.cfg.status_interval_s and now - last_status >= self.cfg.status_interval_s:
                    self._report_status()
                    last_status = now
        except PublishTimeout as exc:
            log.error("shutdown gave up on unacknowledged forecasts; nothing committed for them",
                      extra={"detail": str(exc)})
            code = 1
        except FatalError as exc:
            log.error("stopping", extra={"reason": str(exc)})
            code = 2
        finally:
            if code == 0:
                self._checkpoint_now(self._assigned, "shutdown")
            self._close()
            if self._writer is not None:
                self._writer.shutdown(wait=True)
        log.info("stopped", extra=self.summary())
        return code

    def summary(self) -> dict:
        elapsed = time.monotonic() - self.stats.started
        return {"ticks": self.stats.ticks, "forecasts": self.stats.forecasts,
                "dead_letters": self.stats.dead_letters, "batches": self.stats.batches,
                "replayed": self.stats.replayed, "checkpoints": self.stats.checkpoints,
                "checkpoint_failures": self.stats.checkpoint_failures,
                "elapsed_s": round(elapsed, 1), **{k: (round(v, 2) if v is not None else None)
                                                   for k, v in self.stats.percentiles().items()}}

    # -- Kafka clients ----------------------------------------------------------------
    def _client_options(self) -> dict:
        return {"bootstrap_servers": self.cfg.bootstrap_servers.split(","),
                "request_timeout_ms": self.cfg.request_timeout_ms, "client_id": "tickcast",
                **self.cfg.kafka_security()}

    def _connect(self) -> bool:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                opts = self._client_options()
                self.producer = self._make_producer()
                self.consumer = KafkaConsumer(
                    group_id=self.cfg.group_id, enable_auto_commit=False,
                    isolation_level="read_committed" if self._transactional else "read_uncommitted",
                    auto_offset_reset=self.cfg.auto_offset_reset, max_poll_records=self.cfg.max_batch_ticks,
                    fetch_max_bytes=self.cfg.fetch_max_bytes,
                    max_partition_fetch_bytes=min(self.cfg.fetch_max_bytes, 4 * 1024 * 1024),
                    session_timeout_ms=self.cfg.session_timeout_ms,
                    heartbeat_interval_ms=max(100, self.cfg.session_timeout_ms // 3), fetch_max_wait_ms=self.cfg.fetch_max_wait_ms,
                    **opts)
                self.consumer.subscribe(self.cfg.input_topics, listener=_Listener(self))
                self.metrics.broker_up.set(1)
                log.info("connected", extra={"bootstrap": self.cfg.bootstrap_servers, "group": self.cfg.group_id,
                                             "topics": ",".join(self.cfg.input_topics)})
                return True
            except KafkaError as exc:
                self.metrics.broker_up.set(0)
                self.metrics.broker_errors.labels("connect").inc()
                log.warning("broker unreachable; retrying", extra={"bootstrap": self.cfg.bootstrap_servers,
                                                                  "retry_in_s": backoff, "error": repr(exc)})
                self._close()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        return False

    def _make_producer(self) -> KafkaProducer:
        # A missing topic is waited out (see _await_topic), never created with the broker's defaults; no call
        # blocks longer than _PRODUCER_MAX_BLOCK_MS, so the loop keeps control (liveness, shutdown).
        opts = {**self._client_options(), "max_block_ms": min(_PRODUCER_MAX_BLOCK_MS, self.cfg.request_timeout_ms),
                "allow_auto_create_topics": False}
        if not self._transactional:
            return KafkaProducer(acks="all", linger_ms=2, retries=5, max_in_flight_requests_per_connection=1,
                                 partitioner=self._partitioner, batch_size=256 * 1024, **opts)
        tid = self.cfg.transactional_id or f"{self.cfg.group_id}-{socket.gethostname()}"
        producer = KafkaProducer(acks="all", linger_ms=2, enable_idempotence=True, transactional_id=tid,
                                 transaction_timeout_ms=self.cfg.transaction_timeout_ms,
                                 partitioner=self._partitioner, batch_size=256 * 1024, **opts)
        try:
            producer.init_transactions()  # fences an earlier incarnation, aborts its open transaction
        except BaseException:
            producer.close(timeout=0)
            raise
        log.info("transactional producer ready", extra={"transactional_id": tid})
        return producer

    def _close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception as exc:  # noqa: BLE001 - closing must not mask the exit path
                log.warning("consumer close failed", extra={"error": repr(exc)})
            self.consumer = None
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception as exc:  # noqa: BLE001
                log.warning("producer close failed", extra={"error": repr(exc)})
            self.producer = None
        self.metrics.ready = False

    # -- assignment ---------------------------------------------------------------------
    def on_revoked(self, partitions) -> None:
        """Before another member takes them: checkpoint what we hold (committed already), then forget it."""
        mine = [tp for tp in partitions if tp in self._assigned]
        if mine:
            self._checkpoint_now(mine, "revoke")
        self._revoked |= set(partitions)
        for tp in partitions:
            pid = self._partition_id(tp.topic, tp.partition)
            self.forecaster.drop_partition(pid)
            self.scorer.drop_partition(pid)
            self._next_offset.pop(tp, None)
            self._replay_until.pop(tp, None)
            self._replay_until_ts.pop(tp, None)
            self._checkpointed.pop(tp, None)
            self._lag.pop(tp, None)
            try:  # a partition this process no longer reads has no lag here: drop its series
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        self._assigned -= set(partitions)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.rebalances.inc()
        log.info("partitions revoked", extra={"partitions": _tps(partitions)})

    def on_assigned(self, partitions) -> None:
        # Runs on kafka-python's I/O thread, where blocking consumer calls are not allowed: the
        # restore (committed offsets, seek) happens on the loop's thread right after this poll.
        self._assigned |= set(partitions)
        self._revoked -= set(partitions)
        self._to_restore |= set(partitions)
        self.metrics.assigned_partitions.set(len(self._assigned))
        if not self._to_restore:  # nothing to restore (an idle member of a group with few partitions): ready
            self.metrics.ready = True

    def _restore_assigned(self) -> None:
        pending, self._to_restore = sorted(self._to_restore & self._assigned), set()
        if self._restore_with_retry(pending):
            self.metrics.ready = True

    # -- recovery -------------------------------------------------------------------------
    def _restore(self, tp: TopicPartition) -> None:
        """State for a newly assigned partition: newest valid checkpoint at or before the committed offset,
        then a silent replay from the checkpoint's offset up to the committed one; or a warm-up window;
        or, loudly, empty state.

        Raises on broker or store trouble (the caller retries); a checkpoint that cannot be used, whatever
        its bytes, is skipped and counted here, and the next older one tried."""
        started = time.perf_counter()
        pid = self._partition_id(tp.topic, tp.partition)
        self.forecaster.drop_partition(pid)
        self._replay_until.pop(tp, None)
        self._replay_until_ts.pop(tp, None)
        # Whatever the state reflected before is gone: every path below says anew where it stands.
        self._next_offset.pop(tp, None)
        self._checkpointed.pop(tp, None)
        committed = self.consumer.committed(tp, timeout_ms=self.cfg.request_timeout_ms)
        loaded = None
        if self.store is not None and committed is None:
            # Checkpoints belong to committed offsets: without any (a new group, expired offsets, a recreated
            # topic) they cannot be placed, so the partition starts per auto_offset_reset (or warm-up).
            log.info("group has no committed offset for this partition; not using checkpoints",
                     extra={"partition": f"{tp.topic}/{tp.partition}"})
        elif self.store is not None:
            loaded = self._load_checkpoint(tp, pid, committed)
        if loaded is not None:
            rows = loaded.state.num_rows
            start = loaded.manifest.offset
            if start < committed:
                first = self.consumer.beginning_offsets([tp]).get(tp, 0)
                if first > start:
                    # Retention deleted records the replay needs: the state misses them for good. Replay
                    # what is left; the instruments those records touched carry older state.
                    log.warning("checkpoint is older than the partition's log start; records in between were "
                                "deleted by retention and are missing from the restored state",
                                extra={"partition": f"{tp.topic}/{tp.partition}", "checkpoint_offset": start,
                                       "log_start": first, "missing": first - start, "committed": committed})
                    start = min(first, committed)
            self._checkpointed[tp] = loaded.manifest.offset
            self._seek(tp, start, committed)
            self.metrics.restores.labels("checkpoint").inc()
            self.metrics.restore_seconds.observe(time.perf_counter() - started)
            log.info("partition restored from checkpoint",
                     extra={"partition": f"{tp.topic}/{tp.partition}", "rows": rows,
                            "checkpoint_offset": loaded.manifest.offset, "committed": committed,
                            "replay": max(0, (committed or start) - start),
                            "age_s": round(time.time() - loaded.manifest.created_at, 1)})
            return
        window = self._warmup_start(tp, committed) if self.cfg.warmup else None
        if window is not None:
            start, emit_from = window
            self._seek(tp, start, emit_from)
            if emit_from is None:  # a fresh group: silent up to the records produced before this run started
                self._replay_until_ts[tp] = self._started_ms
            self.metrics.restores.labels("warmup").inc()
            log.info("partition warming up from input", extra={
                "partition": f"{tp.topic}/{tp.partition}", "from_offset": start,
                "emit_from": emit_from if emit_from is not None else f"record timestamp {self._started_ms} ms"})
            return
        if self.store is not None and committed:
            # No checkpoint yet (a kill before the first one): rebuild from the start of the partition.
            start = self.consumer.beginning_offsets([tp]).get(tp, 0)
            if start < committed:
                self._seek(tp, start, committed)
                self.metrics.restores.labels("replay_from_start").inc()
                log.warning("no usable checkpoint; rebuilding state by replaying the partition from its start",
                            extra={"partition": f"{tp.topic}/{tp.partition}", "from_offset": start,
                                   "emit_from": committed})
                return
        # Position explicitly: records this poll already returned for the partition were dropped.
        if committed is not None:
            self.consumer.seek(tp, committed)
        elif self.cfg.auto_offset_reset == "earliest":
            self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek_to_end(tp)
        self.metrics.restores.labels("empty").inc()
        # Loud when state is lost (a restart or rebalance without a checkpoint); a new group starts empty anyway.
        (log.warning if committed is not None else log.info)(
            "partition assigned with EMPTY state: its instruments start from zero state",
            extra={"partition": f"{tp.topic}/{tp.partition}", "committed": committed,
                   "why": ("new group" if committed is None else
                           "no usable checkpoint" if self.store else "checkpoints are off (checkpoint_uri)")})

    def _load_checkpoint(self, tp: TopicPartition, pid: int, committed: int):
        """The newest checkpoint that is valid *and* imports into the operator (now holding its rows), or
        None. Each manifest is tried at most once; StoreUnavailable propagates (the caller retries)."""
        tried: set[str] = set()
        while True:
            problems: list[Problem] = []
            loaded = self.store.latest(tp.topic, tp.partition, max_offset=committed, problems=problems,
                                       validate=self._usable, exclude=tried)
            for _ in problems:
                self.metrics.checkpoint_load_failures.inc()
            tried |= {p.path for p in problems}
            if loaded is None:
                return None
            tried.add(loaded.path)
            if loaded.manifest.model_version != self.bundle.model_version:
                if self.cfg.on_model_change == "refuse":
                    raise FatalError(
                        f"the checkpoint of {tp.topic}/{tp.partition} was written by model version "
                        f"{loaded.manifest.model_version}, this run serves {self.bundle.model_version}; serve that "
                        f"model, or set on_model_change = warmup (with warmup = DURATION) to rebuild state from "
                        f"input, or point checkpoint_uri elsewhere")
                log.warning("checkpoint from another model version ignored; warming up from input instead",
                            extra={"partition": f"{tp.topic}/{tp.partition}",
                                   "checkpoint_model": loaded.manifest.model_version})
                return None
            try:
                self.forecaster.import_partition(pid, loaded.state)
            except DATA_ERRORS as exc:  # the store's checks passed it, the operator did not: skip it too
                self.forecaster.drop_partition(pid)
                self.metrics.checkpoint_load_failures.inc()
                log.warning("skipping unusable checkpoint", extra={"path": loaded.path,
                                                                   "reason": str(exc) or type(exc).__name__})
                continue
            return loaded

    def _usable(self, loaded) -> None:
        """Rows this model can serve. Another model's checkpoint passes here: the caller refuses it by name
        (on_model_change) instead of silently skipping it."""
        if loaded.manifest.model_version == self.bundle.model_version:
            self.forecaster.state.check_rows(loaded.state)

    def _seek(self, tp: TopicPartition, start: int, emit_from: int | None) -> None:
        """Read from ``start``; records before ``emit_from`` only update state."""
        self.consumer.seek(tp, start)
        self._next_offset[tp] = start
        if emit_from is not None and emit_from > start:
            self._replay_until[tp] = emit_from

    def _warmup_start(self, tp: TopicPartition, committed: int | None) -> tuple[int, int | None] | None:
        """(first offset of the warm-up window, offset to emit from), or None when there is nothing to replay.

        A fresh group has no committed offset: it emits from the records produced after this run started
        (None), judged by record timestamp rather than by the end offset, which some brokers report late."""
        if committed == 0:
            return None
        window_ms = parse_duration_ns(self.cfg.warmup, "warmup") // 1_000_000
        probe = KafkaConsumer(group_id=None, enable_auto_commit=False, **self._client_options())
        try:  # a separate consumer: the group's own cannot be assigned partitions by hand
            found = first_offsets_at(probe, [tp], self._started_ms - window_ms).get(tp)
        finally:
            probe.close(autocommit=False)
        if found is None:
            # The window is measured on record timestamps against the wall clock. A historical topic (records
            # stamped long ago) has nothing in it: no warm-up; the partition goes on as without one.
            log.warning("warm-up window holds no records (an empty partition, or every record is stamped "
                        "before now - warmup: a historical topic?); not warming up",
                        extra={"partition": f"{tp.topic}/{tp.partition}", "warmup": self.cfg.warmup})
            return None
        if committed is not None and found >= committed:
            return None
        return found, committed

    def _partition_id(self, topic: str, partition: int) -> int:
        return (self.cfg.input_topics.index(topic) << _TOPIC_SHIFT) | partition

    # -- the loop ---------------------------------------------------------------------
    def _collect(self) -> tuple[list, list[float]]:
        """Records of one micro-batch, with the time each poll returned them."""
        records: list = []
        received: list[float] = []
        deadline = None
        limit = self.cfg.max_batch_ticks
        while len(records) < limit and not self.stop_event.is_set():
            wait_ms = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            try:
                polled = self.consumer.poll(timeout_ms=wait_ms, max_records=limit - len(records))
                self.metrics.broker_up.set(1)
            except Exception as exc:  # noqa: BLE001 - kafka-python raises many kinds; all retried
                self.metrics.broker_errors.labels("poll").inc()
                self.metrics.broker_up.set(0)
                log.warning("poll failed; retrying", extra={"error": repr(exc)})
                self.metrics.beat()  # waiting out the broker on purpose
                self.stop_event.wait(1.0)
                continue
            self.metrics.beat()
            now = time.monotonic()
            for recs in polled.values():
                records.extend(recs)
                received.extend([now] * len(recs))
            drop = self._revoked | self._to_restore
            if drop and records:  # fetched before a rebalance: the new owner (or the restore's seek) reads them again
                kept = [(r, t) for r, t in zip(records, received) if _tp(r) not in drop]
                records, received = [r for r, _ in kept], [t for _, t in kept]
            self._revoked.clear()
            if self._to_restore:
                self._restore_assigned()
                if self._fatal:
                    break
            if records and deadline is None:
                deadline = now + self.cfg.max_batch_ms / 1000
            if not records or (deadline is not None and time.monotonic() >= deadline):
                break
        return records, received

    def _process(self, records: list, received_at: list[float]) -> None:
        t_batch = time.perf_counter()
        n = len(records)
        keys = [r.key for r in records]
        values = [r.value for r in records]
        topics = [r.topic for r in records]
        part = np.fromiter((r.partition for r in records), dtype=np.int64, count=n)
        offs = np.fromiter((r.offset for r in records), dtype=np.int64, count=n)
        topic_idx = np.fromiter((self.cfg.input_topics.index(t) for t in topics), dtype=np.int64, count=n) \
            if len(self.cfg.input_topics) > 1 else np.zeros(n, dtype=np.int64)
        pid = (topic_idx << _TOPIC_SHIFT) | part
        self._count_received(pid)

        stamps = np.fromiter((r.timestamp for r in records), dtype=np.int64, count=n)
        decoded = decode_batch(keys, values, stamps)  # the record timestamp is "now" for the timestamp policy
        idx = decoded.ticks.column("index").to_numpy()
        ticks = decoded.ticks.select(list(_TICK_COLUMNS) + ["record_ts"])
        ticks = ticks.append_column("partition", pa.array(pid[idx].astype(np.int32)))
        ticks = ticks.append_column("offset", pa.array(offs[idx]))
        # Records a recovery replays (before the committed offset) update state and emit nothing.
        silent = self._silent_mask(pid, offs, stamps if self._replay_until_ts else None)
        t_step = time.perf_counter()
        self._dirty = True
        result = self.forecaster.step(ticks)
        self.metrics.step_seconds.observe(time.perf_counter() - t_step)
        for tp, last in self._last_offsets(pid, offs).items():
            self._next_offset[tp] = max(self._next_offset.get(tp, -1), last + 1)

        # Dead letters: decode failures and operator refusals, with the original bytes.
        dead = [(i, reason.value, detail) for i, reason, detail in decoded.rejected]
        bad_rows = np.flatnonzero(result.reasons)
        dead += [(int(idx[r]), _OPERATOR_LABELS[int(result.reasons[r])], "") for r in bad_rows.tolist()]

        # Forecasts.
        rows, forecasts = result.rows, result.forecasts
        if silent is not None:
            loud = ~silent[idx[rows]]
            rows, forecasts = rows[loud], forecasts[loud]
            dead = [d for d in dead if not silent[d[0]]]
            n_silent = int(silent.sum())
            self.stats.replayed += n_silent
            self.metrics.replayed_ticks.inc(n_silent)
        commits = self._commit_offsets(pid, offs, None if silent is None else ~silent)
        if self.cfg.output_mode == "last_per_instrument" and len(rows):
            keep = _last_per_group(ticks, rows)
        else:
            keep = np.arange(len(rows))
        out_rows = rows[keep]
        msg_index = idx[out_rows]
        encode = self._encode_forecasts_arrow if self.cfg.output_format == "arrow" else self._encode_forecasts
        messages = encode(ticks, out_rows, forecasts[keep], msg_index, topics, pid, offs)
        if self._transactional:
            if not self._publish_transaction(messages, dead, records, commits):
                return  # aborted and rewound: these records come again
        else:
            self._publish(messages, dead, records)
            self._commit(commits)
        self._dirty = False
        self._batches_since_checkpoint += 1
        if silent is not None:
            self._end_replays()

        # Metrics and online scoring.
        now = time.monotonic()
        lat = now - np.asarray(received_at)[msg_index] if len(msg_index) else np.zeros(0)
        for v in lat.tolist():
            self.metrics.e2e_seconds.observe(v)
        self.stats.latencies.extend(lat.tolist())
        self._score(ticks, rows, forecasts, result.expired)
        self.stats.ticks += n
        self.stats.forecasts += len(out_rows)
        self.stats.dead_letters += len(dead)
        self.stats.batches += 1
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = min(received_at)
        self.stats.last_batch_done = now
        for _, reason, _ in dead:
            self.metrics.dead_letters.labels(reason).inc()
        self.metrics.forecasts_published.inc(len(out_rows))
        self.metrics.batch_ticks.observe(n)
        self.metrics.batch_instruments.observe(result.n_instruments)
        self.metrics.session_resets.inc(result.n_resets)
        self.metrics.expired_rows.inc(result.n_expired)
        self.metrics.state_rows.set(len(self.forecaster.state))
        self.metrics.state_bytes.set(self.forecaster.state.nbytes)
        self.metrics.batch_seconds.observe(time.perf_counter() - t_batch)
        self.metrics.last_progress.set_to_current_time()
        self._update_lag()

    def _encode_forecasts(self, ticks: pa.Table, rows: np.ndarray, forecasts: np.ndarray, msg_index: np.ndarray,
                          topics: list[str], pid: np.ndarray, offs: np.ndarray) -> list[Message]:
        """One JSON message per forecast, keyed by instrument (the producer's partitioner places it)."""
        if len(rows) == 0:
            return []
        part = pid & _PARTITION_MASK
        take = pa.array(rows)
        names = ticks.column("instrument").take(take).to_pylist()
        ts = ticks.column("ts").take(take).to_pylist()
        cache = self._json_names.lookup(names)
        head = f'{{"v":1,"model_version":"{self.bundle.model_version}","horizon_ticks":{self.bundle.horizon},'
        return [
            (nm.encode(), f'{head}"instrument":{cache[nm]},"ts":{t},"forecast":{f!r},'
                          f'"topic":{json.dumps(topics[m])},"partition":{p},"offset":{o}}}'.encode(), None, None)
            for nm, t, f, m, p, o in zip(names, ts, forecasts.tolist(), msg_index.tolist(),
                                         part[msg_index].tolist(), offs[msg_index].tolist())
        ]

    def _encode_forecasts_arrow(self, ticks: pa.Table, rows: np.ndarray, forecasts: np.ndarray,
                                msg_index: np.ndarray, topics: list[str], pid: np.ndarray,
                                offs: np.ndarray) -> list[Message]:
        """The batch's forecasts as Arrow IPC streams, one message per output partition (at most
        ``_ARROW_ROWS_PER_MESSAGE`` rows each). Each instrument's rows go to the partition its key would
        pick as a JSON message, so a reader of one partition sees the same instruments, in order, either way."""
        if len(rows) == 0:
            return []
        topic = self.cfg.output_topic
        take = pa.array(rows)
        names = ticks.column("instrument").take(take).combine_chunks()
        enc = pc.dictionary_encode(names)
        partitions = self._await_topic(topic)
        of_key = self._partitioner.of_key
        p_of_name = np.array([of_key(topic, nm.encode(), partitions) for nm in enc.dictionary.to_pylist()],
                             dtype=np.int32)
        out_part = p_of_name[enc.indices.to_numpy(zero_copy_only=False)]
        src = pid[msg_index]
        table = pa.Table.from_arrays([
            names.cast(pa.string()),
            ticks.column("ts").take(take).cast(pa.int64()),
            pa.array(forecasts, type=pa.float64()),
            pa.DictionaryArray.from_arrays(pa.array(src >> _TOPIC_SHIFT, type=pa.int32()),
                                           pa.array(self.cfg.input_topics, type=pa.string())),
            pa.array(src & _PARTITION_MASK, type=pa.int32()),
            pa.array(offs[msg_index], type=pa.int64()),
        ], schema=FORECAST_MESSAGE_SCHEMA)  # the documented contract, whatever types the decoder produced
        meta = {"v": "1", "model_version": self.bundle.model_version, "horizon_ticks": str(self.bundle.horizon)}
        headers = [("content-type", ARROW_CONTENT_TYPE)]
        # Rows per message so that no message can exceed _ARROW_MESSAGE_BYTES, whatever the names' lengths.
        widest = 64 + int(pc.max(pc.binary_length(names)).as_py() or 0)
        per_message = max(1, min(_ARROW_ROWS_PER_MESSAGE, _ARROW_MESSAGE_BYTES // widest))
        out = []
        for p in np.unique(out_part).tolist():
            mine = table.filter(pa.array(out_part == p)) if len(partitions) > 1 else table
            for start in range(0, mine.num_rows, per_message):
                chunk = mine.slice(start, per_message)
                out.append((None, encode_forecast_batch(chunk, meta), p, headers))
        return out

    def _outgoing(self, messages: list[Message], dead: list[tuple[int, str, str]], records: list) -> list[Outgoing]:
        """Every forecast message, then every dead letter (original bytes, reason; partition None: by key)."""
        out = [Outgoing(self.cfg.output_topic, k, v, h, p) for k, v, p, h in messages]
        out += [self._dead_letter(records[i], reason, detail) for i, reason, detail in dead]
        return out

    def _dead_letter(self, r, reason: str, detail: str) -> Outgoing:
        """A refused message with its key and value, the reason, detail and source in headers; cut to fit when a
        size refusal was seen for it before (``tickcast.truncated``, with the original sizes)."""
        source = (r.topic, r.partition, r.offset)
        key, value = r.key, r.value if r.value is not None else b""
        headers = [("tickcast.reason", reason.encode()), ("tickcast.detail", detail.encode()[:512]),
                   ("tickcast.source", f"{r.topic}/{r.partition}/{r.offset}".encode())]
        level = self._cuts.get(source, 0)
        if level:
            headers += [("tickcast.truncated", b"true"), ("tickcast.original_size", str(len(value)).encode())]
            value = value[:_DEAD_LETTER_CUTS[level - 1]]
            if key is not None and len(key) > _DEAD_LETTER_KEY_BYTES:
                headers.append(("tickcast.original_key_size", str(len(key)).encode()))
                key = key[:_DEAD_LETTER_KEY_BYTES]
        return Outgoing(self.cfg.dead_letter_topic, key, value, headers, None, (r, reason, detail))

    def _cut(self, msg: Outgoing, exc: BaseException) -> Outgoing:
        """The next, smaller version of a dead letter refused for its size; FatalError when none is left."""
        r = msg.dead[0]
        source = (r.topic, r.partition, r.offset)
        level = self._cuts.get(source, 0)
        if level >= len(_DEAD_LETTER_CUTS):
            self._refused(msg, exc)
        self._cuts[source] = level + 1
        if level == 0:
            self.metrics.dead_letters_truncated.inc()
        self.metrics.publish_errors.labels("too_large").inc()
        log.warning("dead letter too large for its topic or the producer; sending it cut",
                    extra={"source": f"{r.topic}/{r.partition}/{r.offset}", "bytes": len(msg.value),
                           "cut_to": _DEAD_LETTER_CUTS[level], "error": repr(exc)})
        return self._dead_letter(*msg.dead)

    def _refused(self, msg: Outgoing, exc: BaseException):
        """A record the broker or producer refuses for good (not for time, not a dead letter we can cut): stop
        before committing anything, with what to fix. Nothing is lost: the batch is read again after the fix."""
        self.metrics.publish_errors.labels("refused").inc()
        what = "dead letter" if msg.dead else "forecast message"
        raise FatalError(f"topic {msg.topic!r} refuses a {what} of {len(msg.value)} bytes for good ({exc!r}); "
                         f"nothing of this batch was committed; fix the topic (existence, ACLs, max.message.bytes) "
                         f"and restart") from None

    def _send(self, msg: Outgoing):
        """producer.send, with the policy for what it raises synchronously: a dead letter over max_request_size
        is cut and sent at once; a permanent refusal is fatal; a retriable error is returned (send again later)."""
        while True:
            try:
                return self.producer.send(msg.topic, key=msg.key, value=msg.value, headers=msg.headers,
                                          partition=msg.partition)
            except Exception as exc:  # noqa: BLE001 - classified below
                reason = publish_error_reason(exc)
                if reason == "too_large" and msg.dead is not None:
                    msg = self._cut(msg, exc)
                    continue
                if reason in ("too_large", "refused"):
                    self._refused(msg, exc)
                return exc

    def _await_topic(self, topic: str) -> set:
        """The topic's partitions once the producer knows it. A missing topic is waited out: logged, counted
        (publish_errors{reason="topic_missing"}), readiness false, liveness true, nothing committed meanwhile;
        PublishTimeout when a shutdown's time runs out first."""
        waited_since = None
        while True:
            try:
                partitions = self.producer.partitions_for(topic)  # blocks at most max_block_ms
            except KafkaTimeoutError as exc:
                partitions, error = None, exc
            except KafkaError as exc:
                if publish_error_reason(exc) == "refused":  # e.g. not authorised: waiting will not help
                    raise FatalError(f"cannot publish to topic {topic!r}: {exc!r}") from None
                partitions, error = None, exc
            if partitions:
                if waited_since is not None:
                    self.metrics.unblock()
                    log.warning("topic exists now; publishing", extra={"topic": topic,
                                                                       "waited_s": round(time.monotonic() - waited_since, 1)})
                return partitions
            if waited_since is None:
                waited_since = time.monotonic()
            self.metrics.publish_errors.labels("topic_missing").inc()
            self.metrics.block("topic_missing")
            self.metrics.beat()
            log.warning("topic does not exist (or has no leader); waiting for it, nothing is committed",
                        extra={"topic": topic, "waiting_s": round(time.monotonic() - waited_since, 1),
                               "error": repr(error)})
            self._give_up_if_stopping(f"topic {topic!r} still missing")
            self.stop_event.wait(0.5)

    def _give_up_if_stopping(self, what: str) -> None:
        if self._stop_requested_at is not None and \
                time.monotonic() - self._stop_requested_at > self.cfg.shutdown_timeout_s:
            raise PublishTimeout(what)

    def _publish(self, messages: list[Message], dead: list[tuple[int, str, str]], records: list) -> None:
        """Send and wait for every acknowledgement; never return with a send missing.

        Per record: retriable errors and timeouts are sent again (at-least-once: duplicates possible); a dead
        letter too large is cut (``_cut``); any other permanent refusal stops the run (``_refused``)."""
        pending = self._outgoing(messages, dead, records)
        for topic in dict.fromkeys(m.topic for m in pending):
            self._await_topic(topic)
        backoff = 0.5
        while pending:
            self.metrics.beat()
            sent = [(msg, self._send(msg)) for msg in pending]
            try:
                with self._stall("publish"):
                    self.producer.flush(timeout=self.cfg.request_timeout_ms / 1000)
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
                    failed.append(self._cut(msg, error))
                    continue
                if reason in ("too_large", "refused"):
                    self._refused(msg, error)
                reasons.add(reason)
                failed.append(msg)
            if not failed:
                self.metrics.broker_up.set(1)
                self.metrics.unblock()
                self._forget_cuts(records)
                return
            if reasons:
                self.metrics.broker_up.set(0)
                self.metrics.broker_errors.labels("publish").inc()
                self.metrics.block("publish_retrying")
                for reason in reasons:
                    self.metrics.publish_errors.labels(reason).inc()
                self._give_up_if_stopping(f"{len(failed)} messages unacknowledged")
                log.warning("publish not acknowledged; resending (at-least-once: duplicates possible)",
                            extra={"unacknowledged": len(failed), "reasons": ",".join(sorted(reasons)),
                                   "retry_in_s": backoff})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            pending = failed

    def _forget_cuts(self, records: list) -> None:
        if self._cuts:
            for r in records:
                self._cuts.pop((r.topic, r.partition, r.offset), None)

    # -- replay bookkeeping ---------------------------------------------------------------
    def _tp_of(self, pid: int) -> TopicPartition:
        return TopicPartition(self.cfg.input_topics[pid >> _TOPIC_SHIFT], pid & _PARTITION_MASK)

    def _silent_mask(self, pid: np.ndarray, offs: np.ndarray, stamps: np.ndarray | None) -> np.ndarray | None:
        """Records a recovery or warm-up replays: they update state and emit nothing."""
        if not self._replay_until and not self._replay_until_ts:
            return None
        silent = np.zeros(len(pid), dtype=bool)
        for p in np.unique(pid).tolist():
            tp = self._tp_of(p)
            mine = pid == p
            if tp in self._replay_until:
                silent[mine] = offs[mine] < self._replay_until[tp]
            elif tp in self._replay_until_ts:
                silent[mine] = stamps[mine] < self._replay_until_ts[tp]
                if not silent[mine].all():  # the first record of the live era ends the warm-up
                    del self._replay_until_ts[tp]
                    log.info("warm-up done; emitting", extra={"partition": f"{tp.topic}/{tp.partition}"})
        return silent if silent.any() else None

    def _last_offsets(self, pid: np.ndarray, offs: np.ndarray) -> dict[TopicPartition, int]:
        """Highest offset per input partition among these records."""
        if len(pid) == 0:
            return {}
        order = np.lexsort((offs, pid))
        last = np.flatnonzero(np.diff(pid[order], append=-1))
        return {self._tp_of(int(p)): int(o) for p, o in zip(pid[order][last], offs[order][last])}

    def _commit_offsets(self, pid: np.ndarray, offs: np.ndarray, mask: np.ndarray | None) -> dict:
        """Offsets to commit (next to read) for the assigned partitions of the records in ``mask``."""
        if mask is not None:
            pid, offs = pid[mask], offs[mask]
        return {tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in self._last_offsets(pid, offs).items()
                if tp in self._assigned}

    def _end_replays(self) -> None:
        for tp, until in list(self._replay_until.items()):
            if self._next_offset.get(tp, -1) >= until:
                del self._replay_until[tp]
                log.info("replay done; emitting", extra={"partition": f"{tp.topic}/{tp.partition}", "offset": until})

    # -- exactly-once -------------------------------------------------------------------------
    def _publish_transaction(self, messages: list[Message], dead: list, records: list,
                             offsets: dict) -> bool:
        """Forecasts, dead letters and the input offsets in one transaction. False: aborted (state rewound).

        A dead letter refused for its size is cut in the redo (``_cuts`` remembers it by source); a permanent
        refusal stops the run. Fenced after the transaction was open longer than transaction_timeout_ms: the
        broker aborted it for time, so a new producer takes over and the batch is redone from the committed
        offsets. Fenced sooner: another process took the transactional id, which is fatal."""
        if not messages and not dead and not offsets:
            return True
        outgoing = self._outgoing(messages, dead, records)
        for topic in dict.fromkeys(m.topic for m in outgoing):
            self._await_topic(topic)
        self.metrics.beat()
        sent: list = []
        begun = time.monotonic()
        try:
            with self._stall("transaction"):
                self.producer.begin_transaction()
                for msg in outgoing:
                    fut = self._send(msg)
                    if isinstance(fut, BaseException):
                        raise fut
                    sent.append((msg, fut))
                if offsets:
                    self._bounded(self.producer.send_offsets_to_transaction, offsets, self.consumer.group_metadata())
                self._bounded(self.producer.commit_transaction)
        except FatalError:
            raise
        except _FENCED as exc:
            open_s = time.monotonic() - begun
            if open_s < self.cfg.transaction_timeout_ms / 1000:
                raise FatalError(_FENCED_BY_ANOTHER) from None
            self.metrics.transactions.labels("aborted").inc()
            self.metrics.publish_errors.labels("fenced_by_timeout").inc()
            log.warning("the broker aborted the transaction for time and fenced this producer; replacing it and "
                        "rewinding to the committed offsets", extra={"open_s": round(open_s, 1), "error": repr(exc),
                                                                     "transaction_timeout_ms": self.cfg.transaction_timeout_ms})
            self._replace_producer()
            self._rewind()
            return False
        except Exception as exc:  # noqa: BLE001 - any failure: abort, rewind, redo from the committed offsets
            self._judge_sends(sent)
            self.metrics.transactions.labels("aborted").inc()
            self.metrics.broker_up.set(0)
            self.metrics.publish_errors.labels("timeout" if isinstance(exc, KafkaTimeoutError) else "retriable").inc()
            log.warning("transaction failed; aborting and rewinding to the committed offsets",
                        extra={"error": repr(exc)})
            try:
                self._bounded(self.producer.abort_transaction)
            except Exception as abort_exc:  # noqa: BLE001 - a fresh producer fences this one below
                log.warning("abort failed; replacing the producer", extra={"error": repr(abort_exc)})
                self._replace_producer()
            self.metrics.beat()
            self._rewind()
            return False
        self.metrics.transactions.labels("committed").inc()
        self.metrics.broker_up.set(1)
        self.metrics.unblock()
        self.metrics.beat()
        self._forget_cuts(records)
        self.stats.commits += 1
        self.metrics.commits.inc()
        return True

    def _judge_sends(self, sent: list) -> None:
        """After a failed transaction: dead letters refused for size go out cut in the redo. kafka-python fails
        every batch of an aborted transaction with the first error, so a size error on a forecast message counts
        only when no dead letter explains it; then the redo would be refused again, and the run stops."""
        too_large = [(msg, fut.exception) for msg, fut in sent
                     if fut.is_done and fut.failed() and publish_error_reason(fut.exception) == "too_large"]
        if too_large and all(msg.dead is None for msg, _ in too_large):
            self._refused(*too_large[0])
        for msg, exc in too_large:
            if msg.dead is not None:
                self._cut(msg, exc)

    def _bounded(self, call, *args):
        """kafka-python waits for transaction results without a timeout; a response lost in a broken
        connection would block forever. Wait at most twice the request timeout (the config keeps
        transaction_timeout_ms above that), beating liveness meanwhile, then fail (the caller aborts, replaces
        the producer, which fences the stuck one, and rewinds)."""
        done, box = threading.Event(), {}

        def run():
            try:
                box["result"] = call(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the loop's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, daemon=True, name=f"tx-{call.__name__}").start()
        deadline = time.monotonic() + self.cfg.longest_bounded_wait_ms / 1000
        while not done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            self.metrics.beat()  # waiting on the broker on purpose
            if time.monotonic() >= deadline:
                raise KafkaTimeoutError(f"{call.__name__} got no answer within {self.cfg.longest_bounded_wait_ms} ms")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _replace_producer(self) -> None:
        """A new transactional producer (same id: it fences the old one); retried until the broker answers."""
        try:
            self.producer.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass
        self.producer = None
        backoff = 0.5
        while not self.stop_event.is_set():
            self.metrics.beat()  # waiting on the broker on purpose
            try:
                self.producer = self._make_producer()
                return
            except ProducerFencedError:
                raise FatalError(_FENCED_BY_ANOTHER) from None
            except Exception as exc:  # noqa: BLE001 - broker away: keep trying
                self.metrics.broker_errors.labels("producer").inc()
                log.warning("cannot create the transactional producer; retrying",
                            extra={"error": repr(exc), "retry_in_s": backoff})
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _rewind(self) -> None:
        """Back to the committed offsets with the state that goes with them (checkpoint + silent replay)."""
        self._dirty = False
        if not self._restore_with_retry(sorted(self._assigned)):
            self._dirty = True  # stopping before the rewind finished: the state does not match; never checkpoint it

    def _restore_with_retry(self, pending: list) -> bool:
        """Restore each partition, retrying while the broker or the checkpoint store is away; False if
        stopped or fatal first. A bad checkpoint never gets here: ``_restore`` skips it to the next older
        one, so what is retried is always an outside failure, never the same bytes."""
        backoff = 0.5
        pending = list(pending)
        while pending and not self.stop_event.is_set():
            self.metrics.beat()  # waiting on the broker (or a slow store) on purpose
            tp = pending[0]
            try:
                self._restore(tp)
                pending.pop(0)
                backoff = 0.5
            except FatalError as exc:
                self._fatal = str(exc)
                self.stop_event.set()
                return False
            except StoreUnavailable as exc:
                log.warning("checkpoint store unreachable; retrying the restore",
                            extra={"partition": f"{tp.topic}/{tp.partition}", "error": str(exc),
                                   "retry_in_s": backoff})
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:  # noqa: BLE001 - broker still away: wait and retry
                self.metrics.broker_errors.labels("rewind").inc()
                log.warning("cannot rewind yet; retrying", extra={"partition": f"{tp.topic}/{tp.partition}",
                                                                  "error": repr(exc), "retry_in_s": backoff})
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return not pending

    # -- checkpoints ------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        if self.store is None or self._dirty:
            return
        due = (self.cfg.checkpoint_interval_s and time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_interval_s) \
            or (self.cfg.checkpoint_every_batches and self._batches_since_checkpoint >= self.cfg.checkpoint_every_batches)
        if not due:
            return
        if self._pending_write is not None and not self._pending_write.done():
            return  # the previous round is still writing; try after the next batch
        snapshots = self._snapshots(self._assigned)
        self._last_checkpoint = time.monotonic()
        self._batches_since_checkpoint = 0
        self._pending_write = self._writer.submit(self._write_snapshots, snapshots, "periodic")

    def _checkpoint_now(self, partitions, why: str) -> None:
        """Synchronous checkpoint (revoke, shutdown) of partitions whose state matches their committed offsets."""
        if self.store is None or not partitions:
            return
        if self._dirty:
            log.warning("not checkpointing: the last batch was not committed", extra={"why": why})
            return
        if self._pending_write is not None:
            self._pending_write.result()
        self._write_snapshots(self._snapshots(partitions), why)

    def _snapshots(self, partitions) -> list[tuple[TopicPartition, pa.Table, int]]:
        """Copies of the state of partitions that moved since their last checkpoint (not mid-replay)."""
        out = []
        for tp in sorted(partitions):
            if tp in self._next_offset and tp not in self._replay_until and tp not in self._replay_until_ts \
                    and self._checkpointed.get(tp) != self._next_offset[tp]:
                out.append((tp, self.forecaster.export_partition(self._partition_id(tp.topic, tp.partition)),
                            self._next_offset[tp]))
        return out

    def _write_snapshots(self, snapshots, why: str) -> None:
        spec = self.bundle.feature_spec.to_dict()
        for tp, table, offset in snapshots:
            started = time.perf_counter()
            try:
                m = self.store.write(tp.topic, tp.partition, table, offset, self.bundle.model_version, spec)
            except CheckpointError as exc:
                self.stats.checkpoint_failures += 1
                self.metrics.checkpoint_writes.labels("failed").inc()
                log.error("checkpoint failed; processing goes on, recovery would replay from an older one",
                          extra={"why": why, "error": str(exc)})
                continue
            self._checkpointed[tp] = offset
            self.stats.checkpoints += 1
            self.metrics.checkpoint_writes.labels("ok").inc()
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            self.metrics.checkpoint_bytes.set(m.bytes)
            self.metrics.checkpoint_last_success.set_to_current_time()
            log.debug("checkpoint written", extra={"partition": f"{tp.topic}/{tp.partition}", "offset": offset,
                                                   "rows": m.rows, "bytes": m.bytes, "why": why})

    # -- at-least-once ------------------------------------------------------------------------
    def _commit(self, offsets: dict) -> None:
        if not offsets:
            return
        backoff = 0.5
        while True:
            self.metrics.beat()  # waiting on the broker on purpose
            try:
                with self._stall("commit"):
                    # Bounded, so this loop keeps control (liveness, shutdown) through an outage.
                    self.consumer.commit(offsets, timeout_ms=self.cfg.request_timeout_ms)
                self.stats.commits += 1
                self.metrics.commits.inc()
                return
            except Exception as exc:  # noqa: BLE001
                self.metrics.broker_errors.labels("commit").inc()
                if isinstance(exc, CommitFailedError):
                    log.warning("commit refused after a rebalance; the new owner reprocesses these records",
                                extra={"error": repr(exc)})
                    return
                if self.stop_event.is_set() and self._stop_requested_at is not None and \
                        time.monotonic() - self._stop_requested_at > self.cfg.shutdown_timeout_s:
                    log.error("commit failed at shutdown; records will be reprocessed", extra={"error": repr(exc)})
                    return
                log.warning("commit failed; retrying", extra={"error": repr(exc), "retry_in_s": backoff})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _score(self, ticks: pa.Table, rows: np.ndarray, forecasts: np.ndarray,
               expired: list[tuple[int, str]] = ()) -> None:
        """Score the forecasts that mature with this batch; forget what the state table expired in it."""
        self._score_batch(ticks, rows, forecasts)
        self.scorer.forget(expired)  # after scoring: a key stepped and expired in one batch is gone from both

    def _score_batch(self, ticks: pa.Table, rows: np.ndarray, forecasts: np.ndarray) -> None:
        if len(rows) == 0:
            return
        take = pa.array(rows)
        names = ticks.column("instrument").take(take)
        parts = ticks.column("partition").take(take).to_numpy()
        enc = names.combine_chunks().dictionary_encode() if isinstance(names, pa.ChunkedArray) \
            else names.dictionary_encode()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        n_codes = len(enc.dictionary)
        composite = parts.astype(np.int64) * n_codes + codes
        uniq, group = np.unique(composite, return_inverse=True)
        dictionary = enc.dictionary.to_pylist()
        keys = [(int(u // n_codes), dictionary[int(u % n_codes)]) for u in uniq]
        price = ticks.column("price").take(take).to_numpy()
        m = self.scorer.update(keys, group, price, forecasts)
        if m.count:
            self.metrics.forecast_abs_error.inc(m.abs_error)
            self.metrics.random_walk_abs_error.inc(m.random_walk_abs_error)
            self.metrics.forecasts_scored.inc(m.count)

    def _count_received(self, pid: np.ndarray) -> None:
        """ticks_received by input topic and partition (two topics' partition 0 are two series)."""
        for p, c in zip(*np.unique(pid, return_counts=True)):
            tp = self._tp_of(int(p))
            self.metrics.ticks_received.labels(tp.topic, str(tp.partition)).inc(int(c))

    def _update_lag(self) -> None:
        """Fetch high-watermark minus position per assigned partition (on_revoked drops a partition's series)."""
        for tp in list(self._assigned):
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=100)
            except Exception:  # noqa: BLE001 - lag is best effort
                continue
            if pos is not None:
                self._lag[tp] = max(hw - pos, 0)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(self._lag[tp])

    def _report_status(self) -> None:
        s = self.stats
        elapsed = max(time.monotonic() - s.started, 1e-9)
        pct = s.percentiles()
        lag = sum(v for tp, v in self._lag.items() if tp in self._assigned)  # as of the last batch
        p99 = f"{pct['p99_ms']:.1f}ms" if pct["p99_ms"] is not None else "-"
        line = (f"ticks {s.ticks:,} ({s.ticks / elapsed:,.0f}/s)  forecasts {s.forecasts:,}  "
                f"dead letters {s.dead_letters:,}  lag {lag:,}  p99 {p99}  "
                f"instruments {len(self.forecaster.state):,}  partitions {len(self._assigned)}")
        if sys.stderr.isatty():
            print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)
        else:
            log.info("status", extra={"ticks": s.ticks, "forecasts": s.forecasts, "dead_letters": s.dead_letters,
                                      "lag": lag, "p99_ms": pct["p99_ms"], "instruments": len(self.forecaster.state)})


def _tp(record) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _last_per_group(ticks: pa.Table, rows: np.ndarray) -> np.ndarray:
    """Positions in ``rows`` of the last tick of each (partition, instrument)."""
    take = pa.array(rows)
    codes = ticks.column("instrument").take(take).combine_chunks().dictionary_encode().indices
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    parts = ticks.column("partition").take(take).to_numpy().astype(np.int64)
    composite = parts * (int(codes.max()) + 1) + codes
    _, first_in_reversed = np.unique(composite[::-1], return_index=True)
    return np.sort(len(rows) - 1 - first_in_reversed)


def _tps(partitions) -> str:
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in sorted(partitions))


class _Listener(ConsumerRebalanceListener):
    """kafka-python rebalance callbacks, forwarded to the runner."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def on_partitions_revoked(self, revoked):
        self.runner.on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.runner.on_assigned(assigned)
