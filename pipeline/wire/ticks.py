"""Tick messages on Kafka: the JSON schema, batch decoding into columns, and reasons.

Message schema, version 1 (one JSON object per Kafka message; the message key
is the instrument, UTF-8)::

    {"v": 1, "instrument": "AAPL", "ts": 1700000000123456789,
     "price": 189.52, "size": 100,
     "bid": 189.51, "ask": 189.53, "bid_size": 300, "ask_size": 200}

- ``v`` (int, optional, default 1): schema version; other versions are refused.
- ``instrument`` (string, optional, at most 256 bytes of UTF-8 like the key):
  must equal the key when both are given; when absent, the key names the
  instrument.
- ``ts`` (int): event time, nanoseconds since the Unix epoch (UTC).
- ``price`` (number), ``size`` (number, optional), ``bid``, ``ask``,
  ``bid_size``, ``ask_size`` (numbers, optional). ``null`` is the same as
  absent. Unknown fields are ignored.

What a message must be (one spec, whichever path decodes it): the value is at
most 4096 bytes of UTF-8 without a BOM holding one strict RFC 8259 JSON text
whose top level is an object. So ``NaN``, ``Infinity``, comments, trailing
commas, single quotes, leading zeros and raw control characters in strings are
``bad_json``; so are a tick field given twice (``{"ts": 1, "ts": 2}``; names
of ignored fields are not checked), a ``\\u`` escape of an unpaired UTF-16
surrogate anywhere in the text (I-JSON, RFC 7493) and nesting deeper than
``MAX_DEPTH``. ``v`` and ``ts`` must be integer literals in int64 range
(``1.0`` and ``1e3`` are ``wrong_type``); the other numbers are rounded to the
nearest float64 (a negative zero to zero) and one too large for it becomes
+/-inf (which the operator then rejects like any non-finite value). ``true``/``false`` are not numbers.

The verdict on a message (a tick with these values, or a reason) depends on
its key and value alone, never on the other messages of its batch. Two paths
implement it. The fast path parses many messages at once with Arrow's JSON
reader, which is strict except that it accepts NaN/Inf/Infinity literals
and skips nested values of ignored fields unchecked; so it takes only
messages where neither can happen: printable ASCII without backslashes, one
flat object (``{`` first, ``}`` last, no other brace or bracket anywhere) and
no ``N`` or ``I`` outside strings. Everything else, and every run of ``FAST_CHUNK``
messages that Arrow refuses (read once as a whole batch, then once per run), goes message
by message through Python's ``json`` with the checks above, so a message costs a
bounded amount of work whatever its neighbours are; the hypothesis
properties in tests/property/test_decode.py hold the two paths to the same
verdicts. The fast-path filter is a few NumPy passes over the joined bytes;
the per-message Python work on it is the join and two length comprehensions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from operators.validation import NUMERIC_COLUMNS, TICK_COLUMNS, DecodeReason

SCHEMA_VERSION = 1
# A decoded tick's ``partition`` is a partition id: the input topic's index in the high bits, so two input
# topics' partition 0 never share state rows.
TOPIC_SHIFT = 20
PARTITION_MASK = (1 << TOPIC_SHIFT) - 1
MAX_KEY_BYTES = 256
MAX_INSTRUMENT_BYTES = MAX_KEY_BYTES
MAX_VALUE_BYTES = 4096
MAX_DEPTH = 32  # nesting of objects/arrays; deeper messages are bad_json (a bound, not the stack's limit)

_FIELDS = frozenset(("v", "instrument", "ts") + NUMERIC_COLUMNS)
MESSAGE_SCHEMA = pa.schema(
    [pa.field("v", pa.int64()), pa.field("instrument", pa.string()), pa.field("ts", pa.int64())]
    + [pa.field(name, pa.float64()) for name in NUMERIC_COLUMNS]
)
_INT64 = (-(2**63), 2**63)


@dataclass(frozen=True)
class DecodedBatch:
    """Canonical tick columns for the messages that decoded, and reasons for the rest."""

    # canonical columns + `record_ts` (the record's timestamp in ns, null when it has none)
    # + `index` (position of the message in the batch)
    ticks: pa.Table
    rejected: list[tuple[int, DecodeReason, str]]  # (message index, reason, detail), by index


def decode_batch(keys: list[bytes | None], values: list[bytes | None],
                 timestamps_ms: list[int] | np.ndarray | None = None) -> DecodedBatch:
    """Decode one poll's messages into a tick table; every message is a tick or a rejection.

    ``timestamps_ms`` are the records' own timestamps (Kafka's, in ms; negative
    = none); they become the ``record_ts`` column the operator's timestamp
    policy uses as "now". Without them ``record_ts`` is null.
    """
    n = len(values)
    rejected: list[tuple[int, DecodeReason, str]] = []
    vlen = np.fromiter((-1 if v is None else len(v) for v in values), dtype=np.int64, count=n)
    klen = np.fromiter((-1 if k is None else len(k) for k in keys), dtype=np.int64, count=n)
    framed = (vlen >= 0) & (vlen <= MAX_VALUE_BYTES) & (klen <= MAX_KEY_BYTES)
    for i in np.flatnonzero(~framed).tolist():
        if vlen[i] < 0:
            rejected.append((i, DecodeReason.BAD_JSON, "empty message (no value)"))
        elif vlen[i] > MAX_VALUE_BYTES:
            rejected.append((i, DecodeReason.OVERSIZED_VALUE, f"{vlen[i]} bytes"))
        else:
            rejected.append((i, DecodeReason.OVERSIZED_KEY, f"{klen[i]} bytes"))
    candidates = np.flatnonzero(framed)
    simple, joined = _flat_ascii_objects([values[i] for i in candidates.tolist()], vlen[candidates])
    slow = candidates[~simple].tolist()
    parts = _parse_fast(values, candidates[simple], slow, joined if simple.all() else None)
    if slow:
        slow.sort()
        parts.append(_decode_slowly(slow, values, rejected))
    tables = [_finish(table, index, keys, rejected) for table, index in parts]
    if not tables:
        tables = [_finish(MESSAGE_SCHEMA.empty_table(), np.zeros(0, np.int64), keys, rejected)]
    ticks = pa.concat_tables(tables).sort_by("index") if len(tables) > 1 else tables[0]
    index = ticks.column("index").to_numpy()
    if timestamps_ms is None:
        record_ts = pa.nulls(len(index), pa.int64())
    else:
        ms = np.asarray(timestamps_ms, dtype=np.int64)[index]
        none = (ms < 0) | (ms > np.iinfo(np.int64).max // 1_000_000)
        record_ts = pa.array(np.where(none, 0, ms) * 1_000_000, pa.int64(), mask=none)
    ticks = ticks.add_column(ticks.num_columns - 1, "record_ts", record_ts)
    rejected.sort(key=lambda r: r[0])
    return DecodedBatch(ticks, rejected)


@dataclass(frozen=True)
class DecodedRecords:
    """A batch of Kafka records decoded: the ticks the operator steps on, and what they came from."""

    # canonical columns + `record_ts` + `partition` (int32) + `offset` (int64), in record order
    ticks: pa.Table
    index: np.ndarray  # per tick row, the position of its record in the batch
    rejected: list[tuple[int, DecodeReason, str]]  # (record index, reason, detail), by index


def decode_records(keys: list[bytes | None], values: list[bytes | None],
                   timestamps_ms: list[int] | np.ndarray | None,
                   partitions: np.ndarray, offsets: np.ndarray) -> DecodedRecords:
    """Decode records (``decode_batch``), keep the canonical columns and ``record_ts``, append each
    tick's ``partition`` and ``offset`` (taken from ``partitions``/``offsets`` by record position)."""
    decoded = decode_batch(keys, values, timestamps_ms)
    idx = decoded.ticks.column("index").to_numpy()
    ticks = decoded.ticks.select(list(TICK_COLUMNS) + ["record_ts"])
    ticks = ticks.append_column("partition", pa.array(np.asarray(partitions)[idx], pa.int32()))
    ticks = ticks.append_column("offset", pa.array(np.asarray(offsets)[idx], pa.int64()))
    return DecodedRecords(ticks, idx, decoded.rejected)


