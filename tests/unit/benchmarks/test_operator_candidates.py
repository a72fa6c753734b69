"""The candidate-model cost of `tickcast bench operator --candidates`: every side's models really step every
batch, the candidates are other models of the primary's shape, and the figures are produced."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.operator_candidates import candidate_bundles, candidate_sides, measure_candidates, run_candidates
from benchmarks.operator_cases import Case, case_batches
from benchmarks.suite import add_case_args, case_options
from benchmarks.workload import bench_bundle, warm_table
from operators.forecaster import Forecaster
from pipeline.config import ConfigError
from pipeline.flags import add_bench_args

CASE = Case(instruments=6, activity="zipf", layers=1, hidden=4, batch_ticks=60)
ROUNDS, PER_ROUND = 3, 1


def test_candidates_share_the_primarys_shape_with_other_weights_and_versions():
    primary, candidates = bench_bundle(1, 4), candidate_bundles(1, 4, 2)
    versions = [b.model_version for b in (primary, *candidates)]
    assert len(set(versions)) == 3
    for c in candidates:
        assert c.shape == primary.shape
    first = [np.asarray(w) for w in primary.keras_model.get_weights()]
    for c in candidates:
        assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(first, c.keras_model.get_weights()))


def test_every_model_of_every_side_steps_every_batch_and_the_figures_are_produced():
    primary, candidates = bench_bundle(1, 4), candidate_bundles(1, 4, 2)
    sides = candidate_sides(primary, candidates, (0, 1, 2))
    assert [len(models) for models in sides.values()] == [1, 2, 3]
    rows = measure_candidates(CASE, sides, ROUNDS, PER_ROUND)
    # Each model's state is what stepping the warm-up and every batch of the case gives, so none was skipped.
    stream = [warm_table(CASE.instruments), *case_batches(CASE, 1 + ROUNDS * PER_ROUND)]
    for k, models in sides.items():
        for fc, bundle in zip(models, (primary, *candidates)):
            assert len(fc.state) > 0
            reference = Forecaster(bundle)
            for b in stream:
                reference.step(b)
            assert fc.state.to_arrow().equals(reference.state.to_arrow()), (k, bundle.model_version)
    # Two candidates hold states of their own, not the primary's.
    assert not np.array_equal(sides[2][1].state.h(0)[:CASE.instruments], sides[2][0].state.h(0)[:CASE.instruments])
    assert [r["candidates"] for r in rows] == [0, 1, 2] and [r["models"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["ticks_per_second"] > 0 and len(r["over_no_candidates_paired_rounds"]) == ROUNDS
        assert r["over_no_candidates_paired_median"] == pytest.approx(
            float(np.median(r["over_no_candidates_paired_rounds"])), abs=1e-3)
        assert r["ideal_over_no_candidates"] == round(1 / (1 + r["candidates"]), 3)
        assert ("candidate_cost_in_primary_steps" in r) == (r["candidates"] > 0)
    assert rows[0]["over_no_candidates_paired_median"] == 1.0


def test_run_candidates_always_measures_the_primary_alone_and_prints_a_line_per_row():
    printed = []
    rows = run_candidates([CASE], (2,), ROUNDS, PER_ROUND, printed.append)
    assert [r["candidates"] for r in rows] == [0, 2]
    assert len(printed) == 2 + len(rows)


def _options(*argv: str) -> dict:
    p = argparse.ArgumentParser()
    add_bench_args(p)
    add_case_args(p)
    return case_options(p.parse_args(list(argv)))


def test_the_candidates_flag_takes_counts_from_zero_and_refuses_anything_else():
    assert _options("--candidates", "0,1,2")["candidates"] == (0, 1, 2)
    assert _options()["candidates"] is None
    for bad in ("-1", "a,1", "1,,2"):
        with pytest.raises(ConfigError):
            _options("--candidates", bad)
