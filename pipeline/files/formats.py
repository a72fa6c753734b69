"""Tick files -> canonical tick tables (see ``operators.validation``).

Canonical columns (``TICK_COLUMNS``), in order: ``instrument`` (string), ``ts`` (int64 ns since the
epoch, UTC), ``price``, ``size``, ``bid``, ``ask``, ``bid_size``, ``ask_size``
(float64; null when the source has no such value). Rows are in the order a
feed would deliver them: a single file keeps its own order; several files are
combined with a stable sort on ``ts`` (ties keep file order, files in path
order). Bad rows are kept as they are: the operator rejects them with reasons.

Formats (``--format``):
- ``parquet``, ``csv``: canonical names, or others via a mapping
  (``{"price": "last", ...}``); integer/float timestamps in ``ts_unit``,
  Arrow timestamps, or ISO 8601 strings; ``price_scale`` multiplies prices.
  Quote-only files (bid and ask, no price) use the mid price.
- ``lean-equity``: QuantConnect LEAN trade zips ``<sym>/YYYYMMDD_trade.zip``
  (ms after midnight New York time, prices x 10000).
- ``lean-fx``: LEAN FX/CFD quote zips ``<pair>/YYYYMMDD_quote.zip`` (ms after
  midnight; Oanda in UTC, FXCM in fixed UTC-5), price = mid, no size.
- ``lobster``: LOBSTER sample zips; ticks are executions (types 4 and 5) with
  the best bid/offer after each.
- ``binance-gz``: hftbacktest Binance captures (``<recv_ns> <json>`` lines);
  ticks are ``@trade`` messages, event time ``T``.
- ``nautilus``: the NautilusTrader sample files (Binance trades Parquet,
  TrueFX and HistData quote CSVs).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import zipfile
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from operators.errors import InputDataError
from operators.validation import TICK_COLUMNS

FORMATS = ("auto", "parquet", "csv", "lean-equity", "lean-fx", "lobster", "binance-gz", "nautilus")
_TS_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
NEW_YORK = ZoneInfo("America/New_York")


def canonical(columns: dict[str, pa.Array | np.ndarray | list]) -> pa.Table:
    """Build a canonical table; absent columns become nulls."""
    n = len(next(iter(columns.values())))
    arrays = []
    for name in TICK_COLUMNS:
        col = columns.get(name)
        typ = pa.string() if name == "instrument" else pa.int64() if name == "ts" else pa.float64()
        if col is None:
            arrays.append(pa.nulls(n, typ))
        else:
            arr = col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col)
            arrays.append(pc.cast(arr, typ))
    return pa.Table.from_arrays(arrays, names=list(TICK_COLUMNS))


def combine(tables: list[pa.Table]) -> pa.Table:
    """Several sources -> one feed: stable sort by event time."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return canonical({name: [] for name in TICK_COLUMNS})
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables).combine_chunks()
    order = np.argsort(table.column("ts").to_numpy(zero_copy_only=False), kind="stable")
    return table.take(pa.array(order))


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            fmt = _detect_file(f)
            if fmt:
                return fmt
        raise InputDataError(f"no tick files found under {p}; expected .parquet, .csv or a vendor layout")
    fmt = _detect_file(p)
    if fmt:
        return fmt
    raise InputDataError(f"cannot tell the format of {p}; give --format (one of {', '.join(FORMATS[1:])})")


def _detect_file(p: Path) -> str | None:
    name = p.name.lower()
    text = str(p).lower()
    if name in ("binance-btcusdt-trades.parquet", "truefx-usdjpy-quotes.csv", "histdata-eurusd-quotes.csv"):
        return "nautilus"
    if name.endswith("_trade.zip"):
        return "lean-equity"
    if name.endswith("_quote.zip") and ("forex" in text or "cfd" in text):
        return "lean-fx"
    if "lobster" in name and name.endswith(".zip"):
        return "lobster"
    if name.endswith(".gz") and ("spot" in text or "usdm" in text or "/cm/" in text or "binance" in text):
        return "binance-gz"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    return None


