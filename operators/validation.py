"""Ticks: the canonical columns, the reasons a tick is refused, and the vectorised checks.

``TICK_COLUMNS`` is the one list of canonical tick columns: file readers,
the wire decoder and encoder, the topic reader and the live loop all produce
or select these. ``RejectReason`` (the operator's checks, stable codes) and
``DecodeReason`` (a message that is not a tick at all) are the two reason
kinds; both have a ``label``, the name dead letters, metrics and backtest
summaries use, and ``REASON_LABELS`` lists every label once.

Bad data is not an exception: each tick gets a reason code (0 = valid). A
rejected tick never reaches the features, the LSTM or the state table: one
NaN in a state row would poison that instrument for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.errors import InputDataError

# Event times after MAX_TS_NS (2100-01-01) are absurd whatever "now" is.
MAX_TS_NS = 4_102_444_800_000_000_000
DEFAULT_TS_FLOOR_NS = 631_152_000_000_000_000  # 1990-01-01T00:00:00Z
DEFAULT_MAX_TS_AHEAD_NS = 300_000_000_000  # 5 minutes
# The canonical tick columns, in order: instrument (string), ts (int64 ns since the epoch, UTC), then float64.
TICK_COLUMNS = ("instrument", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size")
REQUIRED_COLUMNS = TICK_COLUMNS[:3]
NUMERIC_COLUMNS = TICK_COLUMNS[2:]  # price and the optional numbers (float64)
OPTIONAL_FLOAT_COLUMNS = TICK_COLUMNS[3:]


class RejectReason(IntEnum):
    """Why a tick was not processed. Values are stable: they go into files and metrics."""

    OK = 0
    MISSING_INSTRUMENT = 1
    BAD_TIMESTAMP = 2
    NON_FINITE_PRICE = 3
    NON_POSITIVE_PRICE = 4
    NON_FINITE_SIZE = 5
    NEGATIVE_SIZE = 6
    BAD_QUOTE = 7
    OUT_OF_ORDER = 8
    TS_AHEAD = 9  # event time more than the allowed skew after the record's own timestamp
    TS_UNIT_S = 10  # below the floor, but a plausible time in seconds
    TS_UNIT_MS = 11  # ... in milliseconds
    TS_UNIT_US = 12  # ... in microseconds
    INSTRUMENT_LIMIT = 13  # a new instrument while the process holds max_instruments (see Forecaster)
    NON_FINITE_FORECAST = 14  # the model's output for this tick is NaN or infinite; the state was reset

    @property
    def label(self) -> str:
        return self.name.lower()


class DecodeReason(str, Enum):
    """Why a message could not become a tick (the decoder's verdict, before the operator's own checks)."""

    BAD_UTF8 = "bad_utf8"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    KEY_MISMATCH = "key_mismatch"
    OVERSIZED_KEY = "oversized_key"
    OVERSIZED_VALUE = "oversized_value"
    OVERSIZED_INSTRUMENT = "oversized_instrument"

    @property
    def label(self) -> str:
        return self.value


# Every refusal label, decoder's then operator's: the dead-letter ``reason`` values a run can emit.
REASON_LABELS: tuple[str, ...] = (tuple(r.label for r in DecodeReason)
                                  + tuple(r.label for r in RejectReason if r != RejectReason.OK))
_REJECT_LABELS = {int(r): r.label for r in RejectReason}


def reject_labels(codes: np.ndarray) -> list[str]:
    """The labels of operator reason codes (``StepResult.reasons`` entries), one per code."""
    return [_REJECT_LABELS[c] for c in np.asarray(codes).tolist()]


@dataclass(frozen=True)
class TickColumns:
    """A batch of ticks as arrays. Absent optional values are NaN."""

    instrument_codes: np.ndarray  # (n,) int64 index into `instruments`, -1 for null/empty
    instruments: list[str]  # distinct instrument names of the batch
    ts: np.ndarray  # (n,) int64 ns; 0 where null
    price: np.ndarray  # (n,) float64; NaN where null
    size: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    bid_size: np.ndarray
    ask_size: np.ndarray
    partition: np.ndarray  # (n,) int32
    offset: np.ndarray  # (n,) int64; -1 when the source has no offsets
    ts_null: np.ndarray  # (n,) bool
    price_null: np.ndarray  # (n,) bool
    size_null: np.ndarray  # (n,) bool; null size = absent, not invalid
    record_ts: np.ndarray | None = None  # (n,) int64 ns, the record's own timestamp; -1 where it has none
    instrument_names: pa.Array | None = None  # `instruments` as the Arrow string array they came from

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_arrow(cls, batch: pa.Table | pa.RecordBatch) -> "TickColumns":
        names = set(batch.schema.names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise InputDataError(
                f"tick table lacks column(s) {', '.join(missing)}; it has {sorted(names)}; "
                "map your names with --map (e.g. --map price=last,ts=time)"
            )
        n = batch.num_rows

        def col(name: str) -> pa.Array:
            c = batch.column(name)
            return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

        inst = col("instrument")
        if not pa.types.is_string(inst.type) and not pa.types.is_large_string(inst.type):
            inst = pc.cast(inst, pa.string())
        enc = pc.dictionary_encode(inst)
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        instruments = enc.dictionary.to_pylist()
        empty = np.flatnonzero(pc.binary_length(enc.dictionary).to_numpy(zero_copy_only=False) == 0)
        if len(empty):  # an empty name is a missing instrument
            codes[np.isin(codes, empty)] = -1

        ts_arr = col("ts")
        if pa.types.is_timestamp(ts_arr.type):
            ts_arr = pc.cast(ts_arr, pa.timestamp("ns", tz=ts_arr.type.tz)).cast(pa.int64())
        try:
            ts_arr = pc.cast(ts_arr, pa.int64())
        except pa.ArrowInvalid as exc:
            raise InputDataError(f"column ts must hold integer nanoseconds or timestamps: {exc}") from None

        def floats(name: str) -> tuple[np.ndarray, np.ndarray]:
            if name not in names:
                return np.full(n, np.nan), np.ones(n, dtype=bool)
            a = col(name)
            try:
                a = pc.cast(a, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputDataError(f"column {name} must be numeric: {exc}") from None
            return a.to_numpy(zero_copy_only=False), a.is_null().to_numpy(zero_copy_only=False)

        price, price_null = floats("price")
        size, size_null = floats("size")
        opt = {c: floats(c)[0] for c in ("bid", "ask", "bid_size", "ask_size")}
        part = (
            pc.cast(col("partition"), pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
            if "partition" in names
            else np.zeros(n, dtype=np.int32)
        )
        offset = (
            pc.cast(col("offset"), pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
            if "offset" in names
            else np.full(n, -1, dtype=np.int64)
        )
        record_ts = (
            pc.cast(col("record_ts"), pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
            if "record_ts" in names
            else np.full(n, -1, dtype=np.int64)
        )
        return cls(
            record_ts=record_ts,
            instrument_codes=codes,
            instruments=instruments,
            instrument_names=enc.dictionary,
            ts=ts_arr.fill_null(0).to_numpy(zero_copy_only=False),
            price=price,
            size=size,
            bid=opt["bid"],
            ask=opt["ask"],
            bid_size=opt["bid_size"],
            ask_size=opt["ask_size"],
            partition=part,
            offset=offset,
            ts_null=ts_arr.is_null().to_numpy(zero_copy_only=False),
            price_null=price_null,
            size_null=size_null,
        )


@dataclass(frozen=True)
class TimestampPolicy:
    """Which event times are believable; a function of the tick alone, so a replay agrees.

    "Now" is the record's own timestamp (Kafka's, set by the producer or the
    broker), never a clock read while processing: a tick refused as too far
    ahead live is refused again on replay. A tick without one (a file) uses
    ``fallback_now_ns``, fixed for the run. Event times must lie in
    [``floor_ns``, now + ``max_ahead_ns``] (and never past 2100). Below the
    floor, a value that is a believable time in s, ms or µs gets a reason
    that names the unit.
    """

    floor_ns: int = DEFAULT_TS_FLOOR_NS
    max_ahead_ns: int = DEFAULT_MAX_TS_AHEAD_NS
    fallback_now_ns: int = MAX_TS_NS  # default: no "ahead" check for ticks without a record timestamp


def check_timestamps(t: TickColumns, policy: TimestampPolicy) -> np.ndarray:
    """Reason codes (0 = believable) for the event times of ``t`` under ``policy``."""
    ts = t.ts
    now = np.full(len(t), policy.fallback_now_ns, dtype=np.int64)
    if t.record_ts is not None:
        has = t.record_ts >= 0
        now[has] = t.record_ts[has]
    ceiling = np.minimum(np.minimum(now, MAX_TS_NS) + policy.max_ahead_ns, MAX_TS_NS)
    reasons = np.zeros(len(t), dtype=np.uint8)
    below = ~t.ts_null & (ts < policy.floor_ns)
    for scale, reason in ((1_000_000_000, RejectReason.TS_UNIT_S), (1_000_000, RejectReason.TS_UNIT_MS),
                          (1_000, RejectReason.TS_UNIT_US)):
        # ts * scale would overflow int64: compare against the bounds divided instead.
        lo, hi = -(-policy.floor_ns // scale), ceiling // scale
        reasons[(reasons == 0) & below & (ts >= lo) & (ts <= hi)] = reason
    reasons[(reasons == 0) & (t.ts_null | below)] = RejectReason.BAD_TIMESTAMP
    reasons[(reasons == 0) & ~t.ts_null & (ts > ceiling)] = RejectReason.TS_AHEAD
    return reasons


def validate_values(t: TickColumns, timestamps: TimestampPolicy | None = None) -> np.ndarray:
    """Per-tick reason codes from the tick's own values (uint8, 0 = valid).

    The first failing check wins. Order within an instrument is checked
    separately (it needs the state table): see ``Forecaster``.
    """
    reasons = np.zeros(len(t), dtype=np.uint8)

    def mark(mask: np.ndarray, reason: RejectReason) -> None:
        reasons[(reasons == 0) & mask] = reason

    with np.errstate(invalid="ignore"):
        mark(t.instrument_codes < 0, RejectReason.MISSING_INSTRUMENT)
        ts_reasons = check_timestamps(t, timestamps or TimestampPolicy())
        take = (reasons == 0) & (ts_reasons > 0)
        reasons[take] = ts_reasons[take]
        mark(t.price_null | ~np.isfinite(t.price), RejectReason.NON_FINITE_PRICE)
        mark(t.price <= 0, RejectReason.NON_POSITIVE_PRICE)
        mark(~t.size_null & ~np.isfinite(t.size), RejectReason.NON_FINITE_SIZE)
        mark(~t.size_null & (t.size < 0), RejectReason.NEGATIVE_SIZE)
        for q in (t.bid, t.ask, t.bid_size, t.ask_size):
            # NaN here means "absent": null in the source, or NaN in a file's quote column (pandas'
            # marker for a missing value). A JSON message cannot carry NaN (it is not JSON).
            mark(np.isinf(q) | (q < 0), RejectReason.BAD_QUOTE)
    return reasons


def out_of_order(ts_grouped: np.ndarray, group_starts: np.ndarray, last_ts: np.ndarray) -> np.ndarray:
    """Ticks (laid out group after group) older than an earlier tick of their group.

    ``last_ts[g]`` is the newest event time the state table holds for group g
    (int64 min for a new instrument). Equal timestamps are in order. Policy:
    a late tick is rejected (``OUT_OF_ORDER``); it never rewinds an
    instrument's state.
    """
    n = len(ts_grouped)
    bad = np.zeros(n, dtype=bool)
    if n == 0:
        return bad
    prev = np.empty(n, dtype=np.int64)
    prev[1:] = ts_grouped[:-1]
    prev[group_starts] = last_ts
    suspect = ts_grouped < prev
    if not suspect.any():
        return bad
    # Rare path: a late tick inside a group needs the running maximum of the
    # accepted ticks before it; loop only over the groups that have one.
    ends = np.append(group_starts[1:], n)
    group_of = np.searchsorted(group_starts, np.flatnonzero(suspect), side="right") - 1
    for g in np.unique(group_of):
        s, e = group_starts[g], ends[g]
        newest = last_ts[g]
        for i in range(s, e):
            if ts_grouped[i] < newest:
                bad[i] = True
            else:
                newest = ts_grouped[i]
    return bad
