"""`tickcast backtest --candidate`: every model over the same ticks with its own state, compared."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.evaluation.backtest import run_backtest
from pipeline.evaluation.compare import compare_forecasts
from pipeline.files.sinks import write_parquet
from pipeline.files.synthetic import generate_ticks


@pytest.fixture(scope="module")
def runs(bundle, bundle2, tmp_path_factory):
    base = tmp_path_factory.mktemp("candidates")
    ticks = generate_ticks(5, 3000, seed=31)  # with some bad ticks: each model refuses them on its own
    kw = dict(max_batch_ticks=113, progress=False)
    both = run_backtest(ticks, bundle, base / "both", candidates=[bundle2], **kw)
    alone = run_backtest(ticks, bundle, base / "alone", **kw)
    cand = run_backtest(ticks, bundle2, base / "cand", plots=False, **kw)
    return ticks, both, alone, cand, base


def test_the_primarys_outputs_are_those_of_a_backtest_without_candidates(runs):
    _, both, alone, _, base = runs
    assert pq.read_table(base / "both" / "forecasts.parquet").equals(pq.read_table(base / "alone" / "forecasts.parquet"))
    assert pq.read_table(base / "both" / "rejected.parquet").equals(pq.read_table(base / "alone" / "rejected.parquet"))
    timing = {"elapsed_seconds", "operator_ticks_per_second"}
    strip = lambda s: {k: v for k, v in s.items() if k not in timing}  # noqa: E731
    assert strip(both.summary) == strip(alone.summary) | {"candidates": both.summary["candidates"],
                                                          "comparison": both.summary["comparison"]}
    assert "candidates" not in alone.summary and not (base / "alone" / "candidates").exists()
    assert "Candidates against the primary" not in (base / "alone" / "report.html").read_text()


def test_each_candidates_forecasts_are_its_own_backtest_on_the_same_ticks(runs, bundle2):
    _, both, _, cand, base = runs
    where = base / "both" / "candidates" / bundle2.model_version
    assert both.summary["candidates"][0]["dir"] == f"candidates/{bundle2.model_version}"
    assert pq.read_table(where / "forecasts.parquet").equals(pq.read_table(base / "cand" / "forecasts.parquet"))
    assert pq.read_table(where / "rejected.parquet").equals(pq.read_table(base / "cand" / "rejected.parquet"))
    own = json.loads((where / "summary.json").read_text())
    assert own["model"] == cand.summary["model"] and own["confidence"] == cand.summary["confidence"]


def test_the_comparison_pairs_the_two_models_on_the_primarys_ticks(runs, bundle, bundle2):
    _, both, alone, cand, _ = runs
    p, c = alone.forecasts, cand.forecasts
    by_seq = dict(zip(c.column("seq").to_pylist(), c.column("forecast").to_pylist()))
    fc = np.array([by_seq.get(s, np.nan) for s in p.column("seq").to_pylist()])
    realised = p.column("realized").to_numpy(zero_copy_only=False)
    expected = compare_forecasts(realised, np.column_stack([p.column("forecast").to_numpy(), fc]),
                                 [bundle.model_version, bundle2.model_version]).to_dict()
    got = both.summary["comparison"]
    assert got.pop("scored_on").startswith("the primary's")
    assert got == expected
    assert [m["role"] for m in got["models"]] == ["primary", "candidate"]
    assert {d["loss"] for d in got["paired_differences"]} == {"absolute", "squared"}
    assert all(d["n"] > 100 and d["ci95"][0] <= d["ci95"][1] for d in got["paired_differences"])


def test_the_report_shows_the_comparison_and_the_cumulative_paired_difference(runs):
    *_, base = runs
    assert (base / "both" / "plots" / "paired_difference.png").stat().st_size > 1000
    report = (base / "both" / "report.html").read_text()
    assert "Candidates against the primary" in report and 'alt="cumulative paired loss difference"' in report


def test_the_command_line_takes_repeated_candidates_and_refuses_what_cannot_be_compared(
        runs, bundle, bundle2, multi_bundle, tmp_path, capsys):
    ticks = runs[0].slice(0, 800)
    write_parquet(ticks, tmp_path / "ticks.parquet")
    args = ["backtest", "--input", str(tmp_path / "ticks.parquet"), "--model", str(bundle.path), "--quiet",
            "--no-plots"]
    assert main([*args, "--out", str(tmp_path / "ok"), "--candidate", str(bundle2.path)]) == 0
    out = capsys.readouterr().out
    assert "paired loss(candidate) - loss(primary)" in out and bundle2.model_version in out
    assert main([*args, "--out", str(tmp_path / "same"), "--candidate", str(bundle.path)]) == 2
    assert (f"candidate 1 ({bundle.path}) is model version {bundle.model_version}, the same as the primary model; "
            "each model runs once") in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "twice"), "--candidate", str(bundle2.path), "--candidate",
                 str(bundle2.path)]) == 2
    assert "the same as candidate 1" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "multi"), "--candidate", str(multi_bundle.path)]) == 2
    assert "one mean output" in capsys.readouterr().err
