"""`tickcast bench operator`'s case list, its schedule limit and its paired measurement; `tickcast bench
backtest` on a file of the real data's shape."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import benchmarks.limits as limits
from benchmarks.operator_cases import Case, cases
from operators.lstm import Packing
from pipeline.cli import main


def test_default_cases_are_the_narrow_feed_shapes_and_the_wide_ones():
    got = cases()
    narrow = {c for c in got if c.instruments < 100}
    assert narrow == {Case(n, a, 1, h, 5_000) for n in (4, 10) for a in ("uniform", "zipf") for h in (32, 64)}
    wide = set(got) - narrow
    assert wide == {Case(n, a, layers, 64, 10_000) for n in (1_000, 10_000, 100_000, 1_000_000)
                    for a in ("uniform", "zipf") for layers in (1, 2)}


def test_a_flag_applies_to_every_case_and_the_rest_keep_their_family_defaults():
    got = cases(sizes=(4, 1_000), hidden=(16,), activities=("zipf",))
    assert got == [Case(4, "zipf", 1, 16, 5_000), Case(1_000, "zipf", 1, 16, 10_000), Case(1_000, "zipf", 2, 16, 10_000)]
    assert {c.batch_ticks for c in cases(sizes=(4, 1_000), batch_ticks=777)} == {777}


@pytest.mark.parametrize("gemv_rows", [0, 4, 100])  # every step one GEMM; the narrow ones by rows; all by rows
def test_the_compiled_products_are_the_schedules_matrix_products(gemv_rows):
    products, _ = limits._schedule_products()
    rng = np.random.default_rng(1)
    hidden, active = 5, np.array([6, 4, 1], np.int64)
    x, wx = rng.standard_normal((11, 7), dtype=np.float32), rng.standard_normal((7, 20), dtype=np.float32)
    h, wh = rng.standard_normal((6, hidden), dtype=np.float32), rng.standard_normal((hidden, 20), dtype=np.float32)
    gates, rec = np.full((11, 20), np.nan, np.float32), np.full((6, 20), np.nan, np.float32)
    products(active, gemv_rows, x, wx, gates, h, wh, rec)
    np.testing.assert_allclose(gates, x @ wx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rec, h @ wh, rtol=1e-5, atol=1e-5)  # the widest step wrote every row
    rec[:] = np.nan
    products(active[1:], gemv_rows, x, wx, gates, h, wh, rec)  # steps of 4 and 1 rows: the rest untouched
    np.testing.assert_allclose(rec[:4], h[:4] @ wh, rtol=1e-5, atol=1e-5)
    assert np.isnan(rec[4:]).all()


def test_the_schedule_limit_runs_the_packed_schedule_of_each_batch_for_every_layer(monkeypatch):
    calls = []
    record = lambda active, rows, x, wx, gates, h, wh, rec: calls.append(  # noqa: E731
        (active.tolist(), rows, x.shape, wx.shape, h.shape))
    monkeypatch.setattr(limits, "_COMPILED", [(record, "recorded")])
    monkeypatch.setattr(limits, "_GEMV_ROWS", {8: 3})
    counts = [np.array([4, 1, 3]), np.array([2, 2])]
    assert limits.schedule_seconds(counts, layers=2, hidden=8, repeats=1) > 0
    f = limits.N_FEATURES
    expected = []
    for lengths in counts:
        steps = Packing.build(lengths).active.tolist()  # [3, 2, 2, 1] and [2, 2]: a_t of the ragged layout
        t = int(lengths.sum())
        expected += [(steps, 3, (t, f), (f, 32), (len(lengths), 8)), (steps, 3, (t, 8), (8, 32), (len(lengths), 8))]
    runs = len(calls) // len(expected)  # once untimed (compile, first touch), then each timed run
    assert runs >= 2 and calls == expected * runs


def test_one_case_reports_the_paired_median_of_its_rounds_and_both_limits():
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime peer needs the bench extra")
    from benchmarks.operator import _peers, measure_case
    from benchmarks.workload import bench_bundle

    row = measure_case(Case(4, "zipf", 1, 8, 300), bench_bundle(1, 8), _peers(("onnx",), 1), rounds=3,
                       batches_per_round=1, cell_ticks=5)
    rounds = row["operator_over_onnx_peer_paired_rounds"]  # peer time / operator time, each round
    assert row["operator_over_onnx_peer_paired_median"] == pytest.approx(np.median(rounds), abs=0.0051)
    assert len(row["operator_over_onnx_peer_paired_rounds"]) == 3
    assert row["schedule_limit_ticks_per_second"] > 0 and row["gemm_limit_rows_per_second"] > 0
    fractions = row["fraction_of_schedule_limit_rounds"]  # schedule time / operator time, each round
    assert len(fractions) == 3 and row["fraction_of_schedule_limit"] == pytest.approx(np.median(fractions), abs=6e-4)
    fractions = row["fraction_of_gemm_limit_rounds"]
    assert len(fractions) == 3 and row["fraction_of_gemm_limit"] == pytest.approx(np.median(fractions), abs=6e-4)
    assert "peer_ticks_per_second" not in row and "keras_cell_ticks_per_second" not in row  # Keras not asked for


@pytest.mark.parametrize("flags, message", [
    (["operator", "--hidden", "0"], "--hidden takes comma-separated positive integers, got '0'"),
    (["operator", "--peers", "onnx,tf"], "--peers takes a comma-separated subset of keras, onnx, got 'onnx,tf'"),
    (["operator", "--ort-threads", "3"], "--ort-threads takes 1 or 2, got 3"),
    (["operator", "--batch-ticks", "0"], "--batch-ticks must be >= 1, got 0"),
    (["backtest", "--ticks", "-5"], "--ticks must be >= 1, got -5"),
])
def test_a_bad_bench_flag_is_one_line(flags, message, capsys):
    assert main(["bench", *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"tickcast: error: {message}"]


def test_backtest_benchmark_runs_a_file_of_the_real_datas_shape():
    from benchmarks.backtest import run

    r = run(12_000, instruments=4, batch=5_000, hidden=8, layers=1, topic=False, printer=lambda _: None)
    assert (r["ticks"], r["instruments"], r["batch_ticks"], r["hidden"], r["layers"]) == (12_000, 4, 5_000, 8, 1)
    assert r["forecasts_scored"] == 12_000  # every tick forecast and joined with its realised value
    assert r["file_backtest_ticks_per_second"] > 0 and "topic_backtest_ticks_per_second" not in r


def test_backtest_benchmark_reads_the_first_ticks_of_a_file_in_place(tmp_path):
    from benchmarks.backtest import fitted, run
    from benchmarks.workload import bench_bundle
    from pipeline.files.synthetic import generate_ticks

    ticks = generate_ticks(3, 3_000, seed=2, bad_fraction=0.0)
    pacsv.write_csv(ticks, tmp_path / "ticks.csv")
    r = run(2_000, batch=500, hidden=8, topic=False, data=str(tmp_path / "ticks.csv"), printer=lambda _: None)
    assert (r["ticks"], r["instruments"], r["forecasts_scored"]) == (2_000, 3, 2_000)
    norm = fitted(bench_bundle(1, 8), ticks).normalisation  # fitted on the ticks' own features, not the identity
    assert not np.allclose(norm.mean, 0.0) and not np.allclose(norm.std, 1.0)
    assert isinstance(ticks, pa.Table)


def test_asking_for_the_onnx_peer_without_onnxruntime_is_one_line(monkeypatch, capsys):
    import benchmarks.operator

    monkeypatch.setattr(benchmarks.operator, "onnx_runtime_available", lambda: False)
    assert main(["bench", "operator", "--peers", "keras,onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "tickcast: error: --peers onnx needs onnx and onnxruntime: pip install 'tickcast[bench]'"]


def test_the_gemm_limit_times_each_batchs_gate_gemm_for_every_layer(monkeypatch):
    calls = []
    real = np.matmul
    monkeypatch.setattr(limits.np, "matmul", lambda x, w, out: calls.append((x.shape, w.shape)) or real(x, w, out=out))
    limit = limits.GemmLimit([[300, 200], [300]], layers=2, hidden=8)
    calls.clear()
    assert limit.seconds(0, repeats=1) > 0
    f = limits.N_FEATURES
    one_run = [((300, f + 8), (f + 8, 32)), ((300, 16), (16, 32)), ((200, f + 8), (f + 8, 32)), ((200, 16), (16, 32))]
    assert len(calls) >= len(one_run) and calls == one_run * (len(calls) // len(one_run))
