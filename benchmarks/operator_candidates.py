"""`tickcast bench operator --candidates K,...`: what candidate models cost the operator.

A run can step candidate models beside its primary: every batch goes through the primary's
``Forecaster`` and through each candidate's, each with its own state table. Per case
(:mod:`benchmarks.operator_cases`, over the same micro-batches as the peer comparison), one side per
candidate count k: the primary alone (k = 0), the primary and 1 candidate, the primary and 2, ... The
candidates have the primary's shape and other weights (other seeds, so other model versions). Every
side's models step every batch; the sides alternate round by round in one process (the order rotated
each round), 8 rounds of 2 batches as the peer comparison. Per k: ticks/s of the stream (ticks in over the
time to step every model over them), best round; the throughput relative to k = 0, the median over rounds
of the round's time(0) / time(k) (paired: the sides ran back to back), against the ideal 1/(1+k) (each
candidate costing exactly one primary's step); and each candidate's cost in primaries' steps, the median
over rounds of (time(k) / time(0) - 1) / k.

What is timed is ``Forecaster.step`` alone: decoding the ticks, publishing and committing are the
pipeline's and are done once per batch whatever the number of models.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.operator_cases import Case, case_batches
from benchmarks.workload import bench_bundle, warm_table
from operators.bundle import Bundle
from operators.forecaster import Forecaster

CANDIDATE_SEED = 100  # candidate i (1, 2, ...) is seeded CANDIDATE_SEED * i + layers; the primary by layers


def candidate_bundles(layers: int, hidden: int, n: int) -> list[Bundle]:
    """``n`` candidates of the bench model's shape, each with its own weights and model version."""
    return [bench_bundle(layers, hidden, seed=CANDIDATE_SEED * i + layers) for i in range(1, n + 1)]


def candidate_sides(primary: Bundle, candidates: list[Bundle], counts: tuple[int, ...]) -> dict[int, list[Forecaster]]:
    """Per candidate count k: a primary's forecaster and the first k candidates' (every one its own state)."""
    return {k: [Forecaster(primary), *(Forecaster(c) for c in candidates[:k])] for k in counts}


def measure_candidates(case: Case, sides: dict[int, list[Forecaster]], rounds: int,
                       batches_per_round: int) -> list[dict]:
    """Every side steps every model over the case's batches, sides alternating round by round; one row per k."""
    batches = case_batches(case, 1 + rounds * batches_per_round)
    warm = warm_table(case.instruments)
    for models in sides.values():
        for fc in models:
            fc.step(warm)
            fc.step(batches[0])
    counts = sorted(sides)
    seconds: dict[int, list[float]] = {k: [] for k in counts}
    instruments_per_batch = []
    ticks = 0
    for r in range(rounds):
        chunk = batches[1 + r * batches_per_round: 1 + (r + 1) * batches_per_round]
        ticks = sum(b.num_rows for b in chunk)
        for k in counts[r % len(counts):] + counts[:r % len(counts)]:
            models = sides[k]
            started = time.perf_counter()
            for b in chunk:
                for fc in models:
                    result = fc.step(b)
                    if k == counts[0] and fc is models[0]:
                        instruments_per_batch.append(result.n_instruments)
            seconds[k].append(time.perf_counter() - started)
    base = np.asarray(seconds[counts[0]])
    rows = []
    for k in counts:
        mine = np.asarray(seconds[k])
        row = {"instruments": case.instruments, "activity": case.activity, "layers": case.layers,
               "hidden": case.hidden, "batch_ticks": case.batch_ticks, "candidates": k, "models": 1 + k,
               "ticks_per_second": round(ticks / float(mine.min()), 1),
               "over_no_candidates_paired_median": round(float(np.median(base / mine)), 3),
               "over_no_candidates_paired_rounds": [round(float(x), 4) for x in base / mine],
               "ideal_over_no_candidates": round(1 / (1 + k), 3),
               "mean_instruments_per_batch": round(float(np.mean(instruments_per_batch)), 1),
               "rounds": rounds, "batches_per_round": batches_per_round}
        if k:
            row["candidate_cost_in_primary_steps"] = round(float(np.median((mine / base - 1) / k)), 3)
        rows.append(row)
    return rows


def _line(row: dict) -> str:
    cost = row.get("candidate_cost_in_primary_steps")
    cost = f"{cost:>9.2f}" if cost is not None else f"{'-':>9}"
    return (f"{row['instruments']:>11,} {row['activity']:>8} {row['layers']:>2}x{row['hidden']:<3} "
            f"{row['batch_ticks']:>6,} {row['mean_instruments_per_batch']:>10,.0f} {row['candidates']:>10} "
            f"{row['ticks_per_second']:>12,.0f} {row['over_no_candidates_paired_median']:>8.3f} "
            f"{row['ideal_over_no_candidates']:>6.3f} {cost}")


def run_candidates(selected: list[Case], counts: tuple[int, ...], rounds: int, batches_per_round: int,
                   printer=print) -> list[dict]:
    """The candidate cost for every selected case; ``counts``: the candidate counts (0 is always measured)."""
    counts = tuple(sorted({0, *counts}))
    printer(f"candidate models: the primary alone and with {', '.join(str(k) for k in counts if k)} candidate(s) "
            f"of its shape (other weights), every model stepping every batch, the sides alternating over "
            f"{rounds} rounds of {batches_per_round} batches; ratio = median over rounds of time(0) / time(k), "
            f"ideal 1/(1+k); cost = median of (time(k) / time(0) - 1) / k, in primary steps")
    printer(f"{'instruments':>11} {'activity':>8} {'model':>6} {'batch':>6} {'inst/batch':>10} {'candidates':>10} "
            f"{'ticks/s':>12} {'ratio':>8} {'ideal':>6} {'cost/cand':>9}")
    models: dict[tuple[int, int], tuple[Bundle, list[Bundle]]] = {}
    rows = []
    for case in selected:
        key = (case.layers, case.hidden)
        if key not in models:
            models[key] = (bench_bundle(*key), candidate_bundles(*key, max(counts)))
        primary, candidates = models[key]
        for row in measure_candidates(case, candidate_sides(primary, candidates, counts), rounds, batches_per_round):
            rows.append(row)
            printer(_line(row))
    return rows
