"""The Arrow-backed state table: growth, zero-copy export, round trip, expiry."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
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


def test_capacity_halves_after_expiry_and_rows_keep_their_values_bit_for_bit():
    t = filled(4096, capacity=16)  # partitions 0, 1, 2 (i % 3)
    assert t.capacity == 4096
    keep = [r for r in range(3000, 4096) if r % 3 == 1]  # the newest rows of partition 1 stay
    before = {t.instruments[r]: (t.h(1)[r].tobytes(), t.c(0)[r].tobytes(), t.column("last_ts")[r]) for r in keep}
    peak_bytes = t.nbytes
    t.drop_partition(0)
    t.drop_partition(2)
    t.expire(1, 3000 * 1000)  # last_ts of row i is i * 1000
    assert len(t) == len(keep)
    assert t.capacity < 4 * len(t) and t.capacity >= len(t)  # occupancy back above a quarter
    assert t.nbytes <= peak_bytes / 4
    for name, (h, c, ts) in before.items():
        r = int(t.lookup(1, [name])[0])
        assert (t.h(1)[r].tobytes(), t.c(0)[r].tobytes(), t.column("last_ts")[r]) == (h, c, ts)
    # The hot-path views are still zero-copy views of the Arrow columns.
    table = t.to_arrow()
    assert table.column("h0").chunk(0).values.buffers()[1].address == t.h(0).ctypes.data
    assert table.column("tick_count").chunk(0).buffers()[1].address == t.column("tick_count").ctypes.data
    # Everything gone: back to the initial capacity, never below it.
    t.drop_partition(1)
    assert len(t) == 0 and t.capacity == 16


def test_index_and_names_shrink_after_expiry():
    t = filled(30_000, capacity=1)
    big = t.index_nbytes
    t.drop_partition(0)
    t.drop_partition(2)
    t.expire(1, 29_970 * 1000)  # all but the 10 newest rows of partition 1 (last_ts of row i is i * 1000)
    assert len(t) == 10
    assert t.index_nbytes < big / 100
    assert sum(n is not None for n in t._names) == 10  # the reclaimed names are let go
    rows = t.lookup(1, [f"I{i}" for i in (29_971, 29_999, 29_968)]).tolist()
    assert rows[1:] == [-1, -1] and t.instruments[rows[0]] == "I29971"  # kept; dropped partition; expired


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8), cut=st.integers(0, 3))
def test_grow_and_shrink_cycles_keep_every_surviving_row(sizes, cut):
    """Insert waves and expire partitions in turn: survivors keep their rows' values, capacity stays tight."""
    t = StateTable(StateShape(1, 3), capacity=4)
    ref: dict[tuple[int, str], float] = {}
    for wave, n in enumerate(sizes):
        keys = [(i % 4, f"W{wave}-{i}") for i in range(n)]
        rows = t.insert(keys)
        t.column("last_price")[rows] = np.arange(n) + wave * 1000.0
        t.h(0)[rows] = (np.arange(n) + wave * 1000.0)[:, None].astype(np.float32)
        ref.update({k: wave * 1000.0 + i for i, k in enumerate(keys)})
        t.drop_partition((wave + cut) % 4)
        ref = {k: v for k, v in ref.items() if k[0] != (wave + cut) % 4}
        assert len(t) == len(ref)
        assert t.capacity <= max(4, 4 * len(t))  # shrunk to within a factor 4 of the rows held
        for (p, name), v in ref.items():
            r = int(t.lookup(p, [name])[0])
            assert t.column("last_price")[r] == v and t.h(0)[r, 2] == np.float32(v)


def test_a_stack_of_other_recurrent_layers_keeps_one_column_per_state_vector_and_round_trips():
    shape = StateShape.of([("lstm", 3), ("gru", 2), ("rnn", 4)])
    assert shape.vectors == (("h0", 3), ("c0", 3), ("h1", 2), ("h2", 4))
    assert shape.raw_bytes_per_row == 4 * (3 + 3 + 2 + 4)
    t = StateTable(shape, capacity=2)
    rows = t.insert([(0, f"I{i}") for i in range(5)])
    for k, (name, width) in enumerate(shape.vectors):
        t.vector(name)[rows] = np.arange(5 * width, dtype=np.float32).reshape(5, width) + k
    table = t.to_arrow()
    assert [f.name for f in table.schema][-4:] == ["h0", "c0", "h1", "h2"]
    again = StateTable.from_arrow(table)
    assert again.shape == shape
    for name, _ in shape.vectors:
        np.testing.assert_array_equal(again.vector(name)[:5], t.vector(name)[:5])
    # Same columns and widths, other cells (a GRU's h where a SimpleRNN's was): refused, not misread.
    other = StateTable(StateShape.of([("lstm", 3), ("rnn", 2), ("rnn", 4)]))
    with pytest.raises(ValueError, match="cells"):
        other.check_rows(table)
    with pytest.raises(ValueError, match="units"):
        other.load_partition(t.partition_to_arrow(0), 0)


