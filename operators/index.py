"""(partition, instrument) -> state row: the state table's instrument index.

Each (partition, instrument) has an *identity* of three 64-bit words
(:func:`identities`): the partition and the name's UTF-8 length in bytes in
the first, the name's first 16 bytes (zero-padded) in the other two. For a
name of at most 16 bytes the identity is exact: two pairs are the same pair
exactly when their identities are equal. A longer name is compared as a
string as well, after its identity matched.

:class:`RowIndex` is an open-addressing hash table whose slots hold the
identity and the row side by side, so a probe reads one 32-byte record
instead of chasing the row's partition, its name pointer and the string
object through three scattered arrays (at 1M instruments those cache misses
were most of a lookup). Lookups and inserts are vectorised over a batch
(linear probing, one NumPy pass per probe step; the table is kept at most
half full, so a few passes). The probe starts at Python's own str hash of
the name mixed with the partition (SipHash with a per-process random key:
names chosen to collide cannot be crafted from outside; a collision costs a
probe step, never a wrong row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

WORD_BYTES = 16  # bytes of a name held in its identity
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint64(np.iinfo(np.uint64).max)  # the row of an empty slot
_LOW32 = np.uint64(0xFFFFFFFF)


def _name_hashes(names: Sequence[str] | np.ndarray) -> np.ndarray:
    """Python's own str hash of each name, as uint64 (cached on each str object)."""
    return np.fromiter(map(hash, names), dtype=np.int64, count=len(names)).view(np.uint64)


def row_keys(partitions: np.ndarray, names: Sequence[str] | np.ndarray) -> np.ndarray:
    """64-bit hash key of each (partition, instrument): where its probe starts."""
    return _name_hashes(names) ^ (np.asarray(partitions).astype(np.uint64) * _GOLDEN)