def read_ticks(path: str | Path, fmt: str = "auto", mapping: dict[str, str] | None = None,
               instrument: str | None = None, price_scale: float = 1.0, ts_unit: str = "ns") -> pa.Table:
    """Read a file or directory of ticks into a canonical table."""
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"input {p} does not exist")
    if fmt not in FORMATS:
        raise InputDataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if ts_unit not in _TS_UNITS:
        raise InputDataError(f"unknown ts unit {ts_unit!r}; use one of {', '.join(_TS_UNITS)}")
    if fmt == "auto":
        fmt = detect_format(p)
    readers = {"parquet": _read_generic, "csv": _read_generic, "lean-equity": _read_lean_equity,
               "lean-fx": _read_lean_fx, "lobster": _read_lobster, "binance-gz": _read_binance,
               "nautilus": _read_nautilus}
    if fmt in ("parquet", "csv"):
        files = sorted(f for f in p.rglob(f"*.{fmt}")) if p.is_dir() else [p]
        if not files:
            raise InputDataError(f"no .{fmt} files under {p}")
        return combine([_read_generic(f, fmt, mapping or {}, instrument, price_scale, ts_unit) for f in files])
    try:
        return readers[fmt](p)
    except (pa.ArrowInvalid, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InputDataError(f"cannot read {p} as {fmt}: {exc}") from None


# -- generic Parquet / CSV ----------------------------------------------------------


def _read_generic(path: Path, fmt: str, mapping: dict[str, str], instrument: str | None, price_scale: float,
                  ts_unit: str) -> pa.Table:
    unknown = set(mapping) - set(TICK_COLUMNS)
    if unknown:
        raise InputDataError(f"--map names unknown column(s) {sorted(unknown)}; canonical names are "
                             f"{', '.join(TICK_COLUMNS)}")
    try:
        raw = pq.read_table(path) if fmt == "parquet" else pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"cannot read {path} as {fmt}: {exc}") from None
    names = raw.schema.names

    def source(col: str) -> str | None:
        name = mapping.get(col, col)
        if col in mapping and name not in names:
            raise InputDataError(f"{path}: --map {col}={name} but the file has no column {name!r}; it has {names}")
        return name if name in names else None

    cols: dict[str, pa.ChunkedArray] = {}
    for col in TICK_COLUMNS:
        src = source(col)
        if src is not None:
            cols[col] = raw.column(src)
    n = raw.num_rows
    if "ts" not in cols:
        raise InputDataError(f"{path} has no ts column; it has {names}; map one with --map ts=<column>")
    if "instrument" not in cols:
        cols["instrument"] = pa.array([instrument or path.stem] * n, pa.string())
    elif instrument:
        raise InputDataError("--instrument is for files without an instrument column")
    cols["ts"] = _to_ns(cols["ts"], ts_unit, path)
    for col in ("price", "bid", "ask"):
        if col in cols:
            cols[col] = pc.multiply(pc.cast(cols[col], pa.float64()), price_scale)
    if "price" not in cols:
        if "bid" in cols and "ask" in cols:
            cols["price"] = pc.divide(pc.add(cols["bid"], cols["ask"]), 2.0)
        else:
            raise InputDataError(f"{path} has no price column (nor bid and ask); it has {names}; "
                                 "map one with --map price=<column>")
    try:
        return canonical(cols)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputDataError(f"{path}: a column has the wrong type ({exc}); check --map") from None