def _flat_ascii_objects(vals: list[bytes], lens: np.ndarray) -> tuple[np.ndarray, bytes]:
    """Which messages Arrow's reader and the strict parser provably read alike (see module doc).

    Arrow's reader is a strict parser except for NaN/Infinity/Inf literals (hence no
    ``N`` or ``I`` outside strings) and that it skips nested values of ignored fields
    unchecked (hence flat objects only). A message left out only costs time (the slow
    path gives the same verdict), so a message after one with an odd number of quotes
    is simply left out too. Sparse positions only: no per-byte running sums.
    """
    m = len(vals)
    joined = b"\n".join(vals)
    if len(joined) == 0:
        return np.zeros(m, dtype=bool), joined
    buf = np.frombuffer(joined, dtype=np.uint8)
    starts = np.zeros(m, dtype=np.int64)
    starts[1:] = np.cumsum(lens[:-1] + 1)
    ends = starts + lens

    def per_message(pos: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(starts, pos, side="right") - 1, minlength=m)

    # Non-ASCII, control bytes and backslashes (each separator counts once for the message before it).
    rare = per_message(np.flatnonzero((buf < 0x20) | (buf > 0x7E) | (buf == 0x5C)))
    rare[:-1] -= 1
    folded = buf | 0x20  # [ and ] fold onto { and }
    braces = per_message(np.flatnonzero((folded == 0x7B) | (folded == 0x7D)))
    quotes = np.flatnonzero(buf == 0x22)
    q_start, q_end = np.searchsorted(quotes, starts), np.searchsorted(quotes, ends)
    ni = np.flatnonzero((buf == 0x4E) | (buf == 0x49))
    ni_outside = per_message(ni[np.searchsorted(quotes, ni) % 2 == 0])
    last = np.maximum(ends - 1, 0)
    ok = ((lens > 0) & (rare == 0) & (braces == 2) & (ni_outside == 0) & (q_start % 2 == 0) & (q_end % 2 == 0)
          & (buf[np.minimum(starts, len(buf) - 1)] == 0x7B) & (buf[last] == 0x7D))
    return ok, joined


