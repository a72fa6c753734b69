"""Online forecast error: join each forecast with its realised return once it arrives.

A forecast made at an instrument's tick t is scored at the same instrument's
tick t + horizon: realised = log(price[t + horizon] / price[t]). Per
(partition, instrument) the scorer keeps the last ``horizon`` prices and
forecasts in a ring (NumPy arrays, one row per instrument); each batch is
scored with array indexing, no per-tick Python loop.

Rows are compact (0..n-1 live, like the state table): an instrument that
leaves (its partition revoked, or its state row expired) gives its row back,
the last rows move into the holes, and the arrays halve when fewer than a
quarter of their rows are live, so the scorer's memory follows the
instruments the process holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from operators.rows import compaction_moves, shrunk_capacity


@dataclass(frozen=True)
class MaturedTicks:
    """The forecasts that matured in a batch, in the batch's tick order."""

    tick: np.ndarray  # index of the maturing tick in the batch (its realised outcome arrived with it)
    forecast: np.ndarray  # (k,) or (k, models): what was forecast ``horizon`` ticks earlier
    realised: np.ndarray  # (k,) log(price[t + horizon] / price[t])


@dataclass(frozen=True)
class Matured:
    abs_error: float  # sum |forecast - realised|
    random_walk_abs_error: float  # sum |realised|
    count: int


class OnlineScorer:
    def __init__(self, horizon: int, capacity: int = 1024, models: int | None = None):
        """``models``: None for one forecast per tick (1-D arrays), else the width of 2-D ``forecast`` arrays."""
        self.h = horizon
        self._width = () if models is None else (int(models),)
        self.min_capacity = max(int(capacity), 1)
        self._index: dict[tuple[int, str], int] = {}
        self._keys: list[tuple[int, str]] = []  # row -> key, rows 0..n-1
        self._alloc(self.min_capacity, 0)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def capacity(self) -> int:
        return len(self._count)

    def _alloc(self, capacity: int, keep: int) -> None:
        price, forecast = np.zeros((capacity, self.h)), np.zeros((capacity, self.h, *self._width))
        count = np.zeros(capacity, dtype=np.int64)
        if keep:
            price[:keep], forecast[:keep], count[:keep] = self._price[:keep], self._forecast[:keep], self._count[:keep]
        self._price, self._forecast, self._count = price, forecast, count

    def _rows(self, keys: list[tuple[int, str]]) -> np.ndarray:
        """Row of each key; new keys get fresh rows after the live ones (never a live row)."""
        rows = np.fromiter(map(self._index.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        new = np.flatnonzero(rows < 0)
        if len(new):
            start = len(self._keys)
            end = start + len(new)
            if end > self.capacity:
                capacity = self.capacity
                while capacity < end:
                    capacity *= 2
                self._alloc(capacity, start)
            rows[new] = np.arange(start, end)
            self._count[start:end] = 0
            for i, r in zip(new.tolist(), range(start, end)):  # once per new instrument, not per tick
                self._index[keys[i]] = r
                self._keys.append(keys[i])
        return rows

    def forget(self, keys) -> int:
        """Drop these instruments (expired from the state table); unknown keys are ignored. Returns how many."""
        dead = [r for r in map(self._index.pop, keys, repeat(None)) if r is not None]
        if dead:
            self._compact(np.asarray(dead, dtype=np.int64))
        return len(dead)

    def drop_partition(self, partition: int) -> int:
        """Forget the instruments of a partition this process no longer owns. Returns how many."""
        return self.forget([k for k in self._keys if k[0] == partition])

    def _compact(self, dead: np.ndarray) -> None:
        """Rows in ``dead`` (already out of the index) are gone: move the last live rows into the holes."""
        n_keep = len(self._keys) - len(dead)
        holes, movers = compaction_moves(len(self._keys), dead)
        for arr in (self._price, self._forecast, self._count):
            arr[holes] = arr[movers]
        for hole, mover in zip(holes.tolist(), movers.tolist()):
            key = self._keys[mover]
            self._keys[hole] = key
            self._index[key] = hole
        del self._keys[n_keep:]
        capacity = shrunk_capacity(self.capacity, n_keep, self.min_capacity)
        if capacity != self.capacity:
            self._alloc(capacity, n_keep)
            self._index = dict(self._index)  # a dict keeps its table size after deletions: rebuild it

    def update(self, keys: list[tuple[int, str]], group: np.ndarray, price: np.ndarray,
               forecast: np.ndarray) -> Matured:
        """Score the forecasts that mature with these ticks, then remember the new ones.

        ``group[i]`` indexes ``keys`` for tick i; ticks of a group are in order.
        """
        m = self.mature(keys, group, price, forecast)
        err = float(np.abs(m.forecast - m.realised).sum())
        return Matured(err, float(np.abs(m.realised).sum()), len(m.realised))

    def mature(self, keys: list[tuple[int, str]], group: np.ndarray, price: np.ndarray,
               forecast: np.ndarray) -> MaturedTicks:
        """As :meth:`update`, returning each matured forecast with its realised return (batch tick order)."""
        h = self.h
        if len(group) == 0:
            return MaturedTicks(np.zeros(0, dtype=np.int64), np.zeros((0, *self._width)), np.zeros(0))
        rows = self._rows(keys)[group]
        order = np.argsort(group, kind="stable")
        g_sorted = group[order]
        starts = np.flatnonzero(np.diff(g_sorted, prepend=-1))
        k = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
        r, p, f = rows[order], price[order], forecast[order]
        n_before = self._count[r]
        total_pos = n_before + k  # position of this tick in the instrument's whole sequence
        has_past = total_pos >= h
        # The tick h earlier is in this batch (k >= h) or in the ring.
        past_p = np.empty(len(order))
        past_f = np.empty((len(order), *self._width))
        in_batch = has_past & (k >= h)
        src = np.flatnonzero(in_batch) - h
        past_p[in_batch], past_f[in_batch] = p[src], f[src]
        in_ring = has_past & (k < h)
        slot = (total_pos[in_ring] - h) % h
        past_p[in_ring], past_f[in_ring] = self._price[r[in_ring], slot], self._forecast[r[in_ring], slot]
        realised = np.log(p[has_past] / past_p[has_past])
        # Back to the batch's tick order.
        tick = order[has_past]
        back = np.argsort(tick, kind="stable")
        matured = MaturedTicks(tick[back], past_f[has_past][back], realised[back])
        # Remember the last h ticks of each instrument.
        ends = np.append(starts[1:], len(order))
        keep = k >= (np.repeat(ends - starts, ends - starts) - h)
        slots = total_pos[keep] % h
        self._price[r[keep], slots] = p[keep]
        self._forecast[r[keep], slots] = f[keep]
        np.add.at(self._count, r[starts], ends - starts)
        return matured
