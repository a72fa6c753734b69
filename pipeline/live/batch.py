"""One micro-batch through the operator: decode the records, step the valid ticks, find the dead letters
(decode failures, operator refusals) and the records a recovery replays silently."""

from __future__ import annotations

import time

import numpy as np

from operators.forecaster import Forecaster
from operators.validation import reject_labels
from pipeline.live import status
from pipeline.live.inflight import Batch
from pipeline.live.partitions import Partitions
from pipeline.live.status import RunStats
from pipeline.metrics import Metrics
from pipeline.wire.outgoing import DeadLetter
from pipeline.wire.ticks import decode_records


def step_batch(records: list, received_at: list[float], partitions: Partitions, forecaster: Forecaster,
               metrics: Metrics, stats: RunStats) -> Batch:
    """Decode the records, step the operator on the valid ticks; dead letters and silent records found."""
    n = len(records)
    part = np.fromiter((r.partition for r in records), dtype=np.int64, count=n)
    offs = np.fromiter((r.offset for r in records), dtype=np.int64, count=n)
    part_ids = partitions.partition_ids([r.topic for r in records], part)
    status.count_received(metrics, partitions, part_ids)

    stamps = np.fromiter((r.timestamp for r in records), dtype=np.int64, count=n)
    # The record timestamp is "now" for the timestamp policy.
    decoded = decode_records([r.key for r in records], [r.value for r in records], stamps, part_ids, offs)
    ticks, idx = decoded.ticks, decoded.index
    # Records a recovery replays (before the committed offset) update state and emit nothing.
    silent = partitions.silent_mask(part_ids, offs, stamps)
    stepped = partitions.stepped(part_ids, offs)  # before the step: one that raises leaves the state dirty
    t_step = time.perf_counter()
    result = forecaster.step(ticks)
    metrics.step_seconds.observe(time.perf_counter() - t_step)

    # Dead letters: decode failures and operator refusals, with the original bytes.
    dead = [(i, reason.label, detail) for i, reason, detail in decoded.rejected]
    bad_rows = np.flatnonzero(result.reasons)
    dead += [(int(i), label, "") for i, label in zip(idx[bad_rows], reject_labels(result.reasons[bad_rows]))]
    rows, forecasts = result.rows, result.forecasts
    if silent is not None:
        loud = ~silent[idx[rows]]
        rows, forecasts = rows[loud], forecasts[loud]
        dead = [d for d in dead if not silent[d[0]]]
        n_silent = int(silent.sum())
        stats.replayed += n_silent
        metrics.replayed_ticks.inc(n_silent)
    return Batch(records, received_at, ticks, part_ids, offs, idx, result, rows, forecasts,
                 [DeadLetter(records[i], reason, detail) for i, reason, detail in dead], silent, stepped)
