"""Batches stepped but not yet committed, oldest first, and the batch size the latency budget allows; what a
stepped batch holds (``Batch``) and what it sends and commits (``Outbox``).

Pipelining (``max_batches_in_flight`` > 1): batch N's sends are issued (at-least-once) or its transaction's
commit is started (exactly-once), then batch N+1 is polled, decoded and stepped while N's acknowledgements
arrive. Batches are settled strictly oldest first, so offsets are committed in input order whatever order
the acknowledgements come back in; a batch is only ever settled after every batch before it.

What a batch's delivery holds while in flight (``Pending``), how many batches may be in flight and what a
revoke does to them belong to the delivery strategy (``pipeline.live.delivery``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from operators.forecaster import StepResult
from pipeline.wire.outgoing import DeadLetter, Outgoing


@dataclass
class Batch:
    """One micro-batch after the operator: the records, their decoded ticks and what came out."""

    records: list
    received_at: list[float]
    ticks: pa.Table  # decoded valid ticks, with partition id and offset
    part_ids: np.ndarray  # partition id of each record
    offs: np.ndarray  # offset of each record
    idx: np.ndarray  # record index of each decoded tick
    result: StepResult
    rows: np.ndarray  # tick rows with a forecast to emit (not silent)
    forecasts: np.ndarray
    dead: list[DeadLetter]
    silent: np.ndarray | None  # records replayed to rebuild state (per record), None: none
    stepped: dict  # TopicPartition -> highest offset stepped (``Partitions.settled`` once settled)
    shadows: list = field(default_factory=list)  # each candidate's forecasts (``models.Shadow``)


@dataclass
class Outbox:
    """What one batch sends and commits: forecast messages, then dead letters, and the input offsets."""

    forecasts: list[Outgoing]
    dead: list[DeadLetter]
    records: list  # the batch's input records (dead letters' cut levels are forgotten once delivered)
    offsets: dict


class Pending(Protocol):
    """A batch's delivery under way (the strategy's own: sends issued, or an open transaction)."""

    def acknowledged(self) -> bool: ...


@dataclass
class InFlightBatch:
    """One batch between its dispatch and its settling: what the delivery strategy needs to finish it
    (``outbox``, ``pending``) and what the runner accounts afterwards."""

    outbox: Outbox  # its offsets shrink on revoke
    batch: Batch
    out_rows: object
    started: float  # perf_counter at the batch's start (batch duration)
    pending: Pending

    def acknowledged(self) -> bool:
        """``settle`` would not wait: every send answered, or the transaction committed."""
        return self.pending.acknowledged()


class InFlight:
    """The batches in flight, oldest first; at most ``depth`` stepped and not yet committed."""

    def __init__(self, depth: int):
        self.depth = depth
        self.batches: deque[InFlightBatch] = deque()

    def __len__(self) -> int:
        return len(self.batches)

    def push(self, entry: InFlightBatch) -> None:
        assert len(self.batches) < self.depth, "more batches in flight than max_batches_in_flight"
        self.batches.append(entry)

    def oldest(self) -> InFlightBatch:
        return self.batches[0]

    def pop(self) -> InFlightBatch:
        return self.batches.popleft()

    def room_for_next(self) -> bool:
        """Whether one more batch may be stepped and dispatched without settling the oldest first."""
        return len(self.batches) < self.depth - 1

    def ready(self) -> bool:
        """The oldest batch can be settled without waiting."""
        return bool(self.batches) and self.batches[0].acknowledged()

    def forget_partitions(self, partitions: Iterable) -> None:
        """Revoked: never commit these partitions' offsets for a batch still in flight."""
        gone = set(partitions)
        for entry in self.batches:
            entry.outbox.offsets = {tp: o for tp, o in entry.outbox.offsets.items() if tp not in gone}

    def clear(self) -> list[InFlightBatch]:
        """Abandon every batch in flight (their state was rewound)."""
        out = list(self.batches)
        self.batches.clear()
        return out


class BatchSizer:
    """A batch's size and its collection window, from the latency budget ``max_batch_ms`` and measured times.

    - ``limit``: at most what the loop steps within the budget at its exponentially weighted average of step
      seconds per tick (decoding the records and the operator's step), so a slow batch makes the next ones
      smaller instead of letting them fill to ``max_batch_ticks`` while it ran. Never below a tenth of
      ``max_batch_ticks``: on an overloaded machine, fixed per-batch costs (commit round trip, poll) would
      otherwise take over as batches shrink.
    - ``close_at``: collecting stops once the batch's own work (decode, step, encode, the sends issued; its
      average per tick) would end past the budget counted from the first record's receipt: the first tick's
      wait for its forecast is the budget plus the acknowledgement, not the budget plus the batch's work.
    """

    ALPHA = 0.2

    def __init__(self, max_batch_ticks: int, max_batch_ms: int):
        self.cap = max_batch_ticks
        self.budget_s = max_batch_ms / 1000
        self.floor = max(1, max_batch_ticks // 10)
        self.seconds_per_tick: float | None = None  # decode and step
        self.work_seconds_per_tick: float | None = None  # decode, step, encode, sends issued

    def observe(self, ticks: int, seconds: float, work_seconds: float | None = None) -> None:
        """A batch of ``ticks`` stepped in ``seconds``, dispatched after ``work_seconds`` of its own work."""
        if ticks <= 0 or seconds < 0:
            return
        self.seconds_per_tick = _averaged(self.seconds_per_tick, seconds / ticks, self.ALPHA)
        if work_seconds is not None and work_seconds >= seconds:
            self.work_seconds_per_tick = _averaged(self.work_seconds_per_tick, work_seconds / ticks, self.ALPHA)

    def limit(self) -> int:
        """Ticks the next batch may hold."""
        spt = self.seconds_per_tick
        if not spt or self.budget_s >= spt * self.cap:
            return self.cap
        return max(self.floor, int(self.budget_s / spt))

    def close_at(self, first_received: float, ticks: int) -> float:
        """When to stop collecting a batch whose first record came at ``first_received`` and that holds
        ``ticks`` so far (the clock of ``first_received``)."""
        return first_received + self.budget_s - (self.work_seconds_per_tick or 0.0) * ticks


def _averaged(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else previous + alpha * (value - previous)
