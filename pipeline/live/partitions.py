"""Per-partition bookkeeping: which partitions this process owns, where each one's state stands, what is
replayed silently, and which offsets a batch commits.

Partition ids in the state table carry the topic's index in the high bits, so two input topics' partition 0
never share state rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline import logs
from pipeline.wire.ticks import PARTITION_MASK, TOPIC_SHIFT

log = logs.get("run")


@dataclass
class PartitionState:
    """Where one owned partition's state stands. None: not known (dropped together on revoke or restore)."""

    next_offset: int | None = None  # the state reflects every record before this offset
    checkpointed: int | None = None  # offset of the last checkpoint written or restored
    replay_until: int | None = None  # records before this offset: step, do not emit
    replay_until_ts: int | None = None  # fresh warm-up: records stamped before this (ms) are silent
    lag: int | None = None  # last lag seen (status line, gauges)

    @property
    def replaying(self) -> bool:
        return self.replay_until is not None or self.replay_until_ts is not None


class Partitions:
    """The partitions this process owns and the state of each. ``dirty``: state stepped past the committed
    offsets (between a batch's step and its commit, or a rewind that did not finish)."""

    def __init__(self, input_topics: list[str]):
        self.input_topics = list(input_topics)
        self.assigned: set[TopicPartition] = set()
        self.revoked: set[TopicPartition] = set()  # since the last poll: records fetched for them are dropped
        self.to_restore: set[TopicPartition] = set()  # assigned, restored on the loop's thread after the poll
        self.states: dict[TopicPartition, PartitionState] = {}
        self.dirty = False

    def __getitem__(self, tp: TopicPartition) -> PartitionState:
        """The state of ``tp``, created empty on first use."""
        st = self.states.get(tp)
        if st is None:
            st = self.states[tp] = PartitionState()
        return st

    def get(self, tp: TopicPartition) -> PartitionState:
        """The state of ``tp`` as known (empty when nothing is), without creating an entry."""
        return self.states.get(tp) or PartitionState()

    def forget(self, tp: TopicPartition) -> None:
        """Nothing is known about ``tp`` any more (revoked, or about to be restored anew)."""
        self.states.pop(tp, None)

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

    # -- replay -------------------------------------------------------------------------------
    def silent_mask(self, part_ids: np.ndarray, offs: np.ndarray, stamps: np.ndarray) -> np.ndarray | None:
        """Records a recovery or warm-up replays: they update state and emit nothing."""
        replaying = {tp: st for tp, st in self.states.items() if st.replaying}
        if not replaying:
            return None
        silent = np.zeros(len(part_ids), dtype=bool)
        for p in np.unique(part_ids).tolist():
            tp = self.tp_of(p)
            st = replaying.get(tp)
            if st is None:
                continue
            mine = part_ids == p
            if st.replay_until is not None:
                silent[mine] = offs[mine] < st.replay_until
            else:
                silent[mine] = stamps[mine] < st.replay_until_ts
                if not silent[mine].all():  # the first record of the live era ends the warm-up
                    st.replay_until_ts = None
                    log.info("warm-up done; emitting", extra={"partition": f"{tp.topic}/{tp.partition}"})
        return silent if silent.any() else None

    def end_replays(self) -> None:
        for tp, st in list(self.states.items()):
            reached = st.next_offset if st.next_offset is not None else -1
            if st.replay_until is not None and reached >= st.replay_until:
                until, st.replay_until = st.replay_until, None
                log.info("replay done; emitting", extra={"partition": f"{tp.topic}/{tp.partition}", "offset": until})

    # -- offsets ------------------------------------------------------------------------------
    def last_offsets(self, part_ids: np.ndarray, offs: np.ndarray) -> dict[TopicPartition, int]:
        """Highest offset per input partition among these records."""
        if len(part_ids) == 0:
            return {}
        order = np.lexsort((offs, part_ids))
        last = np.flatnonzero(np.diff(part_ids[order], append=-1))
        return {self.tp_of(int(p)): int(o) for p, o in zip(part_ids[order][last], offs[order][last])}

    def advance(self, part_ids: np.ndarray, offs: np.ndarray) -> None:
        """The state now reflects these records."""
        for tp, last in self.last_offsets(part_ids, offs).items():
            st = self[tp]
            st.next_offset = max(st.next_offset if st.next_offset is not None else -1, last + 1)

    def commit_offsets(self, part_ids: np.ndarray, offs: np.ndarray, mask: np.ndarray | None) -> dict:
        """Offsets to commit (next to read) for the assigned partitions of the records in ``mask``."""
        if mask is not None:
            part_ids, offs = part_ids[mask], offs[mask]
        return {tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in self.last_offsets(part_ids, offs).items()
                if tp in self.assigned}


def describe(partitions) -> str:
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in sorted(partitions))
