"""The cases of ``tickcast bench operator`` and how one case is measured against its peers.

Two families of cases, each uniform and Zipf-skewed (bursty: a few instruments take most ticks):
- narrow and deep, shaped like real feeds (FX pairs, a crypto venue, one index's members): 4 and 10
  instruments, 5,000-tick batches, one layer of 32 and of 64 units: few instruments with many ticks each,
  a long run of narrow steps;
- wide: 1k to 1M instruments, 10,000-tick batches, 64 units, one and two layers.
A flag given on the command line applies to every case (``--sizes``, ``--layers``, ``--activities``,
``--hidden``, ``--batch-ticks``); what is not given keeps each family's default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from benchmarks.workload import tick_batches, warm_table
from operators.bundle import Bundle
from operators.forecaster import Forecaster

NARROW_SIZES = (4, 10)
WIDE_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (4, 1_000)
NARROW_BELOW = 100  # fewer instruments than this: a narrow case
ACTIVITIES = ("uniform", "zipf")


@dataclass(frozen=True)
class Case:
    instruments: int
    activity: str
    layers: int
    hidden: int
    batch_ticks: int

    @property
    def narrow(self) -> bool:
        return self.instruments < NARROW_BELOW


def cases(sizes: tuple[int, ...] | None = None, layers: tuple[int, ...] | None = None,
          activities: tuple[str, ...] | None = None, hidden: tuple[int, ...] | None = None,
          batch_ticks: int | None = None, quick: bool = False) -> list[Case]:
    """The cases to run, grouped by (layers, hidden) so each model is built and checked once."""
    out = []
    for n in sizes or (QUICK_SIZES if quick else NARROW_SIZES + WIDE_SIZES):
        narrow = n < NARROW_BELOW
        for n_layers in layers or ((1,) if narrow else (1, 2)):
            for units in hidden or ((32, 64) if narrow else (64,)):
                for activity in activities or ACTIVITIES:
                    out.append(Case(n, activity, n_layers, units, batch_ticks or (5_000 if narrow else 10_000)))
    return sorted(out, key=lambda c: (c.layers, c.hidden))


def case_batches(case: Case, n_batches: int) -> list[pa.Table]:
    """The case's stream of micro-batches: the same ticks for every side measured on it."""
    return tick_batches(case.instruments, case.activity, n_batches, case.batch_ticks,
                        seed=case.instruments + case.layers)


PeerFactory = Callable[[Bundle, int], object]


def measure_against_peers(bundle: Bundle, batches: list[pa.Table], n_instruments: int, rounds: int,
                          peers: dict[str, PeerFactory],
                          limits: dict[str, Callable[[list[list[pa.Table]]], object]] | None = None) -> dict:
    """The operator and each peer over the same batches, alternating round by round, in one process.

    ``batches[0]`` warms every side up (not timed); the rest is cut into ``rounds`` rounds. In each round
    the operator steps the round's batches, then each peer in turn steps the same batches: every side
    sees the same stream, in the same order, under the same machine load. Per peer: its best round and
    the median over rounds of the per-round ratio peer time / operator time (``paired``: each pair ran
    back to back, so a burst of load on this shared machine moves one pair, not the median), the CPU
    time ratio (all of the process's threads), and its model calls alone (``model_seconds``).
    Each of ``limits`` (given the rounds' batches, returns an object whose ``seconds(r)`` times round r's
    work at one of the machine's limits, e.g. :class:`benchmarks.limits.ScheduleLimit`) is timed the same
    way, after the peers in each round: its best round, and the median over rounds of limit time /
    operator time (the operator's fraction of that limit).
    """
    fc = Forecaster(bundle)
    others = {name: make(bundle, n_instruments) for name, make in peers.items()}
    warm = warm_table(n_instruments)
    for side in (fc, *others.values()):
        side.step(warm)
        side.step(batches[0])
    timed = batches[1:]
    per_round = max(len(timed) // rounds, 1)
    chunks = [timed[r * per_round:(r + 1) * per_round] for r in range(rounds)]
    at_limits = {name: make(chunks) for name, make in (limits or {}).items()}
    limit_best = dict.fromkeys(at_limits, float("inf"))
    limit_pairs: dict[str, list[float]] = {name: [] for name in at_limits}
    best_op = best_op_cpu = float("inf")
    best = dict.fromkeys(others, float("inf"))
    best_cpu = dict.fromkeys(others, float("inf"))
    best_model = dict.fromkeys(others, float("inf"))
    pairs: dict[str, list[float]] = {name: [] for name in others}
    instruments_per_batch = []
    ticks = 0
    for r in range(rounds):
        chunk = chunks[r]
        ticks = sum(b.num_rows for b in chunk)
        cpu, started = time.process_time(), time.perf_counter()
        for b in chunk:
            instruments_per_batch.append(fc.step(b).n_instruments)
        op = time.perf_counter() - started
        best_op, best_op_cpu = min(best_op, op), min(best_op_cpu, time.process_time() - cpu)
        for name, peer in others.items():
            model_before = peer.model_seconds
            cpu, started = time.process_time(), time.perf_counter()
            for b in chunk:
                peer.step(b)
            other = time.perf_counter() - started
            best_cpu[name] = min(best_cpu[name], time.process_time() - cpu)
            best[name] = min(best[name], other)
            best_model[name] = min(best_model[name], peer.model_seconds - model_before)
            pairs[name].append(other / op)
        for name, at_limit in at_limits.items():
            seconds = at_limit.seconds(r)
            limit_best[name] = min(limit_best[name], seconds)
            limit_pairs[name].append(seconds / op)
    return {"operator_ticks_per_second": ticks / best_op,
            "peers": {name: {"ticks_per_second": ticks / best[name],
                             "model_only_ticks_per_second": ticks / best_model[name],
                             "paired_ratio": float(np.median(pairs[name])),
                             "paired_ratios": [round(p, 4) for p in pairs[name]],
                             "cpu_ratio": best_cpu[name] / best_op_cpu} for name in others},
            "limits": {name: {"ticks_per_second": ticks / limit_best[name],
                              "paired_fraction": float(np.median(limit_pairs[name])),
                              "paired_fractions": [round(p, 4) for p in limit_pairs[name]]} for name in at_limits},
            "batches_per_round": per_round, "rounds": rounds,
            "mean_instruments_per_batch": float(np.mean(instruments_per_batch))}
