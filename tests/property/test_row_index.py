"""The state table's vectorised instrument index behaves exactly like a dict.

A random program of inserts, lookups (present, absent, other partition), expiry
and partition drops runs against a StateTable and against a plain
``{(partition, instrument): row}`` model; every lookup must agree, and every
row must still hold its own instrument. Run once with Python's hash and once
with a hash that collides on purpose (so probing and the name check are
exercised on every lookup). Names longer than an identity holds (16 UTF-8
bytes), names equal in their first 16 bytes, and names that differ only by
trailing NUL bytes are among the names drawn.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators.index as index_mod
from operators.index import RowIndex, identities, name_words
from operators.state import StateShape, StateTable

names = st.sampled_from(["", "a", "b", "ab", "ba", "AAPL", "MSFT", "é", "x" * 40, "x" * 39 + "y", "I0000001",
                         "I0000002", "a\x00", "x" * 16, "x" * 16 + "\x00", "x" * 17, "é" * 8, "é" * 8 + "e"]) | \
    st.text(min_size=0, max_size=6) | st.text(min_size=15, max_size=20)
keys = st.tuples(st.integers(0, 3), names)
ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.lists(keys, max_size=30)),
    st.tuples(st.just("lookup"), st.lists(keys, max_size=30)),
    st.tuples(st.just("expire"), st.tuples(st.integers(0, 3), st.integers(0, 40))),
    st.tuples(st.just("drop"), st.integers(0, 3)),
), max_size=25)


def _weak_keys(partitions, values):
    # Two buckets only: almost every key collides with many others.
    return np.fromiter((len(v) % 2 for v in values), dtype=np.int64, count=len(values)).view(np.uint64)


def _run(program) -> None:
    t = StateTable(StateShape(1, 2), capacity=2)
    model: dict[tuple[int, str], int] = {}  # key -> stamp written into last_ts
    stamp = 0
    for op, arg in program:
        if op == "insert":
            new = list(dict.fromkeys(k for k in arg if k not in model))
            rows = t.insert(new)
            for k, r in zip(new, rows.tolist()):
                stamp += 1
                model[k] = stamp
                t.column("last_ts")[r] = stamp
        elif op == "lookup":
            if not arg:
                continue
            rows = t.lookup_many(np.array([p for p, _ in arg]), [n for _, n in arg])
            for (p, n), r in zip(arg, rows.tolist()):
                if (p, n) in model:
                    assert r >= 0 and t.column("last_ts")[r] == model[(p, n)]
                    assert t.instruments[r] == n and t.column("partition")[r] == p
                else:
                    assert r == -1
        elif op == "expire":
            p, cut = arg
            t.expire(p, cut)
            model = {k: v for k, v in model.items() if k[0] != p or v >= cut}
        else:
            t.drop_partition(arg)
            model = {k: v for k, v in model.items() if k[0] != arg}
        assert len(t) == len(model)
    # Every held key is found at a row that holds it.
    if model:
        ks = list(model)
        rows = t.lookup_many(np.array([p for p, _ in ks]), [n for _, n in ks])
        assert (rows >= 0).all() and len(set(rows.tolist())) == len(ks)
        assert [t.column("last_ts")[r] for r in rows] == [model[k] for k in ks]


@settings(max_examples=150, deadline=None)
@given(program=ops)
def test_index_agrees_with_a_dict(program):
    _run(program)


@settings(max_examples=100, deadline=None)
@given(program=ops)
def test_index_agrees_with_a_dict_when_every_hash_collides(program):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_mod, "row_keys", _weak_keys)
        _run(program)


def test_index_stays_at_most_half_full_and_refuses_to_overfill():
    idx = RowIndex(4)
    ident = identities(np.zeros(20, dtype=np.int64), name_words([f"n{i}" for i in range(20)]))
    idx.add(np.arange(4, dtype=np.uint64), ident[:4], np.arange(4))
    assert 2 * idx.size <= idx.n_slots
    with pytest.raises(ValueError):
        idx.add(np.arange(4, 20, dtype=np.uint64), ident[4:], np.arange(4, 20))


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(st.integers(-2**31, 2**31 - 1), st.text(max_size=24)),
       b=st.tuples(st.integers(-2**31, 2**31 - 1), st.text(max_size=24)))
def test_identities_are_equal_only_for_equal_pairs_up_to_16_bytes(a, b):
    """Exactness of the identity: for names of at most 16 UTF-8 bytes, equal identities mean equal pairs
    (longer names are also compared as strings by the index)."""
    words = name_words([a[1], b[1]])
    ia, ib = identities(np.array([a[0], b[0]]), words)
    short = all(len(n.encode()) <= 16 for n in (a[1], b[1]))
    if a == b:
        assert (ia == ib).all()
    elif short:
        assert not (ia == ib).all()


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.text(max_size=24), max_size=12), cut=st.integers(0, 12))
def test_name_words_from_arrow_slices_and_large_strings_match_python_strings(names, cut):
    want = name_words(names)
    arrow = pa.array(["pad"] * cut + names, type=pa.string()).slice(cut)  # a non-zero array offset
    assert np.array_equal(name_words(arrow), want)
    assert np.array_equal(name_words(arrow.cast(pa.large_string())), want)
    for n, w in zip(names, want):
        data = n.encode()
        assert int(w[0]) == len(data)
        assert w[1:].tobytes() == data[:16].ljust(16, b"\0")


def test_a_large_table_finds_every_row_and_nothing_else():
    t = StateTable(StateShape(1, 2), capacity=1)
    n = 50_000
    t.insert([(i % 7, f"I{i:07d}") for i in range(n)])
    probe = [f"I{i:07d}" for i in range(0, n + 500, 3)]
    parts = np.array([i % 7 for i in range(0, n + 500, 3)])
    rows = t.lookup_many(parts, probe)
    want = np.array([i if i < n else -1 for i in range(0, n + 500, 3)])
    assert np.array_equal(rows, want)
    assert (t.lookup_many((parts + 1) % 7, probe) == -1).all()  # right name, wrong partition


@settings(max_examples=100, deadline=None)
@given(width=st.integers(1, 20), data=st.data())
def test_name_words_of_names_of_one_length(width, data):
    """Names of one byte length take a shortcut (no per-byte scatter); the words are the same bytes."""
    alphabet = st.characters(min_codepoint=0, max_codepoint=127)
    names = data.draw(st.lists(st.text(alphabet, min_size=width, max_size=width), min_size=1, max_size=10))
    cut = data.draw(st.integers(0, 3))
    words = name_words(pa.array(["z" * width] * cut + names).slice(cut))
    for n, w in zip(names, words):
        assert int(w[0]) == width
        assert w[1:].tobytes() == n.encode()[:16].ljust(16, b"\0")