def test_the_built_in_models_state_schema_is_unchanged():
    """Checkpoints written before other recurrent layers existed load: same columns, same metadata."""
    schema = StateTable(StateShape(2, 4)).arrow_schema()
    assert [f.name for f in schema][-4:] == ["h0", "c0", "h1", "c1"]
    assert schema.metadata == {b"layers": b"2", b"hidden": b"4"}
    assert [f.name for f in schema] == ["instrument", "partition", "last_price", "last_ts", "tick_count",
                                        "last_offset", "h0", "c0", "h1", "c1"]


def test_rows_keep_the_previous_mid_and_sign_only_when_asked_and_round_trip_them():
    shape = StateShape(1, 2, previous=("mid", "sign"))
    t = StateTable(shape, capacity=2)
    rows = t.insert([(0, f"I{i}") for i in range(6)])
    assert np.isnan(t.previous("mid")[rows]).all() and not t.previous("sign")[rows].any()  # fresh: none
    t.previous("mid")[rows] = np.arange(6) + 0.5
    t.previous("sign")[rows] = [1, -1, 0, 1, -1, 0]
    t.column("last_ts")[rows] = [5, 1, 5, 1, 5, 5]
    table = t.to_arrow()
    assert [f.name for f in table.schema][:8] == ["instrument", "partition", "last_price", "last_ts", "tick_count",
                                                   "last_offset", "last_mid", "last_sign"]
    assert table.schema.field("last_sign").type == pa.int8()
    assert table.schema.metadata[b"previous"] == b"mid,sign"
    again = StateTable.from_arrow(table)
    assert again.shape == shape
    np.testing.assert_array_equal(again.previous("mid")[:6], t.previous("mid")[:6])
    np.testing.assert_array_equal(again.previous("sign")[:6], t.previous("sign")[:6])
    # Rows that move when others expire take their previous mid and sign with them.
    assert t.expire(0, 3) == 2
    for name, mid, sign in (("I0", 0.5, 1), ("I4", 4.5, -1), ("I5", 5.5, 0)):
        r = int(t.lookup(0, [name])[0])
        assert (t.previous("mid")[r], t.previous("sign")[r]) == (mid, sign)
    # Reused rows start with no previous mid or sign.
    (r,) = t.insert([(0, "NEW")])
    assert np.isnan(t.previous("mid")[r]) and t.previous("sign")[r] == 0


def test_rows_that_keep_other_previous_values_are_refused_not_misread():
    with_mid = StateTable(StateShape(1, 2, previous=("mid",)))
    with_mid.insert([(0, "A")])
    plain = StateTable(StateShape(1, 2))
    with pytest.raises(ValueError, match="last_mid"):
        plain.check_rows(with_mid.to_arrow())
    with pytest.raises(ValueError, match="previous"):
        plain.load_partition(with_mid.partition_to_arrow(0), 0)
    with pytest.raises(ValueError, match="last_mid"):
        with_mid.check_rows(plain.to_arrow())
    with pytest.raises(ValueError, match="cannot keep \\['vwap'\\]"):
        StateTable(StateShape(1, 2, previous=("vwap",)))


@settings(max_examples=60, deadline=None)
@given(n_table=st.integers(1, 40), width=st.integers(1, 9), data=st.data())
def test_rows_moved_as_records_are_exactly_fancy_indexing(n_table, width, data):
    """take_rows/put_rows (whole-row memcpy through a void view) give the bytes NumPy's row indexing gives,
    NaN payloads and signed zeros included."""
    from operators.rows import put_rows, take_rows

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    table = rng.standard_normal((n_table, width)).astype(np.float32)
    table.view(np.uint32)[rng.random((n_table, width)) < 0.1] = 0x7FC00123  # a NaN with a payload
    table[rng.random((n_table, width)) < 0.1] = -0.0
    rows = np.array(data.draw(st.lists(st.integers(0, n_table - 1), max_size=n_table, unique=True)), dtype=np.int64)
    out = np.full((len(rows), width), 7.0, dtype=np.float32)
    assert take_rows(table, rows, out) is out
    assert out.tobytes() == table[rows].tobytes()
    values = rng.standard_normal((len(rows), width)).astype(np.float32)
    want = table.copy()
    want[rows] = values
    put_rows(table, rows, values)
    assert table.tobytes() == want.tobytes()
