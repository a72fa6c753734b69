"""Sinks take what the operator produced: the file sink writes Parquet; forecast messages in Arrow IPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

FORECAST_SCHEMA = pa.schema([
    pa.field("instrument", pa.string()),
    pa.field("ts", pa.int64()),  # event time of the tick, ns since the epoch (UTC)
    pa.field("seq", pa.int64()),  # 0-based row of the tick in the input
    pa.field("price", pa.float64()),
    pa.field("forecast", pa.float64()),  # log return over the next `horizon` ticks of the instrument
])
REJECT_SCHEMA = pa.schema([
    pa.field("seq", pa.int64()),
    pa.field("reason", pa.string()),
])

# `output_format = "arrow"`: a message's value is an Arrow IPC stream of forecasts with this schema (its
# metadata carries v, model_version, horizon_ticks), announced by a `content-type` header.
ARROW_CONTENT_TYPE = b"application/vnd.apache.arrow.stream"
FORECAST_MESSAGE_SCHEMA = pa.schema([
    pa.field("instrument", pa.string()),
    pa.field("ts", pa.int64()),  # event time of the tick, ns since the epoch (UTC)
    pa.field("forecast", pa.float64()),
    pa.field("topic", pa.dictionary(pa.int32(), pa.string())),  # where the tick was read
    pa.field("partition", pa.int32()),
    pa.field("offset", pa.int64()),
])


def encode_forecast_batch(table: pa.Table, metadata: dict[str, str]) -> bytes:
    """One forecast message: the rows of ``table`` (FORECAST_MESSAGE_SCHEMA) as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_forecast_message(value: bytes) -> pa.Table:
    """The forecasts of one `output_format = "arrow"` message (metadata in ``table.schema.metadata``)."""
    return ipc.open_stream(value).read_all()


class ForecastCollector:
    """Accumulates forecast chunks in memory (columnar) for a file backtest."""

    def __init__(self) -> None:
        self._chunks: list[pa.RecordBatch] = []
        self._rejects: list[pa.RecordBatch] = []

    def add(self, ticks: pa.Table, first_seq: int, rows: np.ndarray, forecasts: np.ndarray,
            reject_rows: np.ndarray, reject_labels: list[str]) -> None:
        idx = pa.array(rows, type=pa.int64())
        self._chunks.append(pa.RecordBatch.from_arrays([
            ticks.column("instrument").take(idx).combine_chunks().cast(pa.string()),
            ticks.column("ts").take(idx).combine_chunks().cast(pa.int64()),
            pa.array(rows + first_seq, type=pa.int64()),
            ticks.column("price").take(idx).combine_chunks().cast(pa.float64()),
            pa.array(forecasts, type=pa.float64()),
        ], schema=FORECAST_SCHEMA))
        if len(reject_rows):
            self._rejects.append(pa.RecordBatch.from_arrays([
                pa.array(reject_rows + first_seq, type=pa.int64()),
                pa.array(reject_labels, type=pa.string()),
            ], schema=REJECT_SCHEMA))

    def forecasts(self) -> pa.Table:
        return pa.Table.from_batches(self._chunks, schema=FORECAST_SCHEMA).combine_chunks()

    def rejects(self) -> pa.Table:
        return pa.Table.from_batches(self._rejects, schema=REJECT_SCHEMA).combine_chunks()


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write atomically (temp + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path