def name_words(names: pa.Array | Sequence[str] | np.ndarray) -> np.ndarray:
    """(n, 3) uint64 per name: its UTF-8 length in bytes, then its first 16 bytes zero-padded as two words.

    ``names`` is an Arrow string array without nulls (a batch's dictionary: no Python strings
    needed) or a sequence of str.
    """
    if not isinstance(names, pa.Array):
        names = pa.array(names if isinstance(names, list) else list(names), type=pa.string())
    if pa.types.is_large_string(names.type) or pa.types.is_large_binary(names.type):
        offset_type = np.int64
    elif pa.types.is_string(names.type) or pa.types.is_binary(names.type):
        offset_type = np.int32
    else:
        raise TypeError(f"instrument names must be strings, got {names.type}")
    if names.null_count:
        raise ValueError("instrument names must not be null")
    n = len(names)
    out = np.zeros((n, 3), dtype=np.uint64)
    if n == 0:
        return out
    _, offsets_buf, data_buf = names.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[names.offset:names.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    out[:, 0] = lengths
    take = np.minimum(lengths, WORD_BYTES)
    total = int(take.sum())
    if total == 0:
        return out
    data = np.frombuffer(data_buf, dtype=np.uint8)
    width = int(lengths[0])
    if width <= WORD_BYTES and (lengths == width).all():
        # Names of one length (fixed-width codes) lie back to back: no per-byte scatter.
        padded = np.zeros((n, WORD_BYTES), dtype=np.uint8)
        padded[:, :width] = data[offsets[0]:offsets[0] + n * width].reshape(n, width)
        out[:, 1:] = padded.view(np.uint64)
    else:
        first = np.cumsum(take) - take  # where each name's kept bytes start among all kept bytes
        within = np.arange(total) - np.repeat(first, take)
        padded = np.zeros(n * WORD_BYTES, dtype=np.uint8)
        padded[np.repeat(np.arange(n) * WORD_BYTES, take) + within] = data[np.repeat(offsets[:-1], take) + within]
        out[:, 1:] = padded.view(np.uint64).reshape(n, 2)
    return out


def _records(a: np.ndarray) -> np.ndarray:
    """(n, 4) uint64 as n opaque 32-byte records (a view)."""
    return a.view(np.dtype((np.void, 32))).reshape(len(a))


def identities(partitions: np.ndarray, words: np.ndarray) -> np.ndarray:
    """(n, 3) uint64 identity of each (partitions[i], name with ``words[i]``) (see :func:`name_words`)."""
    ident = np.array(words, dtype=np.uint64, copy=True).reshape(-1, 3)
    part = np.asarray(partitions).astype(np.int64).astype(np.uint64) & _LOW32  # int32 partitions, one-to-one
    ident[:, 0] |= part << np.uint64(32)
    return ident


def is_long(ident: np.ndarray) -> np.ndarray:
    """Names longer than the identity holds: they need a string comparison too."""
    return (ident[:, 0] & _LOW32) > WORD_BYTES


class RowIndex:
    """(partition, instrument) -> row: an open-addressing hash table of (identity, row) records.

    Rows are never removed one by one: after rows move (expiry) the table is
    rebuilt from the rows' keys and identities, sized to the rows left, which
    is also how it gives memory back.
    """

    def __init__(self, n_rows: int = 0):
        self._alloc(n_rows)

    def _alloc(self, n_rows: int) -> None:
        slots = 16
        while slots < 2 * n_rows:
            slots *= 2
        self.slots = np.zeros((slots, 4), dtype=np.uint64)  # identity (3 words), row
        self.slots[:, 3] = _EMPTY
        self.mask = np.uint64(slots - 1)
        self.size = 0

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes

    def find(self, keys: np.ndarray, ident: np.ndarray, names: np.ndarray, row_name: np.ndarray) -> np.ndarray:
        """Row of each pair with hash key ``keys[i]`` and identity ``ident[i]``, -1 where absent.

        ``names`` (object array of str) and ``row_name`` (the table's names by row) are compared
        only for names longer than an identity holds.
        """
        m = len(keys)
        rows = np.full(m, -1, dtype=np.int64)
        pending = np.arange(m)
        pos = (keys & self.mask).astype(np.int64)
        i0, i1, i2 = ident[:, 0], ident[:, 1], ident[:, 2]
        long = is_long(ident)
        step_mask = int(self.mask)
        records = _records(self.slots)
        while len(pending):
            rec = np.take(records, pos).view(np.uint64).reshape(-1, 4)  # one 32-byte record per probe
            empty = rec[:, 3] == _EMPTY  # an empty slot ends the probe: absent
            hit = (rec[:, 0] == i0) & (rec[:, 1] == i1) & (rec[:, 2] == i2) & ~empty
            check = np.flatnonzero(hit & long)
            if len(check):
                same = row_name[rec[check, 3].astype(np.int64)] == names[pending[check]]
                hit[check[~same]] = False
            rows[pending[hit]] = rec[hit, 3].astype(np.int64)
            more = ~(hit | empty)
            pending, i0, i1, i2, long = pending[more], i0[more], i1[more], i2[more], long[more]
            pos = (pos[more] + 1) & step_mask
        return rows

    def add(self, keys: np.ndarray, ident: np.ndarray, rows: np.ndarray) -> None:
        """Insert rows whose (partition, instrument) are not in the index yet."""
        if 2 * (self.size + len(rows)) > len(self.slots):
            raise ValueError("RowIndex.add past half full: rebuild it larger first")
        step_mask = int(self.mask)
        pos = (keys & self.mask).astype(np.int64)
        record = np.empty((len(rows), 4), dtype=np.uint64)  # identity and row, written as one 32-byte record
        record[:, :3] = ident
        record[:, 3] = np.asarray(rows, dtype=np.int64).astype(np.uint64)
        records, new = _records(self.slots), _records(record)
        slot_row = self.slots[:, 3]
        which = np.arange(len(rows))
        row = record[:, 3]
        while len(which):
            free = np.flatnonzero(slot_row[pos] == _EMPTY)
            slot_row[pos[free]] = row[free]  # several rows may race for one slot: the last write wins
            won = free[slot_row[pos[free]] == row[free]]
            records[pos[won]] = new[which[won]]
            lost = np.ones(len(which), dtype=bool)
            lost[won] = False
            which, row = which[lost], row[lost]
            pos = (pos[lost] + 1) & step_mask
        self.size += len(rows)

    def rebuild(self, keys: np.ndarray, ident: np.ndarray, spare: int = 0) -> None:
        """Index rows 0..len(keys)-1 afresh, with room for ``spare`` more before the next rebuild."""
        self._alloc(len(keys) + spare)
        self.add(keys, ident, np.arange(len(keys), dtype=np.int64))
