"""Sources yield micro-batches of canonical ticks (see ``operators.validation``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from pipeline.config import DEFAULT_MAX_BATCH_TICKS


@dataclass(frozen=True)
class MicroBatch:
    ticks: pa.Table  # canonical tick columns
    first_seq: int  # 0-based position of the batch's first tick in its source


class TableSource:
    """A tick table cut into micro-batches of at most ``max_batch_ticks`` rows, in row order.

    Slicing is zero-copy; this is how a file backtest feeds the operator the
    same way the live consumer will.
    """

    def __init__(self, table: pa.Table, max_batch_ticks: int = DEFAULT_MAX_BATCH_TICKS):
        if max_batch_ticks < 1:
            raise ValueError(f"max_batch_ticks must be >= 1, got {max_batch_ticks}")
        self.table = table
        self.max_batch_ticks = max_batch_ticks

    @property
    def total(self) -> int:
        return self.table.num_rows

    def __len__(self) -> int:
        return -(-self.table.num_rows // self.max_batch_ticks)

    def __iter__(self) -> Iterator[MicroBatch]:
        for start in range(0, self.table.num_rows, self.max_batch_ticks):
            yield MicroBatch(self.table.slice(start, self.max_batch_ticks), start)
