"""Online forecast error: join each forecast with its realised return once it arrives.

A forecast made at an instrument's tick t is scored at the same instrument's
tick t + horizon: realised = log(price[t + horizon] / price[t]). Per
(partition, instrument) the scorer keeps the last ``horizon`` prices and
forecasts in a ring (NumPy arrays, one row per instrument); each batch is
scored with array indexing, no per-tick Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Matured:
    abs_error: float  # sum |forecast - realised|
    random_walk_abs_error: float  # sum |realised|
    count: int


class OnlineScorer:
    def __init__(self, horizon: int, capacity: int = 1024):
        self.h = horizon
        self._index: dict[tuple[int, str], int] = {}
        self._price = np.zeros((capacity, horizon))
        self._forecast = np.zeros((capacity, horizon))
        self._count = np.zeros(capacity, dtype=np.int64)

    def _rows(self, keys: list[tuple[int, str]]) -> np.ndarray:
        rows = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):  # one lookup per instrument of the batch, not per tick
            r = self._index.get(k)
            if r is None:
                r = self._index[k] = len(self._index)
                if r >= len(self._count):
                    grow = len(self._count)
                    self._price = np.vstack([self._price, np.zeros((grow, self.h))])
                    self._forecast = np.vstack([self._forecast, np.zeros((grow, self.h))])
                    self._count = np.concatenate([self._count, np.zeros(grow, dtype=np.int64)])
            rows[i] = r
        return rows

    def drop_partition(self, partition: int) -> None:
        """Forget instruments of a partition this process no longer owns (rows are not reused)."""
        for k in [k for k in self._index if k[0] == partition]:
            self._count[self._index.pop(k)] = 0

    def update(self, keys: list[tuple[int, str]], group: np.ndarray, price: np.ndarray,
               forecast: np.ndarray) -> Matured:
        """Score the forecasts that mature with these ticks, then remember the new ones.

        ``group[i]`` indexes ``keys`` for tick i; ticks of a group are in order.
        """
        if len(group) == 0:
            return Matured(0.0, 0.0, 0)
        h = self.h
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
        past_f = np.empty(len(order))
        in_batch = has_past & (k >= h)
        src = np.flatnonzero(in_batch) - h
        past_p[in_batch], past_f[in_batch] = p[src], f[src]
        in_ring = has_past & (k < h)
        slot = (total_pos[in_ring] - h) % h
        past_p[in_ring], past_f[in_ring] = self._price[r[in_ring], slot], self._forecast[r[in_ring], slot]
        realised = np.log(p[has_past] / past_p[has_past])
        err = float(np.abs(past_f[has_past] - realised).sum())
        rw = float(np.abs(realised).sum())
        # Remember the last h ticks of each instrument.
        ends = np.append(starts[1:], len(order))
        keep = k >= (np.repeat(ends - starts, ends - starts) - h)
        slots = total_pos[keep] % h
        self._price[r[keep], slots] = p[keep]
        self._forecast[r[keep], slots] = f[keep]
        np.add.at(self._count, r[starts], ends - starts)
        return Matured(err, rw, int(has_past.sum()))
