"""The file sink: a backtest's forecasts and rejects collected in memory, then written as Parquet
(the schemas: ``pipeline.wire.schemas``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.wire.schemas import REJECT_SCHEMA, forecast_schema


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
