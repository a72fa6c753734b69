"""Warming a candidate that has no state for a partition the run resumes from a checkpoint (a candidate added
to a running deployment): with ``warmup`` set, its state is rebuilt by replaying ``warmup`` of that
partition's input for it alone (``catchup.CatchUp``, a consumer of its own), while the primary keeps stepping
and publishing from the resume point.

Per candidate and partition: ``begin`` finds the first offset of the window (records stamped at or after now
minus ``warmup``) and starts a catch-up from there. Until it returns the partition as reached, the main
batches do not step that candidate on that partition's ticks (``waiting``), and checkpoints of the partition
do not hold the candidate (its state there is not at the checkpoint's offset). Between batches, on the loop's
thread, ``advance`` steps at most ``max_records`` records into the candidate's Forecaster (no output, nothing
counted in the primary's stats) up to the primary's stepped position (``Partition.stepped_to``); the
partitions that reached it join: from the next batch on the candidate is stepped with the primary and
publishes shadow forecasts. A window older than the resume point is waited for: the catch-up reads only once
the primary has stepped past the window's start, so the candidate is stepped over exactly the window's records
and everything after.

``cancel`` (a revoke, a restore or a rewind: the partition's state is rebuilt, the catch-up begins again from
``without_state`` if the checkpoint still lacks the candidate) before anything else: a leftover catch-up would
count a target below its position as reached and the candidate would step records twice.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from kafka.structs import TopicPartition

from pipeline import logs
from pipeline.config import RunConfig
from pipeline.kafka.clients import KafkaClients
from pipeline.live.catchup import CatchUp, open_catchup_consumer
from pipeline.live.partitions import Partition, Partitions
from pipeline.metrics import Metrics
from pipeline.wire.ticks import decode_records

log = logs.get("run")


class Warming:
    """The catch-ups of every candidate (one ``CatchUp`` each, by model version) and where each one started."""

    def __init__(self, cfg: RunConfig, clients: KafkaClients, partitions: Partitions, metrics: Metrics):
        self.cfg = cfg
        self.partitions = partitions
        self.metrics = metrics
        self._open = lambda: open_catchup_consumer(clients, cfg)
        self._catchups: dict[str, CatchUp] = {}
        self._models: dict[str, Any] = {}  # version -> Model
        self._start: dict[tuple[str, TopicPartition], int] = {}  # pending: the window's first offset
        self.joined: dict[tuple[str, TopicPartition], int] = {}  # caught up: the offset it joined the batches at

    def _catchup(self, model) -> CatchUp:
        if model.version not in self._catchups:
            self._catchups[model.version] = CatchUp(self._open, self.metrics, model.version)
            self._models[model.version] = model
        return self._catchups[model.version]

    def begin(self, model, partition: Partition, resume_at: int | None = None) -> bool:
        """Start warming ``model`` on ``partition`` (its rows there are dropped already; the primary resumes at
        offset ``resume_at``); False: the window holds no record (nothing to replay), the candidate starts empty
        at the resume point. Broker errors raise (the restore is retried)."""
        catchup, tp = self._catchup(model), partition.tp
        catchup.cancel(tp)
        self._start.pop((model.version, tp), None)
        self.joined.pop((model.version, tp), None)
        start = catchup.start_offsets([tp], int(time.time() * 1000), self.cfg.warmup).get(tp)
        if start is None:
            return False
        catchup.begin(tp, start)
        self._start[(model.version, tp)] = start
        log.info(f"candidate {model.version} warms up on {partition.where}: replaying {self.cfg.warmup} of input "
                 f"from offset {start} ({max(0, (resume_at or start) - start)} records before the resume point, "
                 f"then up to the primary's position)", extra={
                     "partition": partition.where, "model_version": model.version, "start_offset": start,
                     "records": max(0, (resume_at or start) - start)})
        return True

    def waiting(self, version: str) -> set[int]:
        """The partition ids (state table) ``version`` is still catching up on: not stepped by the batches."""
        return {self.partitions.part_id(tp.topic, tp.partition) for v, tp in list(self._start) if v == version}

    def cancel(self, tp: TopicPartition) -> None:
        """Stop every candidate's catch-up of ``tp`` (its records already stepped stay in the candidate's rows,
        which the caller drops)."""
        for version, catchup in self._catchups.items():
            self.joined.pop((version, tp), None)
            if self._start.pop((version, tp), None) is not None:
                catchup.cancel(tp)

    def advance(self, max_records: int) -> None:
        """One bounded round of every pending catch-up (loop thread, between batches); partitions that reached
        the primary's stepped position join."""
        for version, catchup in self._catchups.items():
            targets = {}
            for (v, tp), start in self._start.items():
                p = self.partitions.find(tp)
                if v == version and p is not None and p.stepped_to is not None and p.stepped_to >= start:
                    targets[tp] = p.stepped_to  # before the window's start: wait for the primary to pass it
            if not targets:
                continue
            model = self._models[version]
            for tp in catchup.advance(targets, lambda recs, m=model: self._step(m, recs), max_records):
                self._start.pop((version, tp), None)
                self.joined[(version, tp)] = targets[tp]
                log.info(f"candidate {version} joined {tp.topic}/{tp.partition}: warm, stepped with the primary "
                         f"from offset {targets[tp]}", extra={"partition": f"{tp.topic}/{tp.partition}",
                                                              "model_version": version, "offset": targets[tp]})

    def _step(self, model, records: list) -> None:
        """Decode the records as ``batch.step_batch`` does and step the candidate's forecaster alone."""
        n = len(records)
        part = np.fromiter((r.partition for r in records), dtype=np.int64, count=n)
        offs = np.fromiter((r.offset for r in records), dtype=np.int64, count=n)
        part_ids = self.partitions.partition_ids([r.topic for r in records], part)
        stamps = np.fromiter((r.timestamp for r in records), dtype=np.int64, count=n)
        decoded = decode_records([r.key for r in records], [r.value for r in records], stamps, part_ids, offs)
        model.forecaster.step(decoded.ticks)

    def close(self) -> None:
        for catchup in self._catchups.values():
            catchup.close()
        self._start.clear()
