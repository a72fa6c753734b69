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
# A model with several outputs per tick (schema v2): one column per output, ``forecast_<name>``, in the model's
# output order, instead of ``forecast``.


def output_column(name: str) -> str:
    return f"forecast_{name}"


def forecast_schema(output_names: list[str] | None = None) -> pa.Schema:
    """FORECAST_SCHEMA (one output), or with a column per output for several."""
    return _with_outputs(FORECAST_SCHEMA, output_names)


def _with_outputs(schema: pa.Schema, output_names: list[str] | None) -> pa.Schema:
    if not output_names:
        return schema
    i = schema.get_field_index("forecast")
    schema = schema.remove(i)
    for j, name in enumerate(output_names):
        schema = schema.insert(i + j, pa.field(output_column(name), pa.float64()))
    return schema


REJECT_SCHEMA = pa.schema([
    pa.field("seq", pa.int64()),
    pa.field("reason", pa.string()),
])

# `output_format = "arrow"`: a message's value is an Arrow IPC stream of forecasts with this schema (its
# metadata carries v, model_version, horizon_ticks), announced by a `content-type` header. Schema v2 (a model with
# several outputs): a column per output instead of `forecast`; metadata v = "2", model_version, and outputs (JSON:
# each output's name, horizon, kind, quantile).
ARROW_CONTENT_TYPE = b"application/vnd.apache.arrow.stream"
FORECAST_MESSAGE_SCHEMA = pa.schema([
    pa.field("instrument", pa.string()),
    pa.field("ts", pa.int64()),  # event time of the tick, ns since the epoch (UTC)
    pa.field("forecast", pa.float64()),
    pa.field("topic", pa.dictionary(pa.int32(), pa.string())),  # where the tick was read
    pa.field("partition", pa.int32()),
    pa.field("offset", pa.int64()),
])


def forecast_message_schema(output_names: list[str] | None = None) -> pa.Schema:
    """FORECAST_MESSAGE_SCHEMA (v1), or v2's with a column per output."""
    return _with_outputs(FORECAST_MESSAGE_SCHEMA, output_names)


def encode_forecast_batch(table: pa.Table, metadata: dict[str, str]) -> bytes:
    """One forecast message: the rows of ``table`` (FORECAST_MESSAGE_SCHEMA) as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_forecast_message(value: bytes) -> pa.Table:
    """The forecasts of one `output_format = "arrow"` message (metadata in ``table.schema.metadata``).
    Checked in full: bytes that read as Arrow but break its invariants raise ``pa.ArrowInvalid`` here rather
    than crash the reader's first compute call."""
    table = ipc.open_stream(value).read_all()
    table.validate(full=True)
    return table


class ForecastCollector:
    """Accumulates forecast chunks in memory (columnar) for a file backtest."""

    def __init__(self, output_names: list[str] | None = None) -> None:
        """``output_names``: a model with several outputs (forecasts (n, K)), one column each."""
        self._schema = forecast_schema(output_names)
        self._chunks: list[pa.RecordBatch] = []
        self._rejects: list[pa.RecordBatch] = []

    def add(self, ticks: pa.Table, first_seq: int, rows: np.ndarray, forecasts: np.ndarray,
            reject_rows: np.ndarray, reject_labels: list[str]) -> None:
        idx = pa.array(rows, type=pa.int64())
        columns = [forecasts] if forecasts.ndim == 1 else list(forecasts.T)
        self._chunks.append(pa.RecordBatch.from_arrays([
            ticks.column("instrument").take(idx).combine_chunks().cast(pa.string()),
            ticks.column("ts").take(idx).combine_chunks().cast(pa.int64()),
            pa.array(rows + first_seq, type=pa.int64()),
            ticks.column("price").take(idx).combine_chunks().cast(pa.float64()),
            *(pa.array(np.ascontiguousarray(c), type=pa.float64()) for c in columns),
        ], schema=self._schema))
        if len(reject_rows):
            self._rejects.append(pa.RecordBatch.from_arrays([
                pa.array(reject_rows + first_seq, type=pa.int64()),
                pa.array(reject_labels, type=pa.string()),
            ], schema=REJECT_SCHEMA))

    def forecasts(self) -> pa.Table:
        return pa.Table.from_batches(self._chunks, schema=self._schema).combine_chunks()

    def rejects(self) -> pa.Table:
        return pa.Table.from_batches(self._rejects, schema=REJECT_SCHEMA).combine_chunks()


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write atomically (temp + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path
