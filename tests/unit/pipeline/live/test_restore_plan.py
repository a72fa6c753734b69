"""The restore planner on its own: what is known in, a plan out, no broker and no store. Each outcome by
example, and for any facts the one promise a restore makes: once resumed, the partition replays silently
up to the committed offset and emits every record from it, none twice and none skipped."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from kafka.structs import TopicPartition

from pipeline.live.partitions import Partition
from pipeline.live.restore_plan import Known, plan
from tests.support.strategies import SETTINGS

TP = TopicPartition("ticks", 0)


def never():
    raise AssertionError("asked, though the plan does not depend on it")


def checkpoint(offset: int, created_at: float = 1000.0):
    return SimpleNamespace(offset=offset, created_at=created_at)


def known(**facts) -> Known:
    return Known(**{"where": "ticks/0", "committed": None, "checkpoints_on": True, "log_start": never,
                    "warmup_start": never, **facts})


def messages(p) -> list[tuple[int, str]]:
    return [(n.level, n.message) for n in p.notes]


def test_a_checkpoint_behind_the_committed_offset_is_replayed_silently_up_to_it():
    p = plan(known(committed=300, checkpoint=checkpoint(200), checkpoint_rows=7, log_start=lambda: 0, now_s=1010.0))
    assert (p.source, p.seek) == ("checkpoint", 200)
    assert (p.resume.at, p.resume.checkpointed, p.resume.emit_from) == (200, 200, 300)
    (note,) = p.notes
    assert note.message == "partition restored from checkpoint"
    assert {k: note.extra[k] for k in ("rows", "checkpoint_offset", "committed", "replay", "age_s")} == \
        {"rows": 7, "checkpoint_offset": 200, "committed": 300, "replay": 100, "age_s": 10.0}


def test_a_checkpoint_at_the_committed_offset_asks_nothing_more():
    p = plan(known(committed=300, checkpoint=checkpoint(300)))
    assert (p.source, p.seek, p.resume.emit_from) == ("checkpoint", 300, 300)


def test_records_retention_deleted_are_said_missing_and_the_replay_starts_at_the_log_start():
    p = plan(known(committed=300, checkpoint=checkpoint(200), log_start=lambda: 250))
    assert p.seek == 250 and p.resume.at == 250 and p.resume.checkpointed == 200
    assert [lvl for lvl, _ in messages(p)] == [logging.WARNING, logging.INFO]
    assert "deleted by retention" in p.notes[0].message and p.notes[0].extra["missing"] == 50
    behind = plan(known(committed=300, checkpoint=checkpoint(200), log_start=lambda: 400))
    assert behind.seek == 300 and behind.resume.at == 300


def test_without_a_committed_offset_checkpoints_are_not_used_and_a_new_group_starts_empty():
    p = plan(known(committed=None, auto_offset_reset="earliest"))
    assert (p.source, p.seek, p.resume.at) == ("empty", "beginning", None)
    assert messages(p) == [
        (logging.INFO, "group has no committed offset for this partition; not using checkpoints"),
        (logging.INFO, "partition assigned with EMPTY state: its instruments start from zero state")]
    assert p.notes[1].extra["why"] == "new group"
    assert plan(known(committed=None, auto_offset_reset="latest", checkpoints_on=False)).seek == "end"


def test_checkpoints_on_and_none_usable_replays_the_partition_from_its_start():
    p = plan(known(committed=300, log_start=lambda: 20))
    assert (p.source, p.seek, p.resume.at, p.resume.emit_from) == ("replay_from_start", 20, 20, 300)
    assert messages(p) == [(logging.WARNING, "no usable checkpoint; rebuilding state by replaying the partition "
                                             "from its start")]
    gone = plan(known(committed=300, log_start=lambda: 300))  # retention left nothing before the commit
    assert (gone.source, gone.seek) == ("empty", 300)
    assert gone.notes[-1].level == logging.WARNING and gone.notes[-1].extra["why"] == "no usable checkpoint"


def test_checkpoints_off_start_empty_loudly_at_the_committed_offset():
    p = plan(known(committed=300, checkpoints_on=False))
    assert (p.source, p.seek, p.resume.at) == ("empty", 300, None)
    assert p.notes[-1].level == logging.WARNING
    assert p.notes[-1].extra["why"] == "checkpoints are off (checkpoint_uri)"


def test_a_warm_up_replays_its_window_silently_and_a_fresh_group_emits_by_record_time():
    p = plan(known(committed=300, warmup="1h", warmup_start=lambda: 120))
    assert (p.source, p.seek, p.resume.at, p.resume.emit_from, p.resume.emit_from_ts) == \
        ("warmup", 120, 120, 300, None)
    fresh = plan(known(committed=None, warmup="1h", warmup_start=lambda: 5, started_ms=777))
    assert (fresh.source, fresh.seek, fresh.resume.emit_from, fresh.resume.emit_from_ts) == ("warmup", 5, None, 777)
    assert fresh.notes[-1].extra["emit_from"] == "record timestamp 777 ms"


def test_a_warm_up_with_nothing_to_replay_falls_through_to_the_next_outcome():
    empty_window = plan(known(committed=300, warmup="1h", warmup_start=lambda: None, log_start=lambda: 0))
    assert empty_window.source == "replay_from_start"
    assert "warm-up window holds no records" in empty_window.notes[0].message
    assert plan(known(committed=300, warmup="1h", warmup_start=lambda: 300, log_start=lambda: 0)).source == \
        "replay_from_start"
    assert plan(known(committed=0, warmup="1h")).source == "empty", "committed 0: nothing before it, not asked"


@st.composite
def facts(draw):
    committed = draw(st.none() | st.integers(0, 500))
    log_start = draw(st.integers(0, 600))
    ck = None
    if committed is not None and draw(st.booleans()):
        ck = checkpoint(draw(st.integers(0, committed)))
    found = draw(st.none() | st.integers(log_start, 700))
    asked: list[str] = []

    def ask(name, value):
        def answer():
            asked.append(name)
            return value
        return answer

    k = known(committed=committed, checkpoints_on=draw(st.booleans()) or ck is not None, checkpoint=ck,
              log_start=ask("log_start", log_start), warmup=draw(st.sampled_from(["", "1h"])),
              warmup_start=ask("warmup_start", found), started_ms=10_000,
              auto_offset_reset=draw(st.sampled_from(["earliest", "latest"])))
    return k, asked, log_start


@SETTINGS
@given(facts())
def test_for_any_facts_the_resumed_partition_emits_exactly_from_the_committed_offset(case):
    k, asked, log_start = case
    p = plan(k)
    order = ["checkpoint", "warmup", "replay_from_start", "empty"]
    assert (p.source == "checkpoint") == (k.checkpoint is not None), "a usable checkpoint is always preferred"
    if p.source != "checkpoint":
        assert p.source in order
    assert len(asked) == len(set(asked)), "each fact asked at most once"
    if "warmup_start" in asked:
        assert k.checkpoint is None and k.warmup and k.committed != 0
    # The state misses no record the log still holds: from the checkpoint on, or the whole log.
    if p.source == "checkpoint":
        assert p.seek == min(max(k.checkpoint.offset, log_start), k.committed)
    if p.source == "replay_from_start":
        assert p.seek == log_start < k.committed
    partition = Partition(TP, 0)
    partition.resume(p.resume)
    if isinstance(p.seek, int):
        assert p.resume.at in (p.seek, None)
        if k.committed is not None:
            assert p.seek <= k.committed, "nothing between the committed offset and the seek is skipped"
            offs = np.arange(p.seek, k.committed + 5)
            silent = partition.silent(offs, np.zeros(len(offs), dtype=np.int64))
            np.testing.assert_array_equal(silent, offs < k.committed)
    else:
        assert k.committed is None and p.source == "empty"
