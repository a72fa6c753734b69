"""The live loop: poll -> micro-batch -> decode -> operator -> publish -> commit.

Order of one batch (at-least-once), written down because it is the contract:

1. collect records until ``max_batch_ticks``, or until the batch's own work (measured per tick) would end
   more than ``max_batch_ms`` after its first record's receipt (``inflight.BatchSizer``);
2. decode the batch into columns; messages that are not ticks get a reason;
3. ``Forecaster.step`` on the valid ticks; ticks it refuses get a reason;
4. send every forecast to the output topic and every refused message, with its original key and value and
   the reason in headers, to the dead-letter topic;
5. flush the producer and check every send was acknowledged (retry until it is, or until shutdown gives up:
   then nothing is committed and the batch is processed again after restart);
6. commit the offsets after the batch's last records.

A restart (or a partition moving to another process) resumes at the committed offsets. A partition this
process starts to own is restored from its newest valid checkpoint and replayed silently up to the committed
offset; with checkpoints off it begins with empty state, and the log says so loudly.
``processing = exactly_once`` replaces steps 4-6 with one Kafka transaction.

Candidates (``models``): step 3 steps every model over the same ticks; their forecasts go to the shadow topic
in the batch's own sends (step 4, or its transaction); promotion is a config change and a restart.

Pipelining (``max_batches_in_flight`` > 1): steps 1-3 of the next batch run while the previous batch
waits in step 5 (or, exactly-once, for its transaction's commit); batches are settled oldest first, so
offsets are still committed in input order and never past a batch not yet acknowledged.

Who does what: ``clients`` (Kafka clients), ``pipeline.waiting`` (retries, bounded calls), ``partitions``
(each owned partition and where its state stands), ``restore_plan`` (where a restored partition's state comes
from), ``recovery`` (restores and rewinds: the plan's facts, the plan applied), ``pipeline.wire`` (message
formats), ``batch`` (steps 2-3), ``delivery`` (steps 4-6: ``at_least_once`` or ``exactly_once``),
``inflight`` (batches between steps 4 and 6, batch sizes), ``checkpointer`` (snapshots), ``status`` (stats,
what a settled batch adds to them, lag, status line). This module holds the lifecycle and the loop.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from operators.forecaster import ForecasterConfig
from operators.bundle import Bundle
from operators.engines import compiled_line
from pipeline import logs
from pipeline.checkpoint import CheckpointStore, group_store
from pipeline.config import RunConfig, parse_date_ns, parse_duration_ns
from pipeline.evaluation.online import OnlineScorer
from pipeline.live import clients, status
from pipeline.kafka.clients import KafkaClients, make_clients
from pipeline.kafka.tls import check_tls
from pipeline.live.batch import step_batch
from pipeline.live.checkpointer import Checkpointer
from pipeline.live.delivery import open_delivery
from pipeline.live.inflight import Batch, BatchSizer, InFlight, InFlightBatch, Outbox
from pipeline.live.models import Models
from pipeline.live.partitions import Partitions, describe
from pipeline.live.recovery import Recovery
from pipeline.live.status import RunStats
from pipeline.live.warming import Warming
from pipeline.live.stopping import FatalError, PublishTimeout, Stopping
from pipeline.metrics import Metrics
from pipeline.waiting import Backoff, retry
from pipeline.wire.forecasts import JsonNames, encode_arrow, encode_json, last_per_group
from pipeline.wire.outgoing import Outgoing

log = logs.get("run")


class Runner:
    """The live runtime from its config; its Kafka client factory and checkpoint store may be given instead."""

    def __init__(self, config: RunConfig, bundle: Bundle, metrics: Metrics,
                 kafka_clients: KafkaClients | None = None, store: CheckpointStore | None = None,
                 candidates: Sequence[Bundle] = ()):
        self.cfg = config
        self.bundle = bundle
        self.metrics = metrics
        self.kafka_clients = kafka_clients or make_clients(config.kafka_client)
        self.models = Models(bundle, candidates, ForecasterConfig(
            reset_gap_ns=parse_duration_ns(config.reset_gap) if config.reset_gap else None,
            expire_after_ns=parse_duration_ns(config.expire_after) if config.expire_after else None,
            ts_floor_ns=parse_date_ns(config.ts_floor), max_ts_ahead_ns=parse_duration_ns(config.max_ts_ahead),
            max_instruments=config.max_instruments or None, engine=config.engine,
        ), metrics)
        self.forecaster = self.models.primary.forecaster
        log.info(self.forecaster.engine.line)
        fast, line = compiled_line(self.forecaster.kernel)
        (log.info if fast or self.forecaster.engine.engine == "keras" else log.warning)(line)
        self.metrics.compiled_loop.set(int(fast))
        self.metrics.state_rows_limit.set(config.max_instruments)
        self.scorer = OnlineScorer(bundle.horizon)
        self.stats = RunStats()
        self.stopping = Stopping(config.shutdown_timeout_s)
        self.conn = clients.Connection()
        self.json_names = JsonNames()
        # shared by every producer this run makes; memoises the forecast topic's keys (instruments) only
        self.partitioner = clients.CachingPartitioner(cached_topics=frozenset({config.output_topic}))
        self.partitions = Partitions(config.input_topics)
        self.store = store or (group_store(config.checkpoint_uri, config.group_id, config.checkpoint_keep,
                                           config.checkpoint_key()) if config.checkpoint_uri else None)
        if candidates and config.warmup:  # a candidate without state catches up on the warm-up window
            self.models.warm_with(Warming(config, self.kafka_clients, self.partitions, metrics))
        self.recovery = Recovery(config, self.models, self.store, self.partitions, self.conn,
                                 self.kafka_clients, metrics, self.stopping)
        self.delivery = open_delivery(config, self.conn, self.kafka_clients, self.partitioner, metrics,
                                      self.stopping, clients.StallWatch(metrics), self.recovery.rewind)
        self.checkpointer = Checkpointer(config, self.models, self.store, self.partitions, metrics, self.stats)
        self.inflight = InFlight(self.delivery.depth)
        self.sizer = BatchSizer(config.max_batch_ticks, config.max_batch_ms)
        metrics.model_info.info({"version": bundle.model_version, "horizon_ticks": str(bundle.horizon),
                                 "layers": str(bundle.shape.layers), "hidden": str(bundle.shape.hidden),
                                 "engine": self.forecaster.engine.engine})

    @property
    def stop_event(self) -> threading.Event:
        return self.stopping.event

    # -- lifecycle --------------------------------------------------------------------
    def request_stop(self, *_args) -> None:
        self.stopping.request()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Run until stopped. Returns the process exit code."""
        if not self._connect():
            self._close()
            return 0 if self.stop_event.is_set() else 1
        code = 0
        try:
            self._loop()
        except PublishTimeout as exc:
            log.error("shutdown gave up on unacknowledged forecasts; nothing committed for them",
                      extra={"detail": str(exc)})
            code = 1
        except FatalError as exc:
            log.error("stopping", extra={"reason": str(exc)})
            code = 2
        finally:  # each step by its deadline (pipeline.live.stopping: the shutdown budget)
            self.stopping.begin_shutdown()
            if code == 0:
                self.checkpointer.checkpoint_now(self.partitions.assigned, "shutdown",
                                                 deadline=self.stopping.deadline("checkpoint"))
            self._close(deadline=self.stopping.deadline("close"))
            self.checkpointer.close()
        log.info("stopped", extra=self.summary())
        return code

    def _loop(self) -> None:
        """Collect a batch (restoring newly assigned partitions on the way), process it and dispatch it while
        older batches settle (``inflight``), then maybe checkpoint; a status line now and then. No input, a
        checkpoint due, or a stop: every batch in flight is settled first."""
        last_status = time.monotonic()
        freeze_long_lived_objects()  # before any record: the first pause is nobody's latency
        first_batch = True
        while not self.stop_event.is_set():
            records, received_at = self._collect()
            if self.stopping.fatal:
                raise FatalError(self.stopping.fatal)
            if records:
                self._process(records, received_at)
                if first_batch:  # and what the first batch imported or compiled
                    freeze_long_lived_objects()
                    first_batch = False
            self.models.advance_warmup(self.cfg.max_batch_ticks)  # candidates catching up: a bounded round
            if not records or self.checkpointer.due():
                self._drain()  # idle, or only committed state is checkpointed
            self.checkpointer.maybe_checkpoint()
            now = time.monotonic()
            if self.cfg.status_interval_s and now - last_status >= self.cfg.status_interval_s:
                status.report_status(self.stats, self.partitions, len(self.forecaster.state))
                self.models.publish()
                last_status = now
        if self.stopping.fatal:
            raise FatalError(self.stopping.fatal)
        self._drain()

    def summary(self) -> dict:
        return self.stats.summary()

    def _connect(self) -> bool:
        def attempt() -> bool:
            check_tls(self.cfg.bootstrap_servers, self.cfg.kafka_security())  # a refused certificate: one line
            self.conn.producer = clients.open_producer(self.kafka_clients, self.cfg, self.partitioner)
            self.conn.consumer = clients.open_consumer(self.kafka_clients, self.cfg)
            self.conn.consumer.subscribe(self.cfg.input_topics, listener=_Listener(self))
            self.metrics.broker_up.set(1)
            log.info("connected", extra={"bootstrap": self.cfg.bootstrap_servers, "group": self.cfg.group_id,
                                         "topics": ",".join(self.cfg.input_topics)})
            return True

        def on_error(exc: Exception, retry_in_s: float) -> None:
            if not isinstance(exc, KafkaError):
                raise exc
            self.metrics.broker_up.set(0)
            self.metrics.broker_errors.labels("connect").inc()
            log.warning("broker unreachable; retrying", extra={"bootstrap": self.cfg.bootstrap_servers,
                                                              "retry_in_s": retry_in_s, "error": repr(exc)})
            clients.close(self.conn)  # the clients only: the delivery (its committer thread) lives on

        return retry(attempt, on_error, stop=self.stop_event, backoff=Backoff(cap_s=30.0)) is True

    def _close(self, deadline: float | None = None) -> None:
        clients.close(self.conn, deadline)
        self.models.close()
        self.delivery.close()
        self.metrics.ready = False

    # -- assignment ---------------------------------------------------------------------
    def on_revoked(self, revoked) -> None:
        """Before another member takes them: checkpoint what we hold (committed already), then forget it."""
        parts = self.partitions
        # exactly-once: the open transaction's commit ends first (the next owner sees it); at-least-once:
        # never commit a revoked partition's offsets (its new owner reprocesses them)
        if self.delivery.revoke(self.inflight, revoked):
            for entry in self.inflight.batches:  # committed: settled (a revoke comes inside a poll)
                parts.settled(entry.batch.stepped)
        mine = [tp for tp in revoked if tp in parts]
        if mine:
            self.checkpointer.checkpoint_now(mine, "revoke", wait=False)  # never block the network thread
        parts.revoke(revoked)
        for tp in revoked:
            part_id = parts.part_id(tp.topic, tp.partition)
            self.models.drop_partition(part_id)
            self.scorer.drop_partition(part_id)
            status.drop_lag(self.metrics, tp)
        self.metrics.assigned_partitions.set(len(parts))
        self.metrics.rebalances.inc()
        log.info("partitions revoked", extra={"partitions": describe(revoked)})

    def on_assigned(self, assigned) -> None:
        # Runs on kafka-python's I/O thread, where blocking consumer calls are not allowed: the
        # restore (committed offsets, seek) happens on the loop's thread right after this poll.
        self.partitions.assign(assigned)
        self.metrics.assigned_partitions.set(len(self.partitions))
        if not self.partitions.pending():  # nothing to restore (an idle member of a group with few partitions)
            self.metrics.ready = True

    # -- one batch ------------------------------------------------------------------------
    def _collect(self) -> tuple[list, list[float]]:
        """Records of one micro-batch and when each poll returned them, polled until the batch window closes;
        older batches settle as their acknowledgements arrive, partitions a poll assigns are restored."""
        records, received, first_at = [], [], None  # records, when their polls returned, the first's time
        limit = self.sizer.limit()
        while len(records) < limit and not self.stop_event.is_set():
            polled = self._poll(lambda: self._poll_wait_ms(first_at, len(records)), limit - len(records))
            if polled is None:
                break  # stopped while the broker was away
            self.metrics.beat()
            self._settle_acknowledged()
            now = time.monotonic()
            for recs in polled.values():
                records.extend(recs)
                received.extend([now] * len(recs))
            records, received = self.partitions.keep_ready(records, received)
            if pending := self.partitions.pending():  # assigned by this poll: restored before their records
                if self.recovery.restore_with_retry(pending):
                    self.metrics.ready = True
                elif self.stopping.fatal:
                    break
            if records and first_at is None:
                first_at = now
            if not records or time.monotonic() >= self.sizer.close_at(first_at, len(records)):
                break
        return records, received

    def _poll_wait_ms(self, first_at: float | None, n: int) -> int:
        """Until the batch window closes; before its first record 200 ms, or 0 with batches in flight to settle."""
        if first_at is None:
            return 0 if self.inflight else 200
        return max(0, int((self.sizer.close_at(first_at, n) - time.monotonic()) * 1000))

    def _poll(self, wait_ms: Callable[[], int], max_records: int) -> dict | None:
        """One poll waiting at most ``wait_ms()`` (asked anew at each try), retried every second while it fails
        (the broker away); None: stopped meanwhile."""
        def attempt() -> dict:
            polled = self.conn.consumer.poll(timeout_ms=wait_ms(), max_records=max_records)
            self.metrics.broker_up.set(1)
            return polled

        def on_error(exc: Exception, retry_in_s: float) -> None:
            if (failure := clients.consumer_failure(exc)) is not None:  # kafka-python raises many kinds
                raise FatalError(failure) from exc
            self.metrics.broker_errors.labels("poll").inc()
            self.metrics.broker_up.set(0)
            log.warning("poll failed; retrying", extra={"error": repr(exc)})
            self.metrics.beat()  # waiting out the broker on purpose

        return retry(attempt, on_error, stop=self.stop_event, backoff=Backoff(1.0, 1.0))

    def _settle_acknowledged(self) -> None:
        """Settle, oldest first, the batches in flight whose acknowledgements have arrived (commits in order)."""
        if self.inflight:
            clients.serve_deliveries(self.conn.producer)
        while self.inflight.ready():
            self._settle_oldest()

    def _process(self, records: list, received_at: list[float]) -> None:
        """Step and encode a batch; settle the oldest batches until there is room; dispatch this one (sends
        issued, or its transaction opened with its commit on a helper thread). A settling that fails (an
        aborted transaction) rewinds this batch's state too: its records come again."""
        t_batch = time.perf_counter()
        batch = step_batch(records, received_at, self.partitions, self.forecaster, self.metrics, self.stats)
        step_s = time.perf_counter() - t_batch
        offsets = self.partitions.commit_offsets(batch.part_ids, batch.offs,
                                                 None if batch.silent is None else ~batch.silent)
        keep = self._select(batch.ticks, batch.rows)
        out_rows, forecasts = batch.rows[keep], batch.forecasts[keep]
        batch.shadows = self.models.step_candidates(batch, self._select)
        messages = self._encode(batch, self.bundle, self.cfg.output_topic, out_rows, forecasts)
        for shadow in batch.shadows:  # never to the primary's topic
            messages += self._encode(batch, shadow.model.bundle, self.cfg.shadow_output_topic, shadow.out_rows,
                                     shadow.out_forecasts)
        outbox = Outbox(messages, batch.dead, records, offsets)
        work_s = time.perf_counter() - t_batch  # and the sends issued, below (not the wait for older batches)
        while self.inflight and not self.inflight.room_for_next():
            if not self._settle_oldest():
                return  # aborted and rewound: these records come again
        t_send = time.perf_counter()
        pending = self.delivery.dispatch(outbox)
        if pending is None:
            return  # aborted and rewound: these records come again
        entry = InFlightBatch(outbox, batch, out_rows, t_batch, pending)
        self.sizer.observe(len(records), step_s, work_s + time.perf_counter() - t_send)
        self.inflight.push(entry)
        while len(self.inflight) >= self.inflight.depth:
            self._settle_oldest()

    def _settle_oldest(self) -> bool:
        """Settle the oldest batch in flight (``delivery``), then account it. False: aborted, the state rewound
        and every batch in flight dropped (their records come again)."""
        entry = self.inflight.oldest()
        if not self.delivery.settle(entry.outbox, entry.pending):
            self.inflight.clear()
            return False
        self.inflight.pop()
        self.partitions.settled(entry.batch.stepped, replayed=entry.batch.silent is not None)
        self.checkpointer.batch_done()
        status.account(self.metrics, self.stats, self.scorer, self.forecaster.state, entry.batch, entry.out_rows,
                       entry.started)
        self.models.score(entry.batch)
        self.forget_expired(entry.batch.result.expired)
        status.update_lag(self.metrics, self.partitions, self.conn.consumer)
        return True

    def forget_expired(self, expired: list[tuple[int, str]]) -> None:
        """The name-keyed memos follow the state table: what it expired leaves them too (the scorer forgets
        in ``status.account``). A name still live elsewhere is merely computed again."""
        if expired:
            names = {nm for _, nm in expired}
            self.json_names.forget(names)
            self.partitioner.forget(self.cfg.output_topic, [nm.encode() for nm in names])

    def _drain(self) -> None:
        """Settle every batch in flight, oldest first."""
        while self.inflight and self._settle_oldest():
            pass

    def _select(self, ticks, rows: np.ndarray) -> np.ndarray:
        """Positions in ``rows`` to publish: all, or the last per instrument (``output_mode``)."""
        if self.cfg.output_mode == "last_per_instrument" and len(rows):
            return last_per_group(ticks, rows)
        return np.arange(len(rows))

    def _encode(self, batch: Batch, bundle: Bundle, topic: str, out_rows: np.ndarray,
                forecasts: np.ndarray) -> list[Outgoing]:
        msg_index = batch.idx[out_rows]
        if self.cfg.output_format == "arrow":
            if len(out_rows) == 0:
                return []
            partitions = self.delivery.sender.await_topic(topic)
            return encode_arrow(bundle, self.cfg.input_topics, topic, partitions,
                                self.partitioner.of_key, batch.ticks, out_rows, forecasts, msg_index,
                                batch.part_ids, batch.offs)
        return encode_json(bundle, self.json_names, topic, batch.ticks, out_rows,
                           forecasts, msg_index, [r.topic for r in batch.records], batch.part_ids,
                           batch.offs)


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic collector's reach (garbage collected first, so no dead
    cycle is frozen with them; objects made later are collected as usual). The model, TensorFlow's and the
    clients' modules, the state table's metadata: some 350,000 objects live as long as the process, and each
    full collection that walks them took 200-300 ms on a core of the benchmark machine, every few seconds
    under load: a pause every tick received meanwhile waits out (the p99 latency). Cheap after the first
    time: a collection walks only what is not frozen yet."""
    gc.collect()
    gc.freeze()


class _Listener(ConsumerRebalanceListener):
    """kafka-python rebalance callbacks, forwarded to the runner."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def on_partitions_revoked(self, revoked):
        self.runner.on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.runner.on_assigned(assigned)
