"""The partition objects: their lifecycle is the only way their state changes, "dirty" follows from what was
stepped and what was settled, and a snapshot is only ever of settled state."""

from __future__ import annotations

import logging
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.structs import TopicPartition

from pipeline.live.partitions import Partitions, Resume
from tests.support.strategies import SETTINGS

TP0, TP1, TP2 = (TopicPartition("ticks", p) for p in range(3))
Record = namedtuple("Record", "topic partition offset")


def owned(*tps) -> Partitions:
    parts = Partitions(["ticks"])
    parts.assign(tps)
    for tp in tps:
        parts.find(tp).resume(Resume(0))
    return parts


def ids(parts: Partitions, tps_offsets) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([parts.part_id(tp.topic, tp.partition) for tp, _ in tps_offsets], dtype=np.int64),
            np.array([o for _, o in tps_offsets], dtype=np.int64))


def test_the_collection_hands_out_the_partition_itself_and_nothing_for_one_not_owned():
    parts = owned(TP0)
    parts.find(TP0).step(9)
    assert parts.find(TP0).stepped_to == 10, "what is written through the partition stays written"
    assert parts.find(TP1) is None and TP1 not in parts, "not owned: nothing to write to"
    with pytest.raises(AttributeError):
        parts.find(TP0).stepped_to = 3  # read-only: only its lifecycle methods change it
    parts.revoke([TP0])
    assert parts.find(TP0) is None and len(parts) == 0


def test_records_of_revoked_and_not_yet_restored_partitions_are_dropped_once():
    parts = owned(TP0, TP1)
    parts.assign([TP2])  # not restored yet
    parts.revoke([TP1])
    records = [Record("ticks", p, o) for p, o in [(0, 1), (1, 1), (2, 1), (0, 2)]]
    kept, times = parts.keep_ready(records, [0.0, 1.0, 2.0, 3.0])
    assert [(r.partition, r.offset) for r in kept] == [(0, 1), (0, 2)] and times == [0.0, 3.0]
    parts.find(TP2).resume(Resume(0))
    kept, _ = parts.keep_ready(records, [0.0] * 4)
    assert [r.partition for r in kept] == [0, 1, 2, 0], "a revoke drops the records of one poll only"


def test_a_snapshot_is_taken_of_settled_state_that_moved_since_its_checkpoint_and_not_mid_replay(caplog):
    parts = Partitions(["ticks"])
    parts.assign([TP0])
    p = parts.find(TP0)
    assert p.snapshot() is None, "no state yet"
    p.resume(Resume(100, checkpointed=100, emit_from=300))
    assert p.replay_until == 300 and p.snapshot() is None
    stepped = parts.stepped(*ids(parts, [(TP0, o) for o in range(100, 300)]))
    assert stepped == {TP0: 299}
    assert parts.dirty and p.snapshot() is None, "stepped, not settled"
    with caplog.at_level(logging.INFO, logger="tickcast.run"):
        parts.settled(stepped, replayed=True)
    assert "replay done; emitting" in caplog.messages
    assert not parts.dirty and p.snapshot() == 300
    p.checkpointed_at(300)
    assert p.snapshot() is None, "unchanged since its checkpoint"


def test_a_warm_up_of_a_fresh_group_ends_at_the_first_record_of_the_live_era(caplog):
    parts = Partitions(["ticks"])
    parts.assign([TP0])
    parts.find(TP0).resume(Resume(0, emit_from_ts=1000))
    pid, offs = ids(parts, [(TP0, 0), (TP0, 1), (TP0, 2)])
    assert parts.silent_mask(pid, offs, np.array([10, 20, 30])).tolist() == [True, True, True]
    with caplog.at_level(logging.INFO, logger="tickcast.run"):
        assert parts.silent_mask(pid, offs + 3, np.array([40, 1000, 50])).tolist() == [True, False, True]
    assert "warm-up done; emitting" in caplog.messages and not parts.find(TP0).replaying
    assert parts.silent_mask(pid, offs + 6, np.array([60, 70, 80])) is None, "over: every later record emits"


def test_a_restore_forgets_where_the_state_stood():
    parts = owned(TP0)
    parts.find(TP0).step(41)
    parts.find(TP0).restart()
    assert (parts.find(TP0).stepped_to, parts.find(TP0).settled_to, parts.find(TP0).resumed) == (None, None, False)
    assert parts.pending() == [TP0] and not parts.dirty


@st.composite
def pipelined_batches(draw):
    """Batches over three partitions (each a few records per partition, offsets rising), and an order of
    steps and settles: batches are stepped in order, settled in order, at most ``depth`` stepped and not
    settled at a time."""
    n = draw(st.integers(1, 8))
    depth = draw(st.integers(1, 3))
    next_offset = {tp: 0 for tp in (TP0, TP1, TP2)}
    batches = []
    for _ in range(n):
        batch = []
        for tp in draw(st.lists(st.sampled_from([TP0, TP1, TP2]), min_size=1, max_size=3, unique=True)):
            k = draw(st.integers(1, 4))
            batch += [(tp, o) for o in range(next_offset[tp], next_offset[tp] + k)]
            next_offset[tp] += k
        batches.append(batch)
    events, stepped, settled = [], 0, 0
    while settled < n:
        can_step = stepped < n and stepped - settled < depth
        if can_step and (stepped == settled or draw(st.booleans())):
            events.append(("step", stepped))
            stepped += 1
        else:
            events.append(("settle", settled))
            settled += 1
    return batches, events


@SETTINGS
@given(pipelined_batches())
def test_dirty_is_exactly_a_batch_stepped_and_not_settled(case):
    batches, events = case
    parts = owned(TP0, TP1, TP2)
    open_batches: dict[int, dict] = {}  # stepped, not settled: what each stepped
    for kind, i in events:
        if kind == "step":
            open_batches[i] = parts.stepped(*ids(parts, batches[i]))
        else:
            parts.settled(open_batches.pop(i))
        touched = {tp for b in open_batches for tp, _ in batches[b]}
        assert parts.dirty == bool(open_batches)
        for tp in (TP0, TP1, TP2):
            assert parts.find(tp).dirty == (tp in touched)
            assert (parts.find(tp).snapshot() is None) or tp not in touched, "a snapshot of unsettled state"
    final = {tp: max((o for b in batches for t, o in b if t == tp), default=-1) + 1 for tp in (TP0, TP1, TP2)}
    assert {tp: parts.find(tp).snapshot() for tp in final} == final, "all settled: each at the record after its last"
