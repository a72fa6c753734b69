"""`tickcast bench operator-profile` times the operator's stages without leaving anything patched, and
`tickcast bench operator` refuses a bad case selection in one line."""

from __future__ import annotations

import pytest

import operators.forecaster as forecaster_mod
import operators.grouping as grouping_mod
from benchmarks.operator_profile import STAGES, profile
from operators.lstm import RaggedLSTM
from operators.state import StateTable
from operators.validation import TickColumns
from pipeline.cli import main


def test_profile_splits_the_step_into_stages_and_restores_the_operator():
    originals = (TickColumns.__dict__["from_arrow"], grouping_mod.validate_values, forecaster_mod.take_rows,
                 forecaster_mod.put_rows, forecaster_mod.name_words, StateTable.lookup_many, RaggedLSTM.step)
    r = profile(300, 1, n_batches=2, repeats=1, batch_ticks=400, peer=False)
    assert set(STAGES) <= set(r)
    assert all(r[s] > 0 for s in ("arrow -> columns", "index", "gather", "LSTM + head", "scatter"))
    assert sum(r[s] for s in STAGES) == pytest.approx(r["total"])
    after = (TickColumns.__dict__["from_arrow"], grouping_mod.validate_values, forecaster_mod.take_rows,
             forecaster_mod.put_rows, forecaster_mod.name_words, StateTable.lookup_many, RaggedLSTM.step)
    assert all(a is b for a, b in zip(originals, after))


@pytest.mark.parametrize("flags, message", [
    (["--sizes", "1,x"], "--sizes takes comma-separated positive integers, got '1,x'"),
    (["--layers", "0"], "--layers takes comma-separated positive integers, got '0'"),
    (["--activities", "uniform,flat"], "--activities takes a comma-separated subset of uniform, zipf, got 'uniform,flat'"),
])
def test_a_bad_case_selection_is_one_line(flags, message, capsys):
    assert main(["bench", "operator", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tickcast: error: {message}"]


@pytest.mark.parametrize("argv", [["bench", "operator", "--pin-cores"],
                                  ["bench", "e2e", "--pin-cores", "--bootstrap-servers", "127.0.0.1:1"]])
def test_pinning_cores_outside_the_e2e_benchmarks_own_broker_is_one_line(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "tickcast: error: --pin-cores is for `bench e2e` on the embedded broker with 2 or more CPUs"]
