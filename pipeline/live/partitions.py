"""The partitions this process owns, each a ``Partition`` that owns where its state stands.

A partition's lifecycle, and the only ways its state changes:

1. ``Partitions.assign``: owned, not restored yet (records fetched for it are dropped until it is);
2. ``Partition.resume``: restored from a plan (``restore_plan``): where its state stands, what is replayed
   silently, which checkpoint it came from;
3. ``Partitions.stepped`` then ``Partitions.settled``: a batch stepped its records, then was published and
   committed (settled);
4. ``Partition.snapshot``: the offset a checkpoint of its state carries (``checkpointed_at`` once written);
5. ``Partitions.revoke``: no longer owned.

"Dirty" (state stepped past the committed offsets) is derived from these facts: a partition is dirty while
a batch that stepped it is not settled.

Partition ids in the state table carry the topic's index in the high bits, so two input topics' partition 0
never share state rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline import logs
from pipeline.wire.ticks import PARTITION_MASK, TOPIC_SHIFT

log = logs.get("run")


@dataclass(frozen=True)
class Resume:
    """Where a restored partition's state stands."""

    at: int | None  # the state reflects every record before this offset (None: empty state, no record yet)
    checkpointed: int | None = None  # offset of the checkpoint it was restored from
    emit_from: int | None = None  # records before this offset are replayed silently (step, do not emit)
    emit_from_ts: int | None = None  # fresh warm-up: records stamped before this (ms) are silent


