"""Where a newly owned partition's state comes from: a plan made from what is known, without side effects.

In order of preference (``plan``), one function per outcome:

- ``from_checkpoint``: the newest usable checkpoint at or before the committed offset, replayed silently up to
  it (from the log start when retention deleted records the replay needs);
- ``warm_up``: a window of input (``warmup``), replayed silently up to the committed offset, or for a fresh
  group up to the records produced after this run started;
- ``replay_from_start``: checkpoints on and none usable yet (a kill before the first one): the whole
  partition, silently, up to the committed offset;
- ``empty``: empty state, loudly when it loses state.

``recovery.Recovery`` finds out what is known and applies the plan (the checkpoint's rows into the operator,
the consumer's seek, ``Partition.resume``, the metric and the plan's log lines).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.checkpoint_format import Manifest
from pipeline.live.partitions import Resume


@dataclass(frozen=True)
class Note:
    """A log line a plan asks for (written when it is applied)."""

    level: int
    message: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    source: str  # checkpoint, warmup, replay_from_start or empty (the restores metric's label)
    seek: int | str  # the offset to read from next, or "beginning" / "end"
    resume: Resume  # where the partition's state then stands
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True)
class Known:
    """What a plan is made from. ``log_start`` and ``warmup_start`` are asked only when a plan depends on them
    (each costs a broker round trip; the warm-up one a consumer of its own)."""

    where: str  # "topic/partition", for the log
    committed: int | None  # the group's committed offset (None: none)
    checkpoints_on: bool
    checkpoint: Manifest | None = None  # the newest usable checkpoint at or before ``committed``
    checkpoint_rows: int = 0
    log_start: Callable[[], int] = lambda: 0  # the partition's first offset
    warmup: str = ""  # the warm-up window as configured ("": none)
    warmup_start: Callable[[], int | None] = lambda: None  # first offset stamped inside the window, if any
    started_ms: int = 0  # when this run started (wall clock, ms)
    auto_offset_reset: str = "latest"
    now_s: float = 0.0  # wall clock (s), for the checkpoint's age


def plan(known: Known) -> Plan:
    notes: list[Note] = []
    if known.checkpoints_on and known.committed is None:
        # Checkpoints belong to committed offsets: without any (a new group, expired offsets, a recreated
        # topic) they cannot be placed, so the partition starts per auto_offset_reset (or warm-up).
        notes.append(Note(logging.INFO, "group has no committed offset for this partition; not using checkpoints",
                          {"partition": known.where}))
    return (from_checkpoint(known, notes) or warm_up(known, notes) or replay_from_start(known, notes)
            or empty(known, notes))


def from_checkpoint(known: Known, notes: list[Note]) -> Plan | None:
    ck, committed = known.checkpoint, known.committed
    if ck is None or committed is None:
        return None
    start = ck.offset
    if start < committed:
        first = known.log_start()
        if first > start:
            # Retention deleted records the replay needs: the state misses them for good. Replay what is
            # left; the instruments those records touched carry older state.
            notes.append(Note(logging.WARNING, "checkpoint is older than the partition's log start; records in "
                              "between were deleted by retention and are missing from the restored state",
                              {"partition": known.where, "checkpoint_offset": start, "log_start": first,
                               "missing": first - start, "committed": committed}))
            start = min(first, committed)
    notes.append(Note(logging.INFO, "partition restored from checkpoint", {
        "partition": known.where, "rows": known.checkpoint_rows, "checkpoint_offset": ck.offset,
        "committed": committed, "replay": max(0, committed - start),
        "age_s": round(known.now_s - ck.created_at, 1)}))
    return Plan("checkpoint", start, Resume(start, checkpointed=ck.offset, emit_from=committed), tuple(notes))


def warm_up(known: Known, notes: list[Note]) -> Plan | None:
    """A fresh group (no committed offset) emits from the records produced after this run started, judged by
    record timestamp rather than by the end offset, which some brokers report late."""
    committed = known.committed
    if not known.warmup or committed == 0:
        return None
    start = known.warmup_start()
    if start is None:
        # The window is measured on record timestamps against the wall clock. A historical topic (records
        # stamped long ago) has nothing in it: no warm-up; the partition goes on as without one.
        notes.append(Note(logging.WARNING, "warm-up window holds no records (an empty partition, or every record "
                          "is stamped before now - warmup: a historical topic?); not warming up",
                          {"partition": known.where, "warmup": known.warmup}))
        return None
    if committed is not None and start >= committed:
        return None
    fresh = committed is None  # silent up to the records produced before this run started
    notes.append(Note(logging.INFO, "partition warming up from input", {
        "partition": known.where, "from_offset": start,
        "emit_from": committed if not fresh else f"record timestamp {known.started_ms} ms"}))
    return Plan("warmup", start, Resume(start, emit_from=committed,
                                        emit_from_ts=known.started_ms if fresh else None), tuple(notes))


def replay_from_start(known: Known, notes: list[Note]) -> Plan | None:
    """No checkpoint yet (a kill before the first one): rebuild from the start of the partition."""
    committed = known.committed
    if not known.checkpoints_on or not committed:
        return None
    start = known.log_start()
    if start >= committed:
        return None
    notes.append(Note(logging.WARNING, "no usable checkpoint; rebuilding state by replaying the partition from "
                      "its start", {"partition": known.where, "from_offset": start, "emit_from": committed}))
    return Plan("replay_from_start", start, Resume(start, emit_from=committed), tuple(notes))


def empty(known: Known, notes: list[Note]) -> Plan:
    """Positioned explicitly (records a poll already returned for the partition were dropped). Loud when
    state is lost (a restart or rebalance without a checkpoint); a new group starts empty anyway."""
    committed = known.committed
    seek = committed if committed is not None else "beginning" if known.auto_offset_reset == "earliest" else "end"
    why = ("new group" if committed is None else
           "no usable checkpoint" if known.checkpoints_on else "checkpoints are off (checkpoint_uri)")
    notes.append(Note(logging.WARNING if committed is not None else logging.INFO,
                      "partition assigned with EMPTY state: its instruments start from zero state",
                      {"partition": known.where, "committed": committed, "why": why}))
    return Plan("empty", seek, Resume(None), tuple(notes))
