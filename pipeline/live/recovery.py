"""Restoring a partition this process starts to own, and the rewind to the committed offsets after a failed
transaction: what is known (the committed offset, the newest usable checkpoint; the log start and the warm-up
window when a plan needs them), the plan made from it (``restore_plan``: checkpoint, warm-up, replay from the
start or empty), and the plan applied, retried while the broker or the store is away.
"""

from __future__ import annotations

import time

from kafka.structs import TopicPartition

from pipeline import logs
from pipeline.checkpoint import DATA_ERRORS, Loaded, Problem, StoreUnavailable
from pipeline.config import RunConfig, parse_duration_ns
from pipeline.kafka.clients import KafkaClients
from pipeline.kafka.topics import first_offsets_at
from pipeline.live import restore_plan
from pipeline.live.clients import Connection, client_options
from pipeline.live.models import Models
from pipeline.live.partitions import Partition, Partitions
from pipeline.live.stopping import FatalError, Stopping
from pipeline.metrics import Metrics
from pipeline.waiting import GIVE_UP, retry

log = logs.get("run")


class Recovery:
    def __init__(self, cfg: RunConfig, models: Models, store, partitions: Partitions,
                 conn: Connection, clients: KafkaClients, metrics: Metrics, stopping: Stopping):
        self.cfg = cfg
        self.models = models
        self.bundle = models.primary.bundle
        self.forecaster = models.primary.forecaster
        self.store = store
        self.partitions = partitions
        self.conn = conn
        self.clients = clients
        self.metrics = metrics
        self.stopping = stopping
        self.started_ms = int(time.time() * 1000)

    def rewind(self) -> None:
        """Back to the committed offsets with the state that goes with them (checkpoint + silent replay).
        Stopped before it finished, the partitions it did not reach keep state stepped past their committed
        offsets: dirty, never checkpointed."""
        self.restore_with_retry(sorted(self.partitions.assigned))

    def restore_with_retry(self, pending: list) -> bool:
        """Restore each partition, retrying while the broker or the checkpoint store is away; False if
        stopped or fatal first. A bad checkpoint never gets here: ``restore`` skips it to the next older
        one, so what is retried is always an outside failure, never the same bytes."""
        for tp in pending:
            def on_error(exc: Exception, retry_in_s: float, tp=tp):
                where = f"{tp.topic}/{tp.partition}"
                if isinstance(exc, FatalError):
                    self.stopping.fail(str(exc))
                    return GIVE_UP
                if isinstance(exc, StoreUnavailable):
                    log.warning("checkpoint store unreachable; retrying the restore",
                                extra={"partition": where, "error": str(exc), "retry_in_s": retry_in_s})
                    return None
                self.metrics.broker_errors.labels("rewind").inc()  # broker still away: wait and retry
                log.warning("cannot rewind yet; retrying", extra={"partition": where, "error": repr(exc),
                                                                  "retry_in_s": retry_in_s})
                return None

            done = retry(lambda tp=tp: self.restore(tp) or True, on_error, stop=self.stopping.event,
                         beat=self.metrics.beat)  # waiting on the broker (or a slow store) on purpose
            if done is None:
                return False
        return True

    def restore(self, tp: TopicPartition) -> None:
        """State for a newly owned partition (``restore_plan``): what is known, the plan made from it, applied.

        Raises on broker or store trouble (the caller retries); a checkpoint that cannot be used, whatever
        its bytes, is skipped and counted here, and the next older one tried."""
        started = time.perf_counter()
        partition = self.partitions.find(tp)
        if partition is None:  # not ours any more: nothing to restore
            return
        self.models.drop_partition(partition.part_id)
        partition.restart()  # whatever the state reflected before is gone
        committed = self.conn.consumer.committed(tp, timeout_ms=self.cfg.request_timeout_ms)
        tried: set[str] = set()
        while True:
            loaded = self._newest_checkpoint(tp, committed, tried) \
                if self.store is not None and committed is not None else None
            plan = restore_plan.plan(self._known(partition, committed, loaded))
            if self._apply(partition, plan, loaded, started):
                return

    def _known(self, partition: Partition, committed: int | None, loaded: Loaded | None) -> restore_plan.Known:
        tp = partition.tp
        return restore_plan.Known(
            partition.where, committed, self.store is not None,
            checkpoint=None if loaded is None else loaded.manifest,
            checkpoint_rows=0 if loaded is None else loaded.states[self.bundle.model_version].num_rows,
            log_start=lambda: self.conn.consumer.beginning_offsets([tp]).get(tp, 0),
            warmup=self.cfg.warmup, warmup_start=lambda: self._warmup_start(tp), started_ms=self.started_ms,
            auto_offset_reset=self.cfg.auto_offset_reset, now_s=time.time())

    def _apply(self, partition: Partition, plan: restore_plan.Plan, loaded: Loaded | None, started: float) -> bool:
        """The checkpoint's rows into the operator, the consumer positioned, the partition resumed. False: the
        operator refused the rows (skipped and counted; nothing else done)."""
        if loaded is not None and not self._import(partition, loaded):
            return False
        self.models.restore_candidates(partition, loaded)
        consumer, tp = self.conn.consumer, partition.tp
        if plan.seek == "beginning":
            consumer.seek_to_beginning(tp)
        elif plan.seek == "end":
            consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, plan.seek)
        partition.resume(plan.resume)
        self.metrics.restores.labels(plan.source).inc()
        if loaded is not None:
            self.metrics.restore_seconds.observe(time.perf_counter() - started)
        for note in plan.notes:
            log.log(note.level, note.message, extra=note.extra)
        return True

    def _import(self, partition: Partition, loaded: Loaded) -> bool:
        try:
            self.forecaster.import_partition(partition.part_id, loaded.states[self.bundle.model_version])
        except DATA_ERRORS as exc:  # the store's checks passed it, the operator did not: skip it too
            self.forecaster.drop_partition(partition.part_id)
            self.metrics.checkpoint_load_failures.inc()
            log.warning("skipping unusable checkpoint", extra={"path": loaded.path,
                                                               "reason": str(exc) or type(exc).__name__})
            return False
        return True

    def _newest_checkpoint(self, tp: TopicPartition, committed: int, tried: set[str]) -> Loaded | None:
        """The newest valid checkpoint at or before ``committed`` not in ``tried`` (which it joins), or None.
        Each manifest is tried at most once; StoreUnavailable propagates (the caller retries)."""
        problems: list[Problem] = []
        loaded = self.store.latest(tp.topic, tp.partition, max_offset=committed, problems=problems,
                                   validate=self._usable, exclude=tried)
        for _ in problems:
            self.metrics.checkpoint_load_failures.inc()
        tried |= {p.path for p in problems}
        if loaded is None:
            return None
        tried.add(loaded.path)
        if self.bundle.model_version not in loaded.states:  # the primary's own state, whatever role wrote it
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
        return loaded

    def _usable(self, loaded) -> None:
        """Rows this model can serve. Another model's checkpoint passes here: the caller refuses it by name
        (on_model_change) instead of silently skipping it."""
        if self.bundle.model_version in loaded.states:
            self.forecaster.state.check_rows(loaded.states[self.bundle.model_version])

    def _warmup_start(self, tp: TopicPartition) -> int | None:
        """The first offset stamped at or after this run's start minus the warm-up window, or None (none)."""
        window_ms = parse_duration_ns(self.cfg.warmup, "warmup") // 1_000_000
        probe = self.clients.consumer(group_id=None, enable_auto_commit=False, **client_options(self.cfg))
        try:  # a separate consumer: the group's own cannot be assigned partitions by hand
            return first_offsets_at(probe, [tp], self.started_ms - window_ms).get(tp)
        finally:
            probe.close(autocommit=False)
