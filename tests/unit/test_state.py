"""The Arrow-backed state table: growth, zero-copy export, round trip, expiry."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.state import StateShape, StateTable


def filled(n: int, shape=StateShape(2, 4), capacity=1) -> StateTable:
    t = StateTable(shape, capacity=capacity)
    rows = t.insert([(i % 3, f"I{i}") for i in range(n)])
    for layer in range(shape.layers):
        t.h(layer)[rows] = np.arange(n * shape.hidden, dtype=np.float32).reshape(n, -1) + layer
        t.c(layer)[rows] = -t.h(layer)[rows]
    t.column("last_price")[rows] = np.arange(n) * 1.5
    t.column("last_ts")[rows] = np.arange(n) * 1000
    t.column("tick_count")[rows] = 1
    return t


def test_growth_doubles_and_keeps_values():
    t = filled(5, capacity=1)
    assert t.capacity == 8
    assert t.lookup(1, ["I4"])[0] == 4
    np.testing.assert_array_equal(t.h(1)[4], np.arange(16, 20, dtype=np.float32) + 1)
    t.insert([(0, "X")])
    assert t.capacity == 8 and len(t) == 6


def test_new_rows_are_zero_state():
    t = filled(3)
    (row,) = t.insert([(0, "FRESH")])
    assert not t.h(0)[row].any() and not t.c(1)[row].any()
    assert t.column("tick_count")[row] == 0 and np.isnan(t.column("last_price")[row])


def test_to_arrow_shares_memory_with_the_hot_path():
    t = filled(10)
    table = t.to_arrow()
    h0 = table.column("h0").chunk(0)
    assert h0.type == pa.list_(pa.float32(), 4)
    assert h0.values.buffers()[1].address == t.h(0).ctypes.data
    assert table.column("last_price").chunk(0).buffers()[1].address == t.column("last_price").ctypes.data
    t.h(0)[0, 0] = 42.0  # a write through the view is visible in the Arrow table
    assert table.column("h0")[0].as_py()[0] == 42.0


def test_arrow_round_trip_is_exact():
    t = filled(7)
    back = StateTable.from_arrow(t.to_arrow())
    assert back.to_arrow().equals(t.to_arrow())
    assert back.lookup(2, ["I5"])[0] == 5


def test_bytes_per_row_close_to_raw_state():
    shape = StateShape(1, 64)
    t = StateTable(shape, capacity=4096)
    t.insert([(0, f"I{i}") for i in range(4096)])
    per_row = t.nbytes / 4096
    assert shape.raw_bytes_per_row == 512
    assert per_row <= shape.raw_bytes_per_row + 40  # h, c and 5 scalar columns, nothing else


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), idle=st.sets(st.integers(0, 59)), partition=st.integers(0, 2))
def test_expire_removes_exactly_the_idle_rows_and_keeps_the_rest_bit_for_bit(n, idle, partition):
    t = filled(n)
    idle = {i for i in idle if i < n}
    for i in idle:
        t.column("last_ts")[i] = -1
    before = {t.instruments[r]: (t.h(0)[r].tobytes(), t.c(1)[r].tobytes(), t.column("last_price")[r])
              for r in range(n)}
    parts = {f"I{i}": i % 3 for i in range(n)}
    removed = t.expire(partition, 0)
    gone = {f"I{i}" for i in idle if i % 3 == partition}
    assert removed == len(gone) and len(t) == n - len(gone)
    for name, (h, c, p) in before.items():
        r = int(t.lookup(parts[name], [name])[0])
        if name in gone:
            assert r == -1
        else:
            assert t.instruments[r] == name
            assert (t.h(0)[r].tobytes(), t.c(1)[r].tobytes()) == (h, c) and t.column("last_price")[r] == p