# On a refusal, Arrow's reader gets each run of FAST_CHUNK messages once more; a run it refuses again goes
# to the strict parser whole. No halving: a message costs at most three Arrow reads of its bytes and one
# strict parse, whatever the mix around it (see benchmarks/decode.py).
FAST_CHUNK = 256


def _read_arrow(buf: bytes, count: int) -> pa.Table | None:
    """Arrow's reader over ``count`` newline-joined flat objects; None if it refuses any of them."""
    try:
        table = pajson.read_json(
            pa.BufferReader(buf),
            read_options=pajson.ReadOptions(block_size=max(1 << 20, len(buf) + 1)),
            parse_options=pajson.ParseOptions(explicit_schema=MESSAGE_SCHEMA, unexpected_field_behavior="ignore"),
        )
    except pa.ArrowException:
        return None
    return table if table.num_rows == count else None  # always, for flat objects; checked, not assumed


def _parse_fast(values: list[bytes], index: np.ndarray, refused: list[int],
                joined: bytes | None = None) -> list[tuple[pa.Table, np.ndarray]]:
    """Arrow's reader over the messages at ``index``. If it refuses the group, each run of ``FAST_CHUNK``
    messages is read again on its own, and every message of a run it refuses too goes to ``refused`` (the
    slow path, whose verdict the fast path only ever repeats): one linear pass, never a recursive search."""
    if len(index) == 0:
        return []
    buf = joined if joined is not None else b"\n".join(values[i] for i in index.tolist())
    table = _read_arrow(buf, len(index))
    if table is not None:
        return [(table, index)]
    if len(index) <= FAST_CHUNK:
        refused.extend(index.tolist())
        return []
    parts = []
    for start in range(0, len(index), FAST_CHUNK):
        chunk = index[start:start + FAST_CHUNK]
        table = _read_arrow(b"\n".join(values[i] for i in chunk.tolist()), len(chunk))
        if table is None:
            refused.extend(chunk.tolist())
        else:
            parts.append((table, chunk))
    return parts


class _Object(dict):
    """A JSON object that remembers which of its names were given more than once."""

    __slots__ = ("repeated",)