def _to_ns(col: pa.ChunkedArray | pa.Array, unit: str, path: Path) -> pa.Array:
    t = col.type
    if pa.types.is_timestamp(t):
        return pc.cast(pc.cast(col, pa.timestamp("ns", tz=t.tz)), pa.int64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            parsed = pc.cast(col, pa.timestamp("ns", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            try:
                parsed = pc.cast(col, pa.timestamp("ns"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputDataError(f"{path}: ts strings are not ISO 8601 ({exc})") from None
        return pc.cast(parsed, pa.int64())
    if pa.types.is_integer(t):
        return pc.multiply(pc.cast(col, pa.int64()), _TS_UNITS[unit])
    if pa.types.is_floating(t):
        return pc.cast(pc.round(pc.multiply(col, float(_TS_UNITS[unit]))), pa.int64())
    raise InputDataError(f"{path}: ts column has type {t}; need integers, timestamps or ISO 8601 strings")


# -- vendor layouts ------------------------------------------------------------------


def _files(path: Path, pattern: str) -> list[Path]:
    files = sorted(path.rglob(pattern)) if path.is_dir() else [path]
    if not files:
        raise InputDataError(f"no {pattern} files under {path}")
    return files


def _csv_in_zip(path: Path, names: list[str], types: dict[str, pa.DataType] | None = None,
                member_pattern: str | None = None) -> pa.Table:
    with zipfile.ZipFile(path) as z:
        members = [m for m in z.namelist() if m.endswith(".csv") and (member_pattern is None or
                                                                        re.search(member_pattern, m))]
        if len(members) != 1:
            raise InputDataError(f"{path}: expected one CSV inside, found {members}")
        data = z.read(members[0])
    return pacsv.read_csv(pa.BufferReader(data), read_options=pacsv.ReadOptions(column_names=names),
                          convert_options=pacsv.ConvertOptions(column_types=types or {}))


def _date_of(path: Path) -> dt.date:
    m = re.search(r"(\d{4})-?(\d{2})-?(\d{2})", path.name)
    if not m:
        raise InputDataError(f"{path}: no YYYYMMDD or YYYY-MM-DD date in the file name")
    return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _midnight_ns(day: dt.date, tz: dt.tzinfo) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * 1_000_000_000


def _read_lean_equity(path: Path) -> pa.Table:
    tables = []
    for f in _files(path, "*_trade.zip"):
        t = _csv_in_zip(f, ["time_ms", "price", "size", "exchange", "sale_condition", "suspicious"],
                        {"sale_condition": pa.string(), "exchange": pa.string()})
        base = _midnight_ns(_date_of(f), NEW_YORK)
        ts = base + np.round(t.column("time_ms").to_numpy().astype(np.float64) * 1e6).astype(np.int64)
        tables.append(canonical({"instrument": [f.parent.name.upper()] * t.num_rows, "ts": ts,
                                 "price": pc.divide(pc.cast(t.column("price"), pa.float64()), 10_000.0),
                                 "size": t.column("size")}))
    return combine(tables)


def _read_lean_fx(path: Path) -> pa.Table:
    tables = []
    for f in _files(path, "*_quote.zip"):
        venue = "FXCM" if "fxcm" in [part.lower() for part in f.parts] else "OANDA"
        tz = dt.timezone(dt.timedelta(hours=-5)) if venue == "FXCM" else dt.timezone.utc
        t = _csv_in_zip(f, ["time_ms", "bid", "ask"])
        base = _midnight_ns(_date_of(f), tz)
        ts = base + np.round(t.column("time_ms").to_numpy().astype(np.float64) * 1e6).astype(np.int64)
        bid, ask = pc.cast(t.column("bid"), pa.float64()), pc.cast(t.column("ask"), pa.float64())
        tables.append(canonical({"instrument": [f"{venue}:{f.parent.name.upper()}"] * t.num_rows, "ts": ts,
                                 "price": pc.divide(pc.add(bid, ask), 2.0), "bid": bid, "ask": ask}))
    return combine(tables)


def _read_lobster(path: Path) -> pa.Table:
    tables = []
    for f in _files(path, "LOBSTER_SampleFile_*.zip"):
        sym = f.name.split("_")[2]
        msg = _csv_in_zip(f, ["time", "type", "order_id", "size", "price", "direction"], member_pattern="message")
        book = _csv_in_zip(f, ["ask", "ask_size", "bid", "bid_size"], member_pattern="orderbook")
        kind = msg.column("type").to_numpy()
        rows = np.flatnonzero((kind == 4) | (kind == 5))
        base = _midnight_ns(_date_of(f), NEW_YORK)
        ts = base + np.round(msg.column("time").to_numpy()[rows] * 1e9).astype(np.int64)

        def side(name: str, scale: float) -> np.ndarray:
            v = book.column(name).to_numpy().astype(np.float64)[rows]
            return np.where(np.abs(book.column("ask" if "ask" in name else "bid").to_numpy()[rows]) >= 9_999_999_999,
                            np.nan, v / scale)

        tables.append(canonical({
            "instrument": [sym] * len(rows), "ts": ts,
            "price": msg.column("price").to_numpy()[rows] / 10_000.0,
            "size": msg.column("size").to_numpy()[rows].astype(np.float64),
            "bid": pa.array(side("bid", 10_000.0), from_pandas=True),
            "ask": pa.array(side("ask", 10_000.0), from_pandas=True),
            "bid_size": pa.array(side("bid_size", 1.0), from_pandas=True),
            "ask_size": pa.array(side("ask_size", 1.0), from_pandas=True),
        }))
    return combine(tables)


def _read_binance(path: Path) -> pa.Table:
    tables = []
    for f in _files(path, "*.gz"):
        market = f.parent.name.lower()
        names, ts, price, size = [], [], [], []
        with gzip.open(f, "rb") as fh:
            for line in fh:
                if b"@trade" not in line:
                    continue
                data = json.loads(line.split(b" ", 1)[1])["data"]
                names.append(f"{market}:{data['s'].upper()}")
                ts.append(int(data["T"]) * 1_000_000)
                price.append(float(data["p"]))
                size.append(float(data["q"]))
        order = np.argsort(np.asarray(ts, dtype=np.int64), kind="stable")  # trades by trade time
        tables.append(canonical({"instrument": pa.array(names).take(pa.array(order)),
                                 "ts": np.asarray(ts, dtype=np.int64)[order],
                                 "price": np.asarray(price)[order], "size": np.asarray(size)[order]}))
    return combine(tables)


def _read_nautilus(path: Path) -> pa.Table:
    files = [f for f in _files(path, "*") if _detect_file(f) == "nautilus"] if path.is_dir() else [path]
    tables = []
    for f in files:
        name = f.name.lower()
        if name == "binance-btcusdt-trades.parquet":
            t = pq.read_table(f)
            tables.append(canonical({"instrument": ["BTCUSDT"] * t.num_rows,
                                     "ts": _to_ns(t.column("timestamp"), "ns", f),
                                     "price": t.column("price"), "size": t.column("quantity")}))
        elif name == "truefx-usdjpy-quotes.csv":
            t = pacsv.read_csv(f)
            bid, ask = pc.cast(t.column("bid"), pa.float64()), pc.cast(t.column("ask"), pa.float64())
            tables.append(canonical({"instrument": ["USDJPY"] * t.num_rows, "ts": _to_ns(t.column("timestamp"), "ns", f),
                                     "price": pc.divide(pc.add(bid, ask), 2.0), "bid": bid, "ask": ask}))
        elif name == "histdata-eurusd-quotes.csv":
            t = pacsv.read_csv(f, read_options=pacsv.ReadOptions(column_names=["time", "bid", "ask", "volume"]),
                               convert_options=pacsv.ConvertOptions(column_types={"time": pa.string()}))
            est = dt.timezone(dt.timedelta(hours=-5))
            stamps = pc.strptime(pc.utf8_slice_codeunits(t.column("time"), 0, 15), format="%Y%m%d %H%M%S",
                                 unit="s")
            millis = pc.cast(pc.utf8_slice_codeunits(t.column("time"), 15, 18), pa.int64())
            ts = pc.add(pc.multiply(pc.cast(stamps, pa.int64()), 1_000_000_000), pc.multiply(millis, 1_000_000))
            ts = pc.subtract(ts, int(est.utcoffset(None).total_seconds()) * 1_000_000_000)
            bid, ask = pc.cast(t.column("bid"), pa.float64()), pc.cast(t.column("ask"), pa.float64())
            tables.append(canonical({"instrument": ["EURUSD"] * t.num_rows, "ts": ts,
                                     "price": pc.divide(pc.add(bid, ask), 2.0), "bid": bid, "ask": ask}))
        else:
            raise InputDataError(f"{f} is not one of the NautilusTrader sample files this reader knows")
    return combine(tables)


