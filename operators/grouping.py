"""Ticks to per-instrument sequences: the one path training and streaming share.

Invariant (train/serve parity): a tick's verdict and raw features depend only
on the tick and on the ticks of its own instrument before it, never on how
the ticks were cut into tables or micro-batches. Training sees a whole table
at once, so nothing precedes any instrument (:meth:`Preceding.nothing`); the
streaming operator sees micro-batches, and the state table supplies each
instrument's previous tick (:meth:`Preceding` built from its rows). Both go
through the same four steps here:

1. :func:`group_ticks` validates every tick (:func:`validate_values`) and
   lays the valid ones out group after group, a group being one instrument
   (one (partition, instrument) when ``by_partition``), in group-key order,
   arrival order within a group (a stable sort);
2. :func:`refuse_late` refuses with ``OUT_OF_ORDER`` every tick older than
   the newest accepted tick before it in its group, the first compared with
   what precedes the group: a late tick never rewinds an instrument;
3. :func:`previous_ticks` gives each tick the previous tick of its group
   (for a group's first tick, what precedes the group), and starts a
   session afresh after a gap longer than ``reset_gap_ns``;
4. :func:`compute_features` turns them into the raw features a bundle names.

What precedes a group (:class:`Preceding`) carries whatever the features need
of the previous tick: price and time always, mid and trade sign for specs that
use them (:attr:`FeatureSpec.previous`); streaming keeps those per row and
writes back what :func:`raw_features` reports in ``after``.

What is specific to one side stays there: the instrument limit and the state
rows (streaming), windows and targets (training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.features import FEATURE_NAMES, FeatureInputs, compute_features, previous_within_groups
from operators.validation import RejectReason, TickColumns, TimestampPolicy, out_of_order, validate_values

NO_TS = np.iinfo(np.int64).min  # "no previous tick" (the state table's fresh last_ts)


@dataclass(frozen=True)
class Groups:
    """Valid ticks of a batch laid out group after group."""

    order: np.ndarray  # (m,) batch row of each tick
    starts: np.ndarray  # (G,) index in ``order`` of each group's first tick
    partition: np.ndarray  # (G,) int64 partition of each group (0 unless grouped by partition)
    codes: np.ndarray  # (G,) int64 instrument code of each group (index into TickColumns.instruments)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(np.append(self.starts, len(self.order)))

    def drop(self, ticks: np.ndarray) -> tuple["Groups", np.ndarray]:
        """Without the ticks flagged in ``ticks`` (m,); also returns, for each remaining group, the index
        of the group it was (groups left empty disappear)."""
        gid = np.repeat(np.arange(len(self.starts)), self.lengths)[~ticks]
        starts = np.flatnonzero(np.diff(gid, prepend=-1))
        kept = gid[starts]
        return Groups(self.order[~ticks], starts, self.partition[kept], self.codes[kept]), kept

    def take(self, groups: np.ndarray) -> "Groups":
        """The groups ``groups`` (indices), in that order, each with its ticks."""
        lengths = self.lengths[groups]
        starts = np.zeros(len(groups), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        order = self.order[np.repeat(self.starts[groups] - starts, lengths) + np.arange(int(lengths.sum()))]
        return Groups(order, starts, self.partition[groups], self.codes[groups])


@dataclass(frozen=True)
class Preceding:
    """What precedes each group: its instrument's previous tick, if any.

    Streaming starts from :meth:`nothing` and fills in, in place, the groups whose instrument holds a row.
    """

    price: np.ndarray  # (G,) float64 previous price (NaN where none)
    ts: np.ndarray  # (G,) int64 previous event time (NO_TS where none); late ticks are judged against it
    present: np.ndarray  # (G,) bool: a previous tick the features may use
    # Only for features that need them (None: none anywhere): the previous tick's mid (float64, NaN where none
    # or without quotes) and trade sign (int8, 0 where none).
    mid: np.ndarray | None = None
    sign: np.ndarray | None = None

    @classmethod
    def nothing(cls, n_groups: int) -> "Preceding":
        """No previous tick for any group: a whole table (training), or instruments never seen."""
        return cls(np.full(n_groups, np.nan), np.full(n_groups, NO_TS, dtype=np.int64),
                   np.zeros(n_groups, dtype=bool), np.full(n_groups, np.nan), np.zeros(n_groups, dtype=np.int8))

    def take(self, groups: np.ndarray) -> "Preceding":
        mid = None if self.mid is None else self.mid[groups]
        sign = None if self.sign is None else self.sign[groups]
        return Preceding(self.price[groups], self.ts[groups], self.present[groups], mid, sign)


def group_ticks(cols: TickColumns, timestamps: TimestampPolicy | None = None,
                by_partition: bool = False) -> tuple[np.ndarray, Groups]:
    """Reason per tick (uint8, 0 = valid) and the valid ticks grouped by (partition,) instrument."""
    reasons = validate_values(cols, timestamps)
    valid = np.flatnonzero(reasons == 0)
    n_codes = len(cols.instruments) + 1  # key % n_codes is the code; -1 is never a key, so it marks "before"
    key = cols.instrument_codes[valid]
    if by_partition:
        key = cols.partition[valid].astype(np.int64) * n_codes + key
    perm = np.argsort(key, kind="stable")
    order, key = valid[perm], key[perm]
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    key = key[starts]
    return reasons, Groups(order, starts, key // n_codes, key % n_codes)


def refuse_late(cols: TickColumns, groups: Groups, preceding: Preceding,
                reasons: np.ndarray) -> tuple[Groups, np.ndarray]:
    """Mark ``OUT_OF_ORDER`` in ``reasons`` for every late tick and drop it (see :func:`out_of_order`);
    returns the groups left and, for each, the index of the group it was."""
    late = out_of_order(cols.ts[groups.order], groups.starts, preceding.ts)
    if not late.any():
        return groups, np.arange(len(groups.starts))
    reasons[groups.order[late]] = RejectReason.OUT_OF_ORDER
    return groups.drop(late)


def previous_ticks(cols: TickColumns, groups: Groups, preceding: Preceding, reset_gap_ns: int | None = None):
    """Per tick of ``groups``: (prev_price, prev_ts, has_prev, reset). ``reset`` (None without a gap)
    flags ticks more than ``reset_gap_ns`` after their previous tick: they start from no previous tick."""
    ts = cols.ts[groups.order]
    prev_price = previous_within_groups(cols.price[groups.order], groups.starts, preceding.price)
    prev_ts = previous_within_groups(ts, groups.starts, preceding.ts)
    has_prev = np.ones(len(groups.order), dtype=bool)
    has_prev[groups.starts] = preceding.present
    reset = None
    if reset_gap_ns is not None:
        reset = has_prev & (ts - prev_ts > reset_gap_ns)
        has_prev &= ~reset
    return prev_price, prev_ts, has_prev, reset


def raw_features(cols: TickColumns, groups: Groups, preceding: Preceding, reset_gap_ns: int | None = None,
                 names: tuple[str, ...] = FEATURE_NAMES, after: dict[str, np.ndarray] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw features ``names`` (m, len(names)) of the ticks of ``groups`` and the session-reset flags (see
    :func:`previous_ticks`). ``after``: a dict whose keys ("mid", "sign") get, per tick, what the next tick
    needs of it (streaming keeps each group's last in the state table)."""
    prev_price, prev_ts, has_prev, reset = previous_ticks(cols, groups, preceding, reset_gap_ns)
    o = groups.order
    ticks = FeatureInputs(cols.price[o], cols.ts[o], cols.size[o], cols.bid[o], cols.ask[o], cols.bid_size[o],
                          cols.ask_size[o], groups.starts, has_prev, prev_price, prev_ts, preceding.mid,
                          preceding.sign)
    raw = compute_features(names, ticks)
    for what in after or ():
        after[what] = ticks.after(what)
    return raw, reset