def _object(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    obj.repeated = set()
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                obj.repeated.add(k)
            seen.add(k)
    return obj


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_deep(text: str) -> bool:
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return False
    a = np.frombuffer(_STRING.sub("", text).encode(), dtype=np.uint8)
    step = ((a == ord("{")) | (a == ord("["))).astype(np.int32) - ((a == ord("}")) | (a == ord("]")))
    return bool(np.cumsum(step).max() > MAX_DEPTH)


def _decode_one(raw: bytes) -> tuple[dict | None, DecodeReason | None, str]:
    """The strict spec, one message: (row, None, "") or (None, reason, detail)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, DecodeReason.BAD_UTF8, str(exc)[:120]
    if _too_deep(text):
        return None, DecodeReason.BAD_JSON, f"nested deeper than {MAX_DEPTH}"
    try:  # a BOM, NaN/Infinity, bad syntax: all ValueError (JSONDecodeError is one)
        obj = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        return None, DecodeReason.BAD_JSON, str(exc)[:120]
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, DecodeReason.BAD_JSON, "unpaired surrogate escape in a string"
    if not isinstance(obj, dict):
        return None, DecodeReason.NOT_AN_OBJECT, type(obj).__name__
    twice = sorted(obj.repeated & _FIELDS)
    if twice:
        return None, DecodeReason.BAD_JSON, f"field {twice[0]!r} given more than once"
    row: dict = {}
    for name in ("v", "ts"):
        x = obj.get(name)
        if x is not None and type(x) is not int:
            return None, DecodeReason.WRONG_TYPE, f"{name} must be an integer, got {_json_type(x)}"
        if x is not None and not _INT64[0] <= x < _INT64[1]:
            return None, DecodeReason.WRONG_TYPE, f"{name} out of int64 range"
        row[name] = x
    inst = obj.get("instrument")
    if inst is not None and type(inst) is not str:
        return None, DecodeReason.WRONG_TYPE, f"instrument must be a string, got {_json_type(inst)}"
    row["instrument"] = inst
    for name in NUMERIC_COLUMNS:
        x = obj.get(name)
        if x is not None and type(x) not in (int, float):
            return None, DecodeReason.WRONG_TYPE, f"{name} must be a number, got {_json_type(x)}"
        row[name] = _to_float(x) if type(x) is int else x
    return row, None, ""


def _json_type(x: object) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}.get(type(x), "object")


def _to_float(x: int) -> float:
    """An integer literal as float64, rounded to nearest; beyond float64's range, +/-inf (as Arrow reads it)."""
    try:
        return float(x)
    except OverflowError:
        return float("inf") if x > 0 else float("-inf")


def _decode_slowly(indices: list[int], values: list[bytes], rejected: list) -> tuple[pa.Table, np.ndarray]:
    rows: dict[str, list] = {f.name: [] for f in MESSAGE_SCHEMA}
    kept = []
    for i in indices:
        row, reason, detail = _decode_one(values[i])
        if row is None:
            rejected.append((i, reason, detail))
            continue
        for name in rows:
            rows[name].append(row[name])
        kept.append(i)
    return pa.Table.from_pydict(rows, schema=MESSAGE_SCHEMA), np.asarray(kept, dtype=np.int64)


def _keys_as_text(keys: list[bytes | None], index: np.ndarray, rejected: list) -> tuple[pa.Array, np.ndarray]:
    """Keys of the given messages as a string array; bad UTF-8 keys flagged (rare path loops)."""
    raw = pa.array([keys[i] for i in index.tolist()], type=pa.binary())
    try:
        return raw.cast(pa.string()), np.zeros(len(index), dtype=bool)
    except pa.ArrowInvalid:
        bad = np.zeros(len(index), dtype=bool)
        text = []
        for j, k in enumerate(raw.to_pylist()):
            try:
                text.append(k.decode("utf-8") if k is not None else None)
            except UnicodeDecodeError:
                bad[j] = True
                text.append(None)
                rejected.append((int(index[j]), DecodeReason.BAD_UTF8, "key is not UTF-8"))
        return pa.array(text, pa.string()), bad


def _finish(table: pa.Table, index: np.ndarray, keys: list[bytes | None], rejected: list) -> pa.Table:
    """Apply version, key and required-field checks (vectorised); canonical columns + index."""
    n = table.num_rows
    version = pc.fill_null(table.column("v"), SCHEMA_VERSION).to_numpy()
    inst = table.column("instrument").combine_chunks() if n else pa.array([], pa.string())
    key_text, bad = _keys_as_text(keys, index, rejected)
    both = pc.and_(pc.is_valid(inst), pc.is_valid(key_text))
    mismatch = pc.fill_null(pc.and_(both, pc.not_equal(inst, key_text)), False).to_numpy(zero_copy_only=False)
    name = pc.coalesce(inst, key_text)
    ts_null = table.column("ts").is_null().to_numpy(zero_copy_only=False)
    price_null = table.column("price").is_null().to_numpy(zero_copy_only=False)
    no_name = name.is_null().to_numpy(zero_copy_only=False)
    long_name = pc.fill_null(pc.greater(pc.binary_length(inst), MAX_INSTRUMENT_BYTES), False) \
        .to_numpy(zero_copy_only=False)
    checks = [
        (version != SCHEMA_VERSION, DecodeReason.UNKNOWN_SCHEMA_VERSION, lambda j: f"v={int(version[j])}"),
        (long_name, DecodeReason.OVERSIZED_INSTRUMENT,
         lambda j: f"instrument is {len(inst[j].as_py().encode())} bytes (at most {MAX_INSTRUMENT_BYTES})"),
        (mismatch, DecodeReason.KEY_MISMATCH,
         lambda j: f"key {key_text[j].as_py()!r} != instrument {inst[j].as_py()!r}"),
        (no_name, DecodeReason.MISSING_FIELD, lambda j: "no instrument in key or value"),
        (ts_null, DecodeReason.MISSING_FIELD, lambda j: "ts is missing"),
        (price_null, DecodeReason.MISSING_FIELD, lambda j: "price is missing"),
    ]
    for mask, reason, detail in checks:
        for j in np.flatnonzero(mask & ~bad).tolist():
            rejected.append((int(index[j]), reason, detail(j)))
        bad |= mask
    keep = pa.array(~bad)
    cols = {"instrument": name.filter(keep), "ts": table.column("ts").filter(keep)}
    for col in NUMERIC_COLUMNS:  # + 0.0: a negative zero is zero (Python reads the literal -0 as 0, Arrow as -0.0)
        cols[col] = pc.add(table.column(col).filter(keep), 0.0)
    cols["index"] = pa.array(index[~bad], pa.int64())
    return pa.table(cols)
