"""When and what to snapshot: periodic checkpoints written by a background writer between batches, one on
revoke (snapshot taken at once, written by the background writer) and one at shutdown, waited for until its
deadline. Only state that matches the committed offsets is written: never mid-batch (``Partitions.dirty``),
never a partition mid-replay, never one unchanged since its last checkpoint (``Partition.snapshot``).

The writer hands back what it wrote; the loop's thread tells each partition (``Partition.checkpointed_at``)
before it next decides what to snapshot.

The writer is one daemon thread: a write stalled on the store (an S3 endpoint that stops answering) is
abandoned at the shutdown deadline and the process exits anyway; the store writes data, then the manifest,
so the checkpoint before it stays the one a restart restores.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from pipeline import logs
from pipeline.checkpoint import CheckpointError, ModelState
from pipeline.config import RunConfig
from pipeline.live.models import Models
from pipeline.live.partitions import Partition, Partitions
from pipeline.live.status import RunStats
from pipeline.metrics import Metrics

log = logs.get("run")


class Checkpointer:
    def __init__(self, cfg: RunConfig, models: Models, store, partitions: Partitions, metrics: Metrics,
                 stats: RunStats):
        self.cfg = cfg
        self.models = models
        self.store = store
        self.partitions = partitions
        self.metrics = metrics
        self.stats = stats
        self.last_checkpoint = time.monotonic()
        self.batches_since = 0
        self.writer = Writer() if store else None
        self.pending_write: Future | None = None  # the newest write
        self.unapplied: deque[Future] = deque()  # writes whose results the partitions have not been told yet
        self.abandoned = False  # a write was left running at the shutdown deadline

    def batch_done(self) -> None:
        self.batches_since += 1

    def due(self) -> bool:
        """A periodic round is due (interval or batch count)."""
        cfg = self.cfg
        return self.store is not None and bool(
            (cfg.checkpoint_interval_s and time.monotonic() - self.last_checkpoint >= cfg.checkpoint_interval_s)
            or (cfg.checkpoint_every_batches and self.batches_since >= cfg.checkpoint_every_batches))

    def maybe_checkpoint(self) -> None:
        """A periodic round when one is due and the previous one has finished."""
        if self.store is None or self.partitions.dirty or not self.due():
            return
        if self.pending_write is not None and not self.pending_write.done():
            return  # the previous round is still writing; try after the next batch
        snapshots = self.snapshots(self.partitions.assigned)
        self.last_checkpoint = time.monotonic()
        self.batches_since = 0
        self._submit(snapshots, "periodic")

    def checkpoint_now(self, partitions, why: str, wait: bool = True, deadline: float | None = None) -> None:
        """Checkpoint partitions whose state matches their committed offsets: the snapshot is taken now; the
        background writer writes it after any write queued before it, waited for (``wait``: shutdown) until
        ``deadline`` (monotonic; None: no deadline), then abandoned.

        A revoke does not wait: kafka-python runs rebalance listeners on its network thread, where a slow
        store (S3) would hold up heartbeats until the group evicts this member. The next owner restores from
        whatever checkpoint is complete when it looks and replays silently from there, so a write that lands
        later changes how far it replays, never the numbers."""
        if self.store is None or not partitions:
            return
        if self.partitions.dirty:
            log.warning("not checkpointing: the last batch was not committed", extra={"why": why})
            return
        snapshots = self.snapshots(partitions)
        if not wait:
            if snapshots:
                self._submit(snapshots, why)
            return
        written = self._submit(snapshots, why)  # after any write queued before it
        try:
            written.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self.abandoned = True
            self.stats.checkpoint_failures += 1
            self.metrics.checkpoint_writes.labels("failed").inc()
            log.error("checkpoint abandoned at its deadline (the store did not answer); a restart restores the "
                      "previous checkpoint and replays from there", extra={"why": why})

    def close(self) -> None:
        """No more writes; one still running goes on, unwaited (its thread never holds the process up)."""
        if self.writer is not None:
            self.writer.shutdown()

    def _submit(self, snapshots, why: str) -> Future:
        self.pending_write = self.writer.submit(self.write, snapshots, why)
        self.unapplied.append(self.pending_write)
        return self.pending_write

    def take_written(self) -> None:
        """Tell each partition the checkpoints the writer has finished since (in the order written)."""
        while self.unapplied and self.unapplied[0].done():
            future = self.unapplied.popleft()
            if not future.cancelled() and future.exception() is None:
                for partition, offset in future.result():
                    partition.checkpointed_at(offset)

    def snapshots(self, partitions) -> list[tuple[Partition, list[ModelState], int]]:
        """Copies of every model's state of owned partitions that moved since their last checkpoint
        (``Partition.snapshot``), the primary's first."""
        self.take_written()
        out = []
        for tp in sorted(partitions):
            partition = self.partitions.find(tp)
            offset = partition.snapshot() if partition is not None else None
            if offset is not None:
                out.append((partition, self.models.export_partition(partition.part_id), offset))
        return out

    def write(self, snapshots, why: str) -> list[tuple[Partition, int]]:
        """On the writer's thread: each snapshot to the store; (partition, offset) of those written."""
        written = []
        for partition, states, offset in snapshots:
            tp = partition.tp
            started = time.perf_counter()
            try:
                m = self.store.write_models(tp.topic, tp.partition, states, offset)
            except CheckpointError as exc:
                self.stats.checkpoint_failures += 1
                self.metrics.checkpoint_writes.labels("failed").inc()
                log.error("checkpoint failed; processing goes on, recovery would replay from an older one",
                          extra={"why": why, "error": str(exc)})
                continue
            written.append((partition, offset))
            self.stats.checkpoints += 1
            self.metrics.checkpoint_writes.labels("ok").inc()
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            self.metrics.checkpoint_bytes.set(m.bytes)
            self.metrics.checkpoint_last_success.set_to_current_time()
            log.debug("checkpoint written", extra={"partition": f"{tp.topic}/{tp.partition}", "offset": offset,
                                                   "rows": m.rows, "bytes": m.bytes, "why": why})
        return written


class Writer:
    """Runs writes one at a time, in order, on one daemon thread; ``submit`` returns a Future. (An executor's
    worker threads are joined at interpreter exit, so a write stalled on the store would hold the process.)"""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="checkpoint", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
