"""The Arrow-backed per-instrument state table.

One row per (partition, instrument): the model's recurrent state as fixed-size
float32 vectors (h and c of every LSTM layer, h of a GRU or SimpleRNN layer:
:attr:`StateShape.vectors`), plus what the features need from the previous tick: its price and event time
always, its mid and trade sign only for a bundle whose features need them
(:attr:`StateShape.previous`; the built-in five features need neither).
Every column lives in an Arrow buffer; the hot path reads and writes NumPy
arrays that are zero-copy views of those buffers, and :meth:`StateTable.to_arrow`
hands the same memory to Arrow (IPC, Parquet) without copying the numbers.

Capacity grows by doubling. Idle rows can be reclaimed (:meth:`expire`); rows
move when others are reclaimed, so callers hold row numbers only for the
duration of one micro-batch. After a reclaim the table shrinks too: capacity
halves while fewer than a quarter of its rows are live (never below the
initial capacity; the gap between the grow and shrink points means a table
near a boundary does not reallocate back and forth), and the instrument
index is rebuilt to the rows left.

The instrument index (:class:`operators.index.RowIndex`) is a hash table in
NumPy arrays, so a batch's thousands of lookups are a few vectorised passes
rather than one Python dict probe per instrument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from operators import index
from operators.index import RowIndex, identities, name_words
from operators.rows import compaction_moves, shrunk_capacity

NO_TS = np.iinfo(np.int64).min


@dataclass(frozen=True)
class StateShape:
    """The recurrent layers whose state a row holds: ``cells`` is (kind, units) per layer, kind "lstm"
    (h and c), "gru" or "rnn" (h). ``StateShape(layers, hidden)`` is the built-in model's: that many LSTMs
    of ``hidden`` units; for any other stack ``hidden`` is the widest layer's units (see :meth:`of`).
    ``previous``: what the rows keep of each instrument's previous tick beyond price and time ("mid",
    "sign": :attr:`operators.features.FeatureSpec.previous`), one column each."""

    layers: int
    hidden: int
    cells: tuple[tuple[str, int], ...] = ()
    previous: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.cells:
            object.__setattr__(self, "cells", (("lstm", self.hidden),) * self.layers)
        elif len(self.cells) != self.layers:
            raise ValueError(f"StateShape: {self.layers} layers but {len(self.cells)} cells")

    @classmethod
    def of(cls, cells: "Sequence[tuple[str, int]]") -> "StateShape":
        cells = tuple((str(k), int(u)) for k, u in cells)
        return cls(len(cells), max((u for _, u in cells), default=0), cells)

    @property
    def vectors(self) -> tuple[tuple[str, int], ...]:
        """(column, width) of each state vector: h<i> (and c<i> for an LSTM) per layer i."""
        return tuple((f"{s}{i}", units) for i, (kind, units) in enumerate(self.cells)
                     for s in (("h", "c") if kind == "lstm" else ("h",)))

    @property
    def builtin(self) -> bool:
        return self.cells == (("lstm", self.hidden),) * self.layers

    @property
    def raw_bytes_per_row(self) -> int:
        """Every state vector, float32."""
        return 4 * sum(width for _, width in self.vectors)

    def metadata(self) -> dict[str, str]:
        """Arrow schema metadata; ``cells`` only for stacks other than the built-in one (old checkpoints lack it),
        ``previous`` only when the rows keep more than the previous price and time."""
        meta = {"layers": str(self.layers), "hidden": str(self.hidden)}
        if not self.builtin:
            meta["cells"] = ",".join(f"{k}:{u}" for k, u in self.cells)
        if self.previous:
            meta["previous"] = ",".join(self.previous)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict) -> "StateShape":
        layers, hidden = int(meta[b"layers"]), int(meta[b"hidden"])
        previous = tuple(meta[b"previous"].decode().split(",")) if meta.get(b"previous") else ()
        cells = meta.get(b"cells")
        if not cells:
            return cls(layers, hidden, previous=previous)
        parsed = [part.split(":") for part in cells.decode().split(",")]
        return cls(layers, hidden, tuple((k, int(u)) for k, u in parsed), previous)


class _ArrowColumn:
    """A fixed-width column in an Arrow buffer with a writable NumPy view."""

    def __init__(self, dtype: np.dtype, width: int, capacity: int):
        self.dtype = np.dtype(dtype)
        self.width = width
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.buffer = pa.allocate_buffer(max(capacity, 1) * self.width * self.dtype.itemsize)
        flat = np.frombuffer(self.buffer, dtype=self.dtype)
        self.view = flat.reshape(-1, self.width) if self.width > 1 else flat

    def resize(self, capacity: int, n_rows: int) -> None:
        old = self.view
        self._alloc(capacity)
        self.view[:n_rows] = old[:n_rows]

    def to_arrow(self, n_rows: int, arrow_type: pa.DataType) -> pa.Array:
        nbytes = n_rows * self.width * self.dtype.itemsize
        values = pa.Array.from_buffers(
            arrow_type if self.width == 1 else pa.from_numpy_dtype(self.dtype),
            n_rows * self.width,
            [None, self.buffer.slice(0, nbytes)],
        )
        if self.width == 1:
            return values
        return pa.FixedSizeListArray.from_arrays(values, self.width)


# Scalar columns: name -> (numpy dtype, arrow type, value of a fresh row)
_SCALARS: dict[str, tuple[str, pa.DataType, float | int]] = {
    "partition": ("int32", pa.int32(), 0),
    "last_price": ("float64", pa.float64(), np.nan),
    "last_ts": ("int64", pa.int64(), NO_TS),
    "tick_count": ("int64", pa.int64(), 0),
    "last_offset": ("int64", pa.int64(), -1),
}
# Kept only when StateShape.previous names them: previous-tick value -> (column, numpy dtype, arrow type, fresh)
_PREVIOUS: dict[str, tuple[str, str, pa.DataType, float | int]] = {
    "mid": ("last_mid", "float64", pa.float64(), np.nan),  # NaN: no previous tick, or it had no quotes
    "sign": ("last_sign", "int8", pa.int8(), 0),
}


def scalar_columns(shape: StateShape) -> dict[str, tuple[str, pa.DataType, float | int]]:
    """The scalar columns of a table of ``shape``: the fixed ones, then one per ``shape.previous``."""
    unknown = [p for p in shape.previous if p not in _PREVIOUS]
    if unknown:
        raise ValueError(f"state rows cannot keep {unknown} of the previous tick; known: {', '.join(_PREVIOUS)}")
    return _SCALARS | {_PREVIOUS[p][0]: _PREVIOUS[p][1:] for p in shape.previous}


def _object_array(names: Sequence[str]) -> np.ndarray:
    out = np.empty(len(names), dtype=object)
    out[:] = names
    return out


class StateTable:
    """Per-(partition, instrument) rows of recurrent state and previous-tick values."""

    def __init__(self, shape: StateShape, capacity: int = 1024, min_capacity: int | None = None):
        self.shape = shape
        self.capacity = max(int(capacity), 1)
        self.min_capacity = max(int(min_capacity), 1) if min_capacity is not None else self.capacity
        self.n_rows = 0
        self._names = np.empty(self.capacity, dtype=object)  # instrument of each row (str)
        self._keys = np.zeros(self.capacity, dtype=np.uint64)  # index.row_keys() of each row
        self._ident = np.zeros((self.capacity, 3), dtype=np.uint64)  # index.identities() of each row
        self._index = RowIndex()
        self._vectors = {name: _ArrowColumn(np.float32, width, self.capacity) for name, width in shape.vectors}
        self._scalar_types = scalar_columns(shape)
        self._scalars = {
            name: _ArrowColumn(np.dtype(dt), 1, self.capacity) for name, (dt, _, _) in self._scalar_types.items()
        }

    # -- views for the hot path ------------------------------------------------
    def h(self, layer: int) -> np.ndarray:
        return self._vectors[f"h{layer}"].view

    def c(self, layer: int) -> np.ndarray:
        return self._vectors[f"c{layer}"].view

    def vector(self, name: str) -> np.ndarray:
        """A state vector column by name (``StateShape.vectors``)."""
        return self._vectors[name].view

    def column(self, name: str) -> np.ndarray:
        return self._scalars[name].view

    def previous(self, what: str) -> np.ndarray:
        """The column keeping ``what`` ("mid", "sign": one of ``shape.previous``) of each row's previous tick."""
        return self._scalars[_PREVIOUS[what][0]].view

    @property
    def instruments(self) -> list[str]:
        return self._names[: self.n_rows].tolist()

    @property
    def index_nbytes(self) -> int:
        """Bytes of the (partition, instrument) -> row index and the row names array (not the strings)."""
        return self._index.nbytes + self._keys.nbytes + self._ident.nbytes + self._names.nbytes

    def __len__(self) -> int:
        return self.n_rows

    # -- row lookup ------------------------------------------------------------
    def lookup(self, partition: int, instruments: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each instrument of ``partition``, -1 where the table has none."""
        return self.lookup_many(np.full(len(instruments), partition, dtype=np.int64), instruments)

    def lookup_many(self, partitions: np.ndarray, instruments: Sequence[str] | np.ndarray,
                    words: np.ndarray | None = None) -> np.ndarray:
        """Rows of (partitions[i], instruments[i]) pairs, -1 where absent (vectorised: see RowIndex).

        ``words``: the instruments' :func:`operators.index.name_words`, if the caller has them.
        """
        if len(instruments) == 0 or self.n_rows == 0:
            return np.full(len(instruments), -1, dtype=np.int64)
        names = instruments if isinstance(instruments, np.ndarray) else _object_array(instruments)
        partitions = np.asarray(partitions)
        ident = identities(partitions, name_words(names) if words is None else words)
        return self._index.find(index.row_keys(partitions, names), ident, names, self._names[: self.n_rows])

    def insert(self, keys: list[tuple[int, str]], words: np.ndarray | None = None) -> np.ndarray:
        """Append fresh rows (zero state, no previous tick) for new (partition, instrument) keys.

        ``words``: the names' :func:`operators.index.name_words`, if the caller has them.
        """
        n_new = len(keys)
        start = self.n_rows
        self._reserve(start + n_new)
        rows = np.arange(start, start + n_new, dtype=np.int64)
        parts = np.fromiter((p for p, _ in keys), dtype=np.int64, count=n_new)
        names = _object_array([k for _, k in keys])
        keys64 = index.row_keys(parts, names)
        ident = identities(parts, name_words(names) if words is None else words)
        self._names[start:start + n_new] = names
        self._keys[start:start + n_new] = keys64
        self._ident[start:start + n_new] = ident
        self.n_rows += n_new
        self._reset_rows(rows)
        self._scalars["partition"].view[rows] = parts.astype(np.int32)
        if 2 * (self._index.size + n_new) > self._index.n_slots:
            self._index.rebuild(self._keys[: self.n_rows], self._ident[: self.n_rows])
        else:
            self._index.add(keys64, ident, rows)
        return rows

    def _reset_rows(self, rows: np.ndarray) -> None:
        for col in self._vectors.values():
            col.view[rows] = 0.0
        for name, (_, _, fresh) in self._scalar_types.items():
            if name != "partition":
                self._scalars[name].view[rows] = fresh

    def _reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        capacity = self.capacity
        while capacity < n:
            capacity *= 2
        self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        for col in [*self._vectors.values(), *self._scalars.values()]:
            col.resize(capacity, self.n_rows)
        n = self.n_rows
        names, keys, ident = self._names, self._keys, self._ident
        self._names = np.empty(capacity, dtype=object)
        self._names[:n] = names[:n]
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._keys[:n] = keys[:n]
        self._ident = np.zeros((capacity, 3), dtype=np.uint64)
        self._ident[:n] = ident[:n]
        self.capacity = capacity

    def _shrink(self) -> None:
        """Give memory back after rows were reclaimed (the index is rebuilt to the rows left)."""
        capacity = shrunk_capacity(self.capacity, self.n_rows, self.min_capacity)
        if capacity < self.capacity:
            self._resize(capacity)

    # -- expiry ----------------------------------------------------------------
    def expire(self, partition: int, idle_before_ts: int, removed: list[tuple[int, str]] | None = None) -> int:
        """Reclaim rows of ``partition`` whose last tick is older than ``idle_before_ts``.

        Survivors keep their values bit for bit; the last rows move into the
        holes, and the table shrinks if it is mostly empty. Returns the number of
        rows reclaimed; their (partition, instrument) keys are appended to
        ``removed`` if given (for side tables that must forget them too).
        """
        n = self.n_rows
        last_ts = self.column("last_ts")[:n]
        part = self.column("partition")[:n]
        dead = np.flatnonzero((part == partition) & (last_ts < idle_before_ts))
        if len(dead) == 0:
            return 0
        n_keep = n - len(dead)
        holes, movers = compaction_moves(n, dead)
        if removed is not None:
            removed.extend(zip(repeat(partition), self._names[dead].tolist()))
        for col in [*self._vectors.values(), *self._scalars.values()]:
            col.view[holes] = col.view[movers]
        self._names[holes] = self._names[movers]
        self._keys[holes] = self._keys[movers]
        self._ident[holes] = self._ident[movers]
        self._names[n_keep:n] = None  # let the reclaimed names go
        self.n_rows = n_keep
        self._shrink()
        self._index.rebuild(self._keys[:n_keep], self._ident[:n_keep])
        return len(dead)

    # -- Arrow -----------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the table's buffers (allocated capacity)."""
        cols = [*self._vectors.values(), *self._scalars.values()]
        return sum(col.buffer.size for col in cols)

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field("instrument", pa.string())]
        fields += [pa.field(name, typ) for name, (_, typ, _) in self._scalar_types.items()]
        fields += [pa.field(name, pa.list_(pa.float32(), width)) for name, width in self.shape.vectors]
        return pa.schema(fields, metadata=self.shape.metadata())

    def to_arrow(self) -> pa.Table:
        """The live rows as an Arrow table; numeric columns share memory with the table."""
        n = self.n_rows
        arrays = [pa.array(self._names[:n], type=pa.string())]
        arrays += [self._scalars[name].to_arrow(n, typ) for name, (_, typ, _) in self._scalar_types.items()]
        arrays += [col.to_arrow(n, None) for col in self._vectors.values()]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema())

    def partition_to_arrow(self, partition: int) -> pa.Table:
        """A copy of one partition's rows as an Arrow table (a snapshot: later steps do not change it)."""
        n = self.n_rows
        take = np.flatnonzero(self.column("partition")[:n] == partition)
        return self.to_arrow().take(pa.array(take, type=pa.int64()))

    def check_rows(self, table: pa.Table) -> None:
        """Raise ValueError unless ``table`` has exactly this table's columns, types and state shape."""
        want = self.arrow_schema()
        got = table.schema
        if [(f.name, f.type) for f in got] != [(f.name, f.type) for f in want]:
            raise ValueError(f"state columns {[f'{f.name}:{f.type}' for f in got]} do not match this model's "
                             f"{[f'{f.name}:{f.type}' for f in want]}")
        meta = got.metadata or {}
        for key in (b"layers", b"hidden", b"cells", b"previous"):
            if meta.get(key) != want.metadata.get(key):
                raise ValueError(f"state {key.decode()} {meta.get(key)!r} does not match this model's "
                                 f"{want.metadata.get(key)!r}")
        names = table.column("instrument")
        if names.null_count or len(pa.compute.unique(names)) != len(names):
            raise ValueError("state rows have missing or repeated instruments")

    def drop_partition(self, partition: int) -> int:
        """Remove every row of ``partition``; returns how many."""
        held = (self.column("partition")[: self.n_rows] == partition).any()
        return self.expire(partition, np.iinfo(np.int64).max) if held else 0

    def load_partition(self, table: pa.Table, partition: int) -> int:
        """Replace ``partition``'s rows with ``table``'s (as written by :meth:`partition_to_arrow`).

        The rows are relabelled to ``partition`` whatever id they had when written.
        """
        meta = table.schema.metadata or {}
        shape = StateShape.from_metadata(meta)
        if shape != self.shape:
            mine = self.shape
            raise ValueError(f"state rows have {shape.layers} layer(s) x {shape.hidden} units {list(shape.cells)} "
                             f"keeping previous {list(shape.previous)}; this table holds {mine.layers} x "
                             f"{mine.hidden} {list(mine.cells)} keeping previous {list(mine.previous)}")
        self.drop_partition(partition)
        n = len(table)
        if n == 0:
            return 0
        names = table.column("instrument").to_pylist()
        rows = self.insert([(partition, name) for name in names])
        self._fill(rows, table)
        return n

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "StateTable":
        """A table holding exactly ``table``'s rows, in the same order."""
        meta = table.schema.metadata or {}
        shape = StateShape.from_metadata(meta)
        state = cls(shape, capacity=max(len(table), 1), min_capacity=1024)
        n = len(table)
        instruments = table.column("instrument").to_pylist()
        partitions = table.column("partition").to_numpy()
        state.insert(list(zip(partitions.tolist(), instruments)))
        state._fill(np.arange(n), table)
        return state

    def _fill(self, rows: np.ndarray, table: pa.Table) -> None:
        n = len(rows)
        for name in self._scalar_types:
            if name != "partition":
                self._scalars[name].view[rows] = table.column(name).to_numpy()
        for name, width in self.shape.vectors:
            flat = table.column(name).combine_chunks().flatten().to_numpy()
            self._vectors[name].view[rows] = flat.reshape(n, width)
