"""The revoke checkpoint never blocks the thread that runs it (kafka-python's network thread: a slow store
there would stop heartbeats until the group evicts the member and another one takes its partitions)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pyarrow as pa
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.checkpoint import ModelState
from pipeline.live.checkpointer import Checkpointer
from pipeline.live.partitions import Partitions, Resume
from pipeline.live.status import RunStats
from pipeline.metrics import Metrics

TP = TopicPartition("ticks", 0)


class SlowStore:
    """A store whose writes wait until released (an S3 endpoint that is slow to answer)."""

    def __init__(self):
        self.release = threading.Event()
        self.written: list[tuple[str, int, int]] = []

    def write_models(self, topic, partition, models, offset):
        assert self.release.wait(30), "never released"
        self.written.append((topic, partition, offset))
        return SimpleNamespace(bytes=1, rows=models[0].state.num_rows)


def _checkpointer(store) -> Checkpointer:
    parts = Partitions(["ticks"])
    parts.assign([TP])
    parts.find(TP).resume(Resume(42))  # its state reflects every record before 42, none checkpointed yet
    models = SimpleNamespace(export_partition=lambda part_id: [ModelState("v", pa.table({"instrument": ["A"]}), {})])
    cfg = SimpleNamespace(checkpoint_interval_s=0, checkpoint_every_batches=0)
    return Checkpointer(cfg, models, store, parts, Metrics(CollectorRegistry()), RunStats())


def test_a_revoke_checkpoint_is_snapshotted_at_once_and_written_in_the_background():
    store = SlowStore()
    ck = _checkpointer(store)
    started = time.monotonic()
    ck.checkpoint_now([TP], "revoke", wait=False)
    assert time.monotonic() - started < 5, "the revoke waited for the store"
    assert store.written == []
    ck.partitions.revoke([TP])  # the revoke goes on to drop the partition; the snapshot is already taken
    store.release.set()
    ck.pending_write.result(timeout=30)
    assert store.written == [("ticks", 0, 42)]
    ck.close()


def test_the_writer_hands_back_what_it_wrote_and_the_partition_learns_it_on_the_loops_thread():
    store = SlowStore()
    store.release.set()
    ck = _checkpointer(store)
    ck.checkpoint_now([TP], "shutdown")
    assert store.written == [("ticks", 0, 42)]
    assert ck.partitions.find(TP).checkpointed is None, "the writer's thread never writes a partition's state"
    assert ck.snapshots([TP]) == [], "told before the next snapshot: unchanged since its checkpoint"
    assert ck.partitions.find(TP).checkpointed == 42
    ck.close()


def test_a_shutdown_checkpoint_is_written_before_it_returns():
    store = SlowStore()
    ck = _checkpointer(store)
    threading.Timer(0.5, store.release.set).start()
    ck.checkpoint_now([TP], "shutdown")
    assert store.written == [("ticks", 0, 42)]
    ck.close()
