"""Tick messages on Kafka: the JSON schema, batch decoding into columns, and reasons.

Message schema, version 1 (one JSON object per Kafka message, UTF-8; the
message key is the instrument, UTF-8)::

    {"v": 1, "instrument": "AAPL", "ts": 1700000000123456789,
     "price": 189.52, "size": 100,
     "bid": 189.51, "ask": 189.53, "bid_size": 300, "ask_size": 200}

- ``v`` (int, optional, default 1): schema version; other versions are refused.
- ``instrument`` (string, optional): must equal the key when both are given;
  when absent, the key names the instrument.
- ``ts`` (int): event time, nanoseconds since the Unix epoch (UTC).
- ``price`` (number), ``size`` (number, optional), ``bid``, ``ask``,
  ``bid_size``, ``ask_size`` (numbers, optional). Unknown fields are ignored.

A whole batch is decoded at once: the message values are joined into one
newline-delimited buffer and parsed by Arrow's JSON reader into columns. Only
when that fails (a malformed message somewhere in the batch) does the batch
fall back to decoding message by message, to find the bad ones and keep the
rest. The per-message Python work on the fast path is one list comprehension
over the records the Kafka client hands us.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

SCHEMA_VERSION = 1
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 4096

_NUMERIC = ("price", "size", "bid", "ask", "bid_size", "ask_size")
MESSAGE_SCHEMA = pa.schema(
    [pa.field("v", pa.int64()), pa.field("instrument", pa.string()), pa.field("ts", pa.int64())]
    + [pa.field(name, pa.float64()) for name in _NUMERIC]
)


class DecodeReason(str, Enum):
    """Why a message could not become a tick (before the operator's own checks)."""

    BAD_UTF8 = "bad_utf8"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    KEY_MISMATCH = "key_mismatch"
    OVERSIZED_KEY = "oversized_key"
    OVERSIZED_VALUE = "oversized_value"


@dataclass(frozen=True)
class DecodedBatch:
    """Canonical tick columns for the messages that decoded, and reasons for the rest."""

    ticks: pa.Table  # canonical columns + `index` (position of the message in the batch)
    rejected: list[tuple[int, DecodeReason, str]]  # (message index, reason, detail)


def decode_batch(keys: list[bytes | None], values: list[bytes | None]) -> DecodedBatch:
    """Decode the values (and keys) of one poll's messages into a tick table."""
    n = len(values)
    rejected: list[tuple[int, DecodeReason, str]] = []
    ok = np.ones(n, dtype=bool)
    for i, (k, v) in enumerate(zip(keys, values)):
        # Cheap byte checks; a value with a newline cannot be framed as NDJSON,
        # so it takes the slow path (it may still be valid JSON).
        if v is None or len(v) > MAX_VALUE_BYTES:
            reason = DecodeReason.OVERSIZED_VALUE if v is not None else DecodeReason.BAD_JSON
            rejected.append((i, reason, f"{len(v)} bytes" if v is not None else "empty message (no value)"))
            ok[i] = False
        elif k is not None and len(k) > MAX_KEY_BYTES:
            rejected.append((i, DecodeReason.OVERSIZED_KEY, f"{len(k)} bytes"))
            ok[i] = False
    idx = np.flatnonzero(ok)
    fast = [i for i in idx.tolist() if b"\n" not in values[i] and b"\r" not in values[i]]
    slow = sorted(set(idx.tolist()) - set(fast))
    table = None
    if fast:
        try:
            buf = b"\n".join(values[i] for i in fast)
            table = pajson.read_json(
                pa.BufferReader(buf),
                read_options=pajson.ReadOptions(block_size=max(1 << 20, len(buf) + 1)),
                parse_options=pajson.ParseOptions(explicit_schema=MESSAGE_SCHEMA,
                                                  unexpected_field_behavior="ignore"),
            )
            if table.num_rows != len(fast):  # blank or multi-object lines: not one tick per message
                table = None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            table = None
        if table is None:
            slow = sorted(set(slow) | set(fast))
            fast = []
    parts = []
    if fast:
        parts.append(_finish(table, np.asarray(fast, dtype=np.int64), keys, rejected))
    if slow:
        parts.append(_finish(*_decode_slowly(slow, values, rejected), keys, rejected))
    if parts:
        ticks = pa.concat_tables(parts).sort_by("index") if len(parts) > 1 else parts[0]
    else:
        ticks = _finish(MESSAGE_SCHEMA.empty_table(), np.zeros(0, np.int64), keys, rejected)
    rejected.sort(key=lambda r: r[0])
    return DecodedBatch(ticks, rejected)


def _decode_slowly(indices: list[int], values: list[bytes], rejected: list) -> tuple[pa.Table, np.ndarray]:
    rows: dict[str, list] = {f.name: [] for f in MESSAGE_SCHEMA}
    kept = []
    for i in indices:
        try:
            text = values[i].decode("utf-8")
        except UnicodeDecodeError as exc:
            rejected.append((i, DecodeReason.BAD_UTF8, str(exc)[:120]))
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            rejected.append((i, DecodeReason.BAD_JSON, str(exc)[:120]))
            continue
        if not isinstance(obj, dict):
            rejected.append((i, DecodeReason.NOT_AN_OBJECT, type(obj).__name__))
            continue
        problem = _check_types(obj)
        if problem:
            rejected.append((i, DecodeReason.WRONG_TYPE, problem))
            continue
        for f in MESSAGE_SCHEMA:
            value = obj.get(f.name)
            rows[f.name].append(float(value) if f.name in _NUMERIC and value is not None else value)
        kept.append(i)
    return pa.Table.from_pydict(rows, schema=MESSAGE_SCHEMA), np.asarray(kept, dtype=np.int64)


def _check_types(obj: dict) -> str | None:
    for name in ("v", "ts"):
        v = obj.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            return f"{name} must be an integer, got {type(v).__name__}"
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            return f"{name} out of int64 range"
    inst = obj.get("instrument")
    if inst is not None and not isinstance(inst, str):
        return f"instrument must be a string, got {type(inst).__name__}"
    for name in _NUMERIC:
        v = obj.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{name} must be a number, got {type(v).__name__}"
        if isinstance(v, int) and not math.isfinite(float(v)):
            return f"{name} out of range"
    return None


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
    checks = [
        (version != SCHEMA_VERSION, DecodeReason.UNKNOWN_SCHEMA_VERSION, lambda j: f"v={int(version[j])}"),
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
    for col in _NUMERIC:
        cols[col] = table.column(col).filter(keep)
    cols["index"] = pa.array(index[~bad], pa.int64())
    return pa.table(cols)
