"""The operator: a micro-batch of ticks in, one forecast per valid tick out.

``Forecaster.step`` validates the batch, groups the valid ticks by
(partition, instrument) in arrival order and refuses late ticks
(:mod:`operators.grouping`, the path training runs too, here with each
instrument's previous tick from the state table), gathers those instruments'
rows from the state table, steps the LSTM once per tick (ragged), scatters the new state
back, and returns the forecast made from the state *after* each tick.

Because every instrument's state advances only by its own ticks, in its own
order, the forecasts do not depend on how ticks were cut into micro-batches
or interleaved with other instruments' ticks (up to float32 rounding of the
BLAS kernels at different batch shapes).

Session resets and expiry use one rule, on event time: a tick more than
``reset_gap`` after its instrument's previous tick starts from zero state and
no previous tick, exactly as a new instrument would. Expiry reclaims rows
idle for more than ``expire_after`` + ``expiry_grace`` behind the partition's
watermark and implies ``reset_gap <= expire_after``, so reclaiming a
row never changes a forecast unless ticks of one partition arrive more than
``expiry_grace`` behind each other in event time.

The watermark is not the newest event time, which one record with a forged
timestamp could move to 2096 (expiring every other instrument of its
partition at once): it is the largest, over the partition's valid ticks in
record order, of the oldest event time among the last ``watermark_window``
(16) ticks. Moving it takes that many consecutive ticks at the new time; it is a
function of the partition's tick sequence alone (the last ``watermark_window``
event times are carried between batches and in checkpoints), so it does not
depend on batch boundaries.

Instrument limit (``max_instruments``): the state table holds at most that
many rows. Instruments it holds are always served. A *new* instrument is given
a row only while rows are free; the free rows of a batch go to its new
instruments in the order of their first valid tick, and every tick of a new
instrument that gets none is refused with ``INSTRUMENT_LIMIT`` (the whole
batch's ticks of that instrument share one verdict). The verdict is a function
of the state table and the ticks alone, so for one partition's stream it does
not depend on batch boundaries: the first ``max_instruments`` distinct
instruments are served, later ones refused, until expiry frees rows (which
happens at sweeps, at most ``expire_after``/8 of event time apart; a row
counts as held until its sweep). Rows restored from checkpoints are loaded
whole even above the limit (dropping them would change forecasts); new
instruments then wait until expiry brings the table under it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from operators.grouping import Preceding, group_ticks, raw_features, refuse_late
from operators.index import name_words
from operators.bundle import Bundle
from operators.engines import ENGINES, choose, stepper
from operators.rows import put_rows, take_rows
from operators.state import NO_TS, StateTable
from operators.validation import (DEFAULT_MAX_TS_AHEAD_NS, DEFAULT_TS_FLOOR_NS, RejectReason, TickColumns,
                                  TimestampPolicy)


WATERMARK_WINDOW = 16  # the watermark moves only as far as the oldest of a partition's last 16 valid ticks
_RECENT_TS_KEY = b"tickcast.recent_ts"  # export_partition metadata: the last WATERMARK_WINDOW event times


@dataclass(frozen=True)
class ForecasterConfig:
    reset_gap_ns: int | None = None  # gap that starts an instrument afresh (None: never)
    expire_after_ns: int | None = None  # idle time after which a row may be reclaimed
    expiry_grace_ns: int | None = None  # extra idle time before reclaiming (default: expire_after)
    initial_capacity: int = 1024
    # Timestamp policy (see operators.validation.TimestampPolicy): event times before the floor or more
    # than max_ts_ahead after the record's timestamp are refused; `now_ns` is "now" for ticks without a
    # record timestamp (files); None: the wall clock when the Forecaster is built, fixed for its life.
    ts_floor_ns: int = DEFAULT_TS_FLOOR_NS
    max_ts_ahead_ns: int = DEFAULT_MAX_TS_AHEAD_NS
    now_ns: int | None = None
    max_instruments: int | None = None  # rows the state table may hold; new instruments beyond are refused
    engine: str = "auto"  # what steps the model: "kernel" (NumPy), "keras", or "auto" (operators.engines)
    watermark_window: int = WATERMARK_WINDOW  # consecutive ticks it takes to move a partition's watermark

    @property
    def effective_reset_gap_ns(self) -> int | None:
        gaps = [g for g in (self.reset_gap_ns, self.expire_after_ns) if g is not None]
        return min(gaps) if gaps else None

    def check(self) -> None:
        for name in ("reset_gap_ns", "expire_after_ns", "expiry_grace_ns", "ts_floor_ns", "max_ts_ahead_ns"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if self.max_instruments is not None and self.max_instruments < 1:
            raise ValueError(f"max_instruments must be at least 1 (or None for no limit), got {self.max_instruments}")
        if not 1 <= self.watermark_window <= 1024:
            raise ValueError(f"watermark_window must be in 1..1024 ticks, got {self.watermark_window}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(repr(e) for e in ENGINES)}")


@dataclass(frozen=True)
class StepResult:
    """What one micro-batch produced."""

    rows: np.ndarray  # (m,) batch row of each forecast, ascending
    forecasts: np.ndarray  # (m,) float64 forecast of the log return over the horizon; (m, K) for K outputs
    reasons: np.ndarray  # (n,) uint8 RejectReason per batch row (0 = forecast)
    n_instruments: int  # distinct (partition, instrument) stepped
    n_resets: int
    n_expired: int
    expired: list[tuple[int, str]] = field(default_factory=list)  # (partition, instrument) rows reclaimed
    n_non_finite_resets: int = 0  # states zeroed because the model's output (or state) was not finite


class Forecaster:
    """Stateful, batch-invariant streaming forecaster over many instruments."""

    def __init__(self, bundle: Bundle, config: ForecasterConfig | None = None, state: StateTable | None = None):
        self.bundle = bundle
        self.config = config or ForecasterConfig()
        self.config.check()
        self.engine = choose(bundle.stack, self.config.engine)  # .line says which and why
        self.kernel = stepper(bundle, self.engine)
        self._no_forecasts = np.zeros((0,) if self.kernel.outputs == 1 else (0, self.kernel.outputs))
        if state is not None and state.shape != bundle.shape:
            raise ValueError(f"state table shape {state.shape} does not match the model's {bundle.shape}")
        self.state = state or StateTable(bundle.shape, self.config.initial_capacity)
        self.timestamps = TimestampPolicy(self.config.ts_floor_ns, self.config.max_ts_ahead_ns,
                                          self.config.now_ns if self.config.now_ns is not None else time.time_ns())
        self._gather: dict[str, np.ndarray] = {}
        self._watermark: dict[int, int] = {}
        self._recent: dict[int, np.ndarray] = {}  # per partition: its last WATERMARK_WINDOW event times, in order
        self._last_sweep: dict[int, int] = {}
        self.expired_total = 0

    def step(self, batch: pa.Table | pa.RecordBatch) -> StepResult:
        cols = TickColumns.from_arrow(batch)
        reasons, groups = group_ticks(cols, self.timestamps, by_partition=True)
        if len(groups.order) == 0:
            return StepResult(np.zeros(0, np.int64), self._no_forecasts.copy(), reasons, 0, 0, 0)
        names = np.empty(len(cols.instruments), dtype=object)  # the batch's distinct names, indexable by code
        names[:] = cols.instruments
        # The index compares names by their bytes (operators.index), taken from the Arrow dictionary.
        words = name_words(cols.instrument_names if cols.instrument_names is not None else names)  # by code
        st = self.state
        rows = st.lookup_many(groups.partition, names[groups.codes], words[groups.codes])
        limit = self.config.max_instruments
        refused_rows = np.zeros(0, dtype=np.int64)  # valid ticks refused by the limit: they still move the clock
        if limit is not None:
            new = np.flatnonzero(rows < 0)
            free = max(limit - len(st), 0)
            if len(new) > free:
                # First come, first served: by the batch row of each new instrument's first valid tick.
                refused = np.zeros(len(groups.starts), dtype=bool)
                refused[new[np.argsort(groups.order[groups.starts[new]], kind="stable")[free:]]] = True
                out = np.repeat(refused, groups.lengths)
                refused_rows = groups.order[out]
                reasons[refused_rows] = RejectReason.INSTRUMENT_LIMIT
                groups, kept = groups.drop(out)
                rows = rows[kept]
        if len(groups.order) == 0:
            return self._nothing_stepped(cols, reasons, refused_rows)
        # What precedes each group: its row's previous tick; nothing for an instrument without a row.
        known = rows >= 0
        if known.all():  # the common case: no new instrument in the batch
            preceding = Preceding(st.column("last_price")[rows], st.column("last_ts")[rows],
                                  st.column("tick_count")[rows] > 0,
                                  **{what: st.previous(what)[rows] for what in st.shape.previous})
        else:
            preceding = Preceding.nothing(len(rows))
            preceding.price[known] = st.column("last_price")[rows[known]]
            preceding.ts[known] = st.column("last_ts")[rows[known]]
            preceding.present[known] = st.column("tick_count")[rows[known]] > 0
            for what in st.shape.previous:  # what else the bundle's features need of it (mid, trade sign)
                getattr(preceding, what)[known] = st.previous(what)[rows[known]]
        groups, kept = refuse_late(cols, groups, preceding, reasons)
        if len(groups.order) == 0:
            return self._nothing_stepped(cols, reasons, refused_rows)
        rows, preceding = rows[kept], preceding.take(kept)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            keys = zip(groups.partition[missing].tolist(), names[groups.codes[missing]])
            rows[missing] = st.insert(list(keys), words[groups.codes[missing]])
        lengths = groups.lengths
        if len(lengths) > 1 and (lengths[1:] > lengths[:-1]).any():
            # Longest groups first (stable): the kernel then steps the gathered rows where they lie
            # instead of permuting them in and out of its packed order, layer by layer.
            by_len = np.argsort(-lengths, kind="stable")
            groups, preceding = groups.take(by_len), preceding.take(by_len)
            rows, lengths = rows[by_len], lengths[by_len]
        order, starts = groups.order, groups.starts
        ends = starts + lengths - 1
        price, ts = cols.price[order], cols.ts[order]
        after = dict.fromkeys(st.shape.previous)
        raw, reset = raw_features(cols, groups, preceding, self.config.effective_reset_gap_ns,
                                  self.bundle.feature_spec.names, after)
        n_resets = int(np.count_nonzero(reset)) if reset is not None else 0
        x = self.bundle.model_inputs(raw)

        vectors = st.shape.vectors
        # Gathered into buffers kept between batches (fresh multi-MB arrays cost page faults each batch);
        # the kernel steps them in place and they are scattered back below.
        if len(rows) and (rows.min() < 0 or rows.max() >= len(st)):
            raise RuntimeError("state rows out of range")  # never: checked so that mode="clip" below clips nothing
        s0 = [take_rows(st.vector(name), rows, self._gather_buffer(name, width, len(rows))) for name, width in vectors]
        y, s_new = self.kernel.step(x, lengths, s0, reset, in_place=True)
        s_new = list(s_new)
        forecast = self._denormalise(y)
        bad, n_non_finite = contain_non_finite(self.kernel, x, lengths, reset, forecast, s_new, self._denormalise)
        for (name, _), new in zip(vectors, s_new):
            put_rows(st.vector(name), rows, new)
        st.column("last_price")[rows] = price[ends]
        st.column("last_ts")[rows] = ts[ends]
        st.column("tick_count")[rows] += lengths
        for what, values in after.items():
            st.previous(what)[rows] = values[ends]
        offsets = cols.offset[order][ends]
        st.column("last_offset")[rows] = np.maximum(st.column("last_offset")[rows], offsets)

        if forecast.shape[1] == 1:
            forecast = forecast[:, 0]  # one output per tick: forecasts (m,), as always
        expired = []
        clock = np.concatenate([order, refused_rows]) if len(refused_rows) else order
        if self.config.expire_after_ns is not None:
            clock = np.sort(clock)  # the ticks that move the clock, in record order (the watermark's sequence)
        n_expired = self._sweep(cols.partition[clock], cols.ts[clock], expired)
        if bad is not None:  # never published: the tick is refused with its reason, the rest as usual
            reasons[order[bad]] = RejectReason.NON_FINITE_FORECAST
            order, forecast = order[~bad], forecast[~bad]
        back = np.argsort(order, kind="stable")
        return StepResult(order[back], forecast[back], reasons, len(starts), n_resets, n_expired, expired,
                          n_non_finite)

    def _denormalise(self, y: np.ndarray) -> np.ndarray:
        """Model outputs (T, K) in target units, float64; an overflow is an infinity (refused), not a warning."""
        norm = self.bundle.normalisation
        with np.errstate(over="ignore", invalid="ignore"):
            return y.astype(np.float64) * norm.target_std + norm.target_mean

    def _nothing_stepped(self, cols: TickColumns, reasons: np.ndarray, refused_rows: np.ndarray) -> StepResult:
        """Every valid tick was refused. Ticks refused by the instrument limit still move the expiry clock:
        at the limit, only the clock moving on frees rows."""
        expired: list[tuple[int, str]] = []
        refused_rows = np.sort(refused_rows)
        n_expired = self._sweep(cols.partition[refused_rows], cols.ts[refused_rows], expired)
        return StepResult(np.zeros(0, np.int64), self._no_forecasts.copy(), reasons, 0, 0, n_expired, expired)

    def _gather_buffer(self, name: str, width: int, n: int) -> np.ndarray:
        """(n, width) float32 scratch rows for one state vector; grows by doubling, never shrinks
        below what a batch needs (a batch touches at most its tick count of instruments)."""
        buf = self._gather.get(name)
        if buf is None or len(buf) < n:
            buf = np.empty((max(n, 2 * (len(buf) if buf is not None else 0), 16), width), dtype=np.float32)
            self._gather[name] = buf
        return buf[:n]

    # -- one partition's state, for checkpoints and hand-over ----------------------------
    def export_partition(self, partition: int) -> pa.Table:
        """A snapshot of everything the operator holds for ``partition``: state rows plus, in the
        schema metadata, the expiry clock (newest event time, last sweep). ``import_partition`` of
        it into any Forecaster of the same bundle continues exactly where this one stands."""
        table = self.state.partition_to_arrow(partition)
        meta = dict(table.schema.metadata or {})
        meta[b"tickcast.watermark_ns"] = str(self._watermark.get(partition, NO_TS)).encode()
        meta[b"tickcast.last_sweep_ns"] = str(self._last_sweep.get(partition, NO_TS)).encode()
        if partition in self._recent:
            meta[_RECENT_TS_KEY] = ",".join(map(str, self._recent[partition].tolist())).encode()
        return table.replace_schema_metadata(meta)

    def import_partition(self, partition: int, table: pa.Table) -> int:
        """Replace ``partition``'s state with a snapshot from :meth:`export_partition`; returns rows."""
        n = self.state.load_partition(table, partition)
        meta = table.schema.metadata or {}
        for key, clock in ((b"tickcast.watermark_ns", self._watermark), (b"tickcast.last_sweep_ns", self._last_sweep)):
            value = int(meta.get(key, NO_TS))
            if value == NO_TS:
                clock.pop(partition, None)
            else:
                clock[partition] = value
        recent = meta.get(_RECENT_TS_KEY)
        if recent:
            window = self.config.watermark_window
            self._recent[partition] = np.array([int(v) for v in recent.split(b",")][-window:], np.int64)
        else:
            self._recent.pop(partition, None)
        return n

    def drop_partition(self, partition: int) -> int:
        """Forget ``partition`` (its rows and expiry clock); returns rows dropped."""
        self._watermark.pop(partition, None)
        self._recent.pop(partition, None)
        self._last_sweep.pop(partition, None)
        return self.state.drop_partition(partition)

    def _sweep(self, partitions: np.ndarray, ts: np.ndarray, expired: list[tuple[int, str]]) -> int:
        """Move each partition's watermark by its ticks (``ts`` in record order) and reclaim idle rows, at
        most once per 1/8 of ``expire_after`` of event time; the reclaimed keys go to ``expired``."""
        expire = self.config.expire_after_ns
        if expire is None or len(ts) == 0:
            return 0
        grace = self.config.expiry_grace_ns if self.config.expiry_grace_ns is not None else expire
        n_expired = 0
        for p in np.unique(partitions).tolist():
            wm = self._advance_watermark(p, ts[partitions == p])
            if wm == NO_TS:
                continue  # fewer than watermark_window ticks seen: no clock yet, nothing to reclaim
            if wm - self._last_sweep.get(p, NO_TS) >= max(expire // 8, 1) or p not in self._last_sweep:
                self._last_sweep[p] = wm
                n_expired += self.state.expire(p, wm - expire - grace, expired)
        self.expired_total += n_expired
        return n_expired

    def _advance_watermark(self, partition: int, ts: np.ndarray) -> int:
        """The partition's watermark after ``ts``: the largest, over every run of ``watermark_window``
        consecutive ticks of its sequence, of the run's oldest event time (never lower than before)."""
        window = self.config.watermark_window
        seq = np.concatenate([self._recent.get(partition, np.zeros(0, np.int64)), ts.astype(np.int64)])
        self._recent[partition] = seq[-window:].copy()
        wm = self._watermark.get(partition, NO_TS)
        if len(seq) >= window:
            runs = np.lib.stride_tricks.sliding_window_view(seq, window)
            wm = max(wm, int(runs.min(axis=1).max()))
            self._watermark[partition] = wm
        return wm


def contain_non_finite(kernel, x: np.ndarray, lengths: np.ndarray, reset: np.ndarray | None, forecast: np.ndarray,
                       states: list[np.ndarray], denormalise) -> tuple[np.ndarray | None, int]:
    """Non-finite outputs, per tick, as if every tick were stepped alone: a tick whose forecast (any output) is
    NaN or infinite leaves its instrument's recurrent state zeroed (its previous-tick values stay, as after
    any tick), and the instrument's later ticks of the batch are stepped again from that zero state.

    ``forecast`` (T, K) and the final ``states`` (rows per group) are corrected in place. Returns the (T,) mask
    of non-finite ticks (None when there is none) and how many states were zeroed. Because the rule is per
    tick, it gives the same verdicts and states for any split into batches. A final state holding a
    non-finite value behind finite outputs (possible only for state no output depends on) is zeroed too,
    at the batch's end, and counted: no checkpoint ever holds one."""
    bad = ~np.isfinite(forecast).all(axis=1)
    n_zeroed = 0
    if bad.any():
        states[:] = [s if s.flags.writeable else s.copy() for s in states]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        ends = starts + lengths
        group = np.repeat(np.arange(len(lengths)), lengths)
        current = starts.copy()  # per group: ticks from here on reflect every zeroing so far
        positions = np.arange(len(bad))
        while True:
            pending = np.flatnonzero(bad & (positions >= current[group]))
            if len(pending) == 0:
                break
            groups, first = np.unique(group[pending], return_index=True)
            at = pending[first]  # each group's first non-finite tick not handled yet
            n_zeroed += len(groups)
            current[groups] = at + 1
            tail_len = ends[groups] - (at + 1)
            done = tail_len == 0
            for s in states:
                s[groups[done]] = 0.0
            if done.all():
                break
            tg, tl, t0 = groups[~done], tail_len[~done], at[~done] + 1
            idx = np.repeat(t0 - np.concatenate([[0], np.cumsum(tl)[:-1]]), tl) + np.arange(int(tl.sum()))
            zeros = [np.zeros((len(tg), s.shape[1]), dtype=s.dtype) for s in states]
            y_t, s_t = kernel.step(np.ascontiguousarray(x[idx]), tl, zeros,
                                   None if reset is None else reset[idx], in_place=True)
            forecast[idx] = denormalise(y_t)
            bad[idx] = ~np.isfinite(forecast[idx]).all(axis=1)
            for s, new in zip(states, s_t):
                s[tg] = new
    # Outputs finite, state not (a unit no output reads overflowed): zero it rather than keep or write it.
    broken = np.zeros(len(lengths), dtype=bool)
    for s in states:
        broken |= ~np.isfinite(s).all(axis=1)
    if broken.any():
        states[:] = [s if s.flags.writeable else s.copy() for s in states]
        for s in states:
            s[broken] = 0.0
        n_zeroed += int(broken.sum())
    return (bad if bad.any() else None), n_zeroed
