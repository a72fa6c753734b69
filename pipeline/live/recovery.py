"""The restore policy: what state a partition starts with when this process starts to own it, and the
rewind to the committed offsets after a failed transaction.

In order of preference: the newest valid checkpoint at or before the committed offset, replayed silently up
to it; a warm-up window of input (``warmup``); a replay from the partition's start (checkpoints on, none
usable yet); or, loudly, empty state.
"""

from __future__ import annotations

import time

from kafka.structs import TopicPartition

from operators.forecaster import Forecaster
from operators.bundle import Bundle
from pipeline import logs
from pipeline.checkpoint import DATA_ERRORS, Problem, StoreUnavailable
from pipeline.config import RunConfig, parse_duration_ns
from pipeline.kafka.clients import KafkaClients
from pipeline.kafka.topics import first_offsets_at
from pipeline.live.clients import Connection, client_options
from pipeline.live.partitions import Partitions
from pipeline.live.stopping import FatalError, Stopping
from pipeline.metrics import Metrics
from pipeline.waiting import GIVE_UP, retry

log = logs.get("run")


class Recovery:
    def __init__(self, cfg: RunConfig, bundle: Bundle, forecaster: Forecaster, store, partitions: Partitions,
                 conn: Connection, clients: KafkaClients, metrics: Metrics, stopping: Stopping):
        self.cfg = cfg
        self.bundle = bundle
        self.forecaster = forecaster
        self.store = store
        self.partitions = partitions
        self.conn = conn
        self.clients = clients
        self.metrics = metrics
        self.stopping = stopping
        self.started_ms = int(time.time() * 1000)

    def rewind(self) -> None:
        """Back to the committed offsets with the state that goes with them (checkpoint + silent replay)."""
        self.partitions.dirty = False
        if not self.restore_with_retry(sorted(self.partitions.assigned)):
            # Stopped before the rewind finished: the state does not match; never checkpoint it.
            self.partitions.dirty = True

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
        """State for a newly assigned partition: newest valid checkpoint at or before the committed offset,
        then a silent replay from the checkpoint's offset up to the committed one; or a warm-up window;
        or, loudly, empty state.

        Raises on broker or store trouble (the caller retries); a checkpoint that cannot be used, whatever
        its bytes, is skipped and counted here, and the next older one tried."""
        started = time.perf_counter()
        consumer = self.conn.consumer
        where = f"{tp.topic}/{tp.partition}"
        part_id = self.partitions.part_id(tp.topic, tp.partition)
        self.forecaster.drop_partition(part_id)
        # Whatever the state reflected before is gone: every path below says anew where it stands.
        st = self.partitions[tp]
        st.next_offset = st.checkpointed = st.replay_until = st.replay_until_ts = None
        committed = consumer.committed(tp, timeout_ms=self.cfg.request_timeout_ms)
        loaded = None
        if self.store is not None and committed is None:
            # Checkpoints belong to committed offsets: without any (a new group, expired offsets, a recreated
            # topic) they cannot be placed, so the partition starts per auto_offset_reset (or warm-up).
            log.info("group has no committed offset for this partition; not using checkpoints",
                     extra={"partition": where})
        elif self.store is not None:
            loaded = self._load_checkpoint(tp, part_id, committed)
        if loaded is not None:
            rows = loaded.state.num_rows
            start = loaded.manifest.offset
            if start < committed:
                first = consumer.beginning_offsets([tp]).get(tp, 0)
                if first > start:
                    # Retention deleted records the replay needs: the state misses them for good. Replay
                    # what is left; the instruments those records touched carry older state.
                    log.warning("checkpoint is older than the partition's log start; records in between were "
                                "deleted by retention and are missing from the restored state",
                                extra={"partition": where, "checkpoint_offset": start,
                                       "log_start": first, "missing": first - start, "committed": committed})
                    start = min(first, committed)
            st.checkpointed = loaded.manifest.offset
            self._seek(tp, start, committed)
            self.metrics.restores.labels("checkpoint").inc()
            self.metrics.restore_seconds.observe(time.perf_counter() - started)
            log.info("partition restored from checkpoint",
                     extra={"partition": where, "rows": rows,
                            "checkpoint_offset": loaded.manifest.offset, "committed": committed,
                            "replay": max(0, (committed or start) - start),
                            "age_s": round(time.time() - loaded.manifest.created_at, 1)})
            return
        window = self._warmup_start(tp, committed) if self.cfg.warmup else None
        if window is not None:
            start, emit_from = window
            self._seek(tp, start, emit_from)
            if emit_from is None:  # a fresh group: silent up to the records produced before this run started
                st.replay_until_ts = self.started_ms
            self.metrics.restores.labels("warmup").inc()
            log.info("partition warming up from input", extra={
                "partition": where, "from_offset": start,
                "emit_from": emit_from if emit_from is not None else f"record timestamp {self.started_ms} ms"})
            return
        if self.store is not None and committed:
            # No checkpoint yet (a kill before the first one): rebuild from the start of the partition.
            start = consumer.beginning_offsets([tp]).get(tp, 0)
            if start < committed:
                self._seek(tp, start, committed)
                self.metrics.restores.labels("replay_from_start").inc()
                log.warning("no usable checkpoint; rebuilding state by replaying the partition from its start",
                            extra={"partition": where, "from_offset": start, "emit_from": committed})
                return
        # Position explicitly: records this poll already returned for the partition were dropped.
        if committed is not None:
            consumer.seek(tp, committed)
        elif self.cfg.auto_offset_reset == "earliest":
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek_to_end(tp)
        self.metrics.restores.labels("empty").inc()
        # Loud when state is lost (a restart or rebalance without a checkpoint); a new group starts empty anyway.
        (log.warning if committed is not None else log.info)(
            "partition assigned with EMPTY state: its instruments start from zero state",
            extra={"partition": where, "committed": committed,
                   "why": ("new group" if committed is None else
                           "no usable checkpoint" if self.store else "checkpoints are off (checkpoint_uri)")})

    def _load_checkpoint(self, tp: TopicPartition, part_id: int, committed: int):
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
                self.forecaster.import_partition(part_id, loaded.state)
            except DATA_ERRORS as exc:  # the store's checks passed it, the operator did not: skip it too
                self.forecaster.drop_partition(part_id)
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
        self.conn.consumer.seek(tp, start)
        st = self.partitions[tp]
        st.next_offset = start
        if emit_from is not None and emit_from > start:
            st.replay_until = emit_from

    def _warmup_start(self, tp: TopicPartition, committed: int | None) -> tuple[int, int | None] | None:
        """(first offset of the warm-up window, offset to emit from), or None when there is nothing to replay.

        A fresh group has no committed offset: it emits from the records produced after this run started
        (None), judged by record timestamp rather than by the end offset, which some brokers report late."""
        if committed == 0:
            return None
        window_ms = parse_duration_ns(self.cfg.warmup, "warmup") // 1_000_000
        probe = self.clients.consumer(group_id=None, enable_auto_commit=False, **client_options(self.cfg))
        try:  # a separate consumer: the group's own cannot be assigned partitions by hand
            found = first_offsets_at(probe, [tp], self.started_ms - window_ms).get(tp)
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