class Partition:
    """One owned input partition and where its state stands; written only by its own methods (and the
    ``Partitions`` that owns it)."""

    def __init__(self, tp: TopicPartition, part_id: int):
        self.tp = tp
        self.part_id = part_id  # its rows' partition id in the state table
        self._resumed = False  # restored since it was assigned
        self._stepped_to: int | None = None  # the state reflects every record before this offset
        self._settled_to: int | None = None  # every batch that stepped records before this offset is settled
        self._checkpointed: int | None = None  # offset of the last checkpoint written or restored
        self._replay_until: int | None = None  # records before this offset: step, do not emit
        self._replay_until_ts: int | None = None  # fresh warm-up: records stamped before this (ms) are silent
        self._lag: int | None = None  # last lag seen (status line, gauges)

    def __repr__(self) -> str:
        return (f"Partition({self.where}, stepped_to={self._stepped_to}, settled_to={self._settled_to}, "
                f"checkpointed={self._checkpointed}, replay_until={self._replay_until})")

    # Read-only views: the methods below are the only writers.
    resumed = property(lambda self: self._resumed)
    stepped_to = property(lambda self: self._stepped_to)
    settled_to = property(lambda self: self._settled_to)
    checkpointed = property(lambda self: self._checkpointed)
    replay_until = property(lambda self: self._replay_until)
    lag = property(lambda self: self._lag)

    @property
    def where(self) -> str:
        return f"{self.tp.topic}/{self.tp.partition}"

    @property
    def replaying(self) -> bool:
        return self._replay_until is not None or self._replay_until_ts is not None

    @property
    def dirty(self) -> bool:
        """Stepped past its settled offsets: a batch that stepped it is not published and committed yet."""
        return self._stepped_to != self._settled_to

    # -- lifecycle ----------------------------------------------------------------------------
    def restart(self) -> None:
        """A restore begins: whatever the state reflected before is gone (the operator dropped its rows)."""
        self._resumed = False
        self._stepped_to = self._settled_to = self._checkpointed = self._replay_until = self._replay_until_ts = None

    def resume(self, resume: Resume) -> None:
        """Restored: the state reflects the records before ``resume.at``; those before ``emit_from`` (or
        stamped before ``emit_from_ts``) are replayed silently."""
        self._resumed = True
        self._stepped_to = self._settled_to = resume.at
        self._checkpointed = resume.checkpointed
        self._replay_until = resume.emit_from if (
            resume.emit_from is not None and resume.at is not None and resume.emit_from > resume.at) else None
        self._replay_until_ts = resume.emit_from_ts

    def step(self, last_offset: int) -> None:
        """A batch steps this partition's records up to ``last_offset``."""
        self._stepped_to = _after(self._stepped_to, last_offset)

    def settle(self, last_offset: int) -> None:
        """The batch that stepped records up to ``last_offset`` is published and committed."""
        self._settled_to = _after(self._settled_to, last_offset)

    def silent(self, offs: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Which of these records (this partition's, in order) a recovery or warm-up replays. The first record
        of the live era ends a warm-up."""
        if self._replay_until is not None:
            return offs < self._replay_until
        if self._replay_until_ts is None:
            return np.zeros(len(offs), dtype=bool)
        silent = stamps < self._replay_until_ts
        if not silent.all():
            self._replay_until_ts = None
            log.info("warm-up done; emitting", extra={"partition": self.where})
        return silent

    def end_replay(self) -> None:
        """A replay whose records are all stepped is over."""
        reached = self._stepped_to if self._stepped_to is not None else -1
        if self._replay_until is not None and reached >= self._replay_until:
            until, self._replay_until = self._replay_until, None
            log.info("replay done; emitting", extra={"partition": self.where, "offset": until})

    def snapshot(self) -> int | None:
        """The offset a checkpoint of this state carries now (the next to read: every record before it is in
        the state), or None when there is nothing to checkpoint: no state, stepped past its settled offsets,
        mid-replay, or unchanged since its last checkpoint."""
        if self._stepped_to is None or self.dirty or self.replaying or self._checkpointed == self._stepped_to:
            return None
        return self._stepped_to

    def checkpointed_at(self, offset: int) -> None:
        """A checkpoint of this partition at ``offset`` is written."""
        self._checkpointed = offset

    def saw_lag(self, lag: int) -> None:
        self._lag = lag


def _after(offset: int | None, last: int) -> int:
    return max(offset if offset is not None else -1, last + 1)


class Partitions:
    """The partitions this process owns, by ``TopicPartition``, and the partitions revoked since the last poll
    (records fetched for them are dropped). ``dirty``: some partition's state is stepped past its committed
    offsets."""

    def __init__(self, input_topics: list[str]):
        self.input_topics = list(input_topics)
        self._owned: dict[TopicPartition, Partition] = {}
        self._revoked: set[TopicPartition] = set()

    def find(self, tp: TopicPartition) -> Partition | None:
        """The partition ``tp`` itself (its methods change it), or None when it is not owned."""
        return self._owned.get(tp)

    def __contains__(self, tp: TopicPartition) -> bool:
        return tp in self._owned

    def __iter__(self) -> Iterator[Partition]:
        return iter(list(self._owned.values()))

    def __len__(self) -> int:
        return len(self._owned)

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned)

    @property
    def dirty(self) -> bool:
        return any(p.dirty for p in self._owned.values())

    # -- ownership ----------------------------------------------------------------------------
    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Owned from now on, each to be restored before its records are kept."""
        for tp in tps:
            self._owned[tp] = Partition(tp, self.part_id(tp.topic, tp.partition))
            self._revoked.discard(tp)

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """No longer owned; records already fetched for them are dropped (``keep_ready``)."""
        for tp in tps:
            self._owned.pop(tp, None)
            self._revoked.add(tp)

    def pending(self) -> list[TopicPartition]:
        """Owned and not restored yet, in order."""
        return sorted(tp for tp, p in self._owned.items() if not p.resumed)

    def keep_ready(self, records: list, received: list[float]) -> tuple[list, list[float]]:
        """Polled records (and their receipt times) without those of partitions revoked since the last call or
        not restored yet: fetched before a rebalance, the new owner (or the restore's seek) reads them again."""
        drop, self._revoked = self._revoked | set(self.pending()), set()
        if not drop or not records:
            return records, received
        kept = [(r, t) for r, t in zip(records, received) if TopicPartition(r.topic, r.partition) not in drop]
        return [r for r, _ in kept], [t for _, t in kept]

    # -- ids ----------------------------------------------------------------------------------
    def part_id(self, topic: str, partition: int) -> int:
        return (self.input_topics.index(topic) << TOPIC_SHIFT) | partition

    def tp_of(self, part_id: int) -> TopicPartition:
        return TopicPartition(self.input_topics[part_id >> TOPIC_SHIFT], part_id & PARTITION_MASK)

    def partition_ids(self, topics: list[str], part: np.ndarray) -> np.ndarray:
        """Partition ids of records given their topics and partitions."""
        n = len(part)
        topic_idx = np.fromiter((self.input_topics.index(t) for t in topics), dtype=np.int64, count=n) \
            if len(self.input_topics) > 1 else np.zeros(n, dtype=np.int64)
        return (topic_idx << TOPIC_SHIFT) | part

    # -- batches ------------------------------------------------------------------------------
    def silent_mask(self, part_ids: np.ndarray, offs: np.ndarray, stamps: np.ndarray) -> np.ndarray | None:
        """Records a recovery or warm-up replays: they update state and emit nothing."""
        if not any(p.replaying for p in self._owned.values()):
            return None
        silent = np.zeros(len(part_ids), dtype=bool)
        for pid in np.unique(part_ids).tolist():
            p = self._owned.get(self.tp_of(pid))
            if p is not None and p.replaying:
                mine = part_ids == pid
                silent[mine] = p.silent(offs[mine], stamps[mine])
        return silent if silent.any() else None

    def stepped(self, part_ids: np.ndarray, offs: np.ndarray) -> dict[TopicPartition, int]:
        """A batch steps these records (called before the step: one that raises leaves the state dirty). The
        highest offset stepped per partition, which ``settled`` takes once the batch is settled."""
        last_offsets = self.last_offsets(part_ids, offs)
        for tp, last in last_offsets.items():
            if (p := self._owned.get(tp)) is not None:
                p.step(last)
        return last_offsets

    def settled(self, last_offsets: dict[TopicPartition, int], replayed: bool = False) -> None:
        """The batch that stepped up to these offsets is published and committed; ``replayed``: it replayed
        some records silently (a replay stepped to its end is over)."""
        for tp, last in last_offsets.items():
            if (p := self._owned.get(tp)) is not None:
                p.settle(last)
        if replayed:
            for p in self._owned.values():
                p.end_replay()

    def last_offsets(self, part_ids: np.ndarray, offs: np.ndarray) -> dict[TopicPartition, int]:
        """Highest offset per input partition among these records."""
        if len(part_ids) == 0:
            return {}
        order = np.lexsort((offs, part_ids))
        last = np.flatnonzero(np.diff(part_ids[order], append=-1))
        return {self.tp_of(int(p)): int(o) for p, o in zip(part_ids[order][last], offs[order][last])}

    def commit_offsets(self, part_ids: np.ndarray, offs: np.ndarray, mask: np.ndarray | None) -> dict:
        """Offsets to commit (next to read) for the owned partitions of the records in ``mask``."""
        if mask is not None:
            part_ids, offs = part_ids[mask], offs[mask]
        return {tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in self.last_offsets(part_ids, offs).items()
                if tp in self._owned}


def describe(partitions) -> str:
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in sorted(partitions))
