"""The command line, as a user runs it: real processes, real files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.files.sinks import write_parquet
from pipeline.files.synthetic import generate_ticks
from tests.support.cli import tickcast


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_parquet(generate_ticks(15, 12_000, seed=21), d / "train.parquet")
    write_parquet(generate_ticks(15, 2_500, seed=22, bad_fraction=0.004), d / "test.parquet")
    out = tickcast("train", "--input", str(d / "train.parquet"), "--out", str(d / "model"),
                   "--hidden", "8", "--epochs", "1", "--window", "64", "--horizon", "5")
    assert "written to" in out.stdout
    return d


def test_backtest_is_the_same_whatever_the_micro_batch_size(trained):
    results = {}
    for size in ("1", "7", "100000"):
        out = trained / f"bt{size}"
        tickcast("backtest", "--input", str(trained / "test.parquet"), "--model", str(trained / "model"),
                 "--out", str(out), "--max-batch-ticks", size, "--quiet")
        results[size] = pq.read_table(out / "forecasts.parquet")
    base = results["100000"]
    assert base.num_rows > 2_400
    for size, table in results.items():
        for col in ("instrument", "ts", "seq", "price"):
            assert table.column(col).equals(base.column(col)), (size, col)
        np.testing.assert_allclose(table.column("forecast").to_numpy(), base.column("forecast").to_numpy(),
                                   rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(table.column("realized").to_numpy(zero_copy_only=False),
                                      base.column("realized").to_numpy(zero_copy_only=False))


def test_backtest_writes_summary_rejects_and_plots(trained):
    out = trained / "bt100000"
    if not out.exists():
        tickcast("backtest", "--input", str(trained / "test.parquet"), "--model", str(trained / "model"),
                 "--out", str(out), "--max-batch-ticks", "100000", "--quiet")
    summary = json.loads((out / "summary.json").read_text())
    for who in ("model", "random_walk"):
        assert set(summary[who]) == {"n", "mae", "rmse", "hit_rate", "ic"}
    assert summary["random_walk"]["hit_rate"] is None
    rejected = pq.read_table(out / "rejected.parquet")
    assert sum(summary["rejected"].values()) == rejected.num_rows > 0
    assert summary["forecasts"] + rejected.num_rows == summary["ticks"] == 2_500
    assert (out / "plots" / "cumulative_error.png").stat().st_size > 10_000
    assert (out / "plots" / "forecast_vs_realized.png").stat().st_size > 10_000


def test_backtest_twice_gives_byte_identical_forecasts(trained):
    paths = []
    for run in ("a", "b"):
        out = trained / f"det_{run}"
        tickcast("backtest", "--input", str(trained / "test.parquet"), "--model", str(trained / "model"),
                 "--out", str(out), "--quiet", "--no-plots")
        paths.append(out / "forecasts.parquet")
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize("args, message", [
    (["backtest", "--input", "X.parquet", "--model", "nowhere", "--out", "o"], "does not exist"),
    (["backtest", "--input", "{d}/test.parquet", "--model", "{d}/model", "--out", "{d}/o", "--max-batch-ticks", "0"],
     "--max-batch-ticks must be >= 1"),
    (["backtest", "--input", "{d}/test.parquet", "--model", "{d}/model", "--out", "{d}/o", "--reset-gap", "soon"],
     "is not a duration"),
    (["train", "--input", "{d}/test.parquet", "--out", "{d}/m2", "--hidden", "0"], "--hidden must be >= 1"),
    (["train", "--input", "{d}/test.parquet", "--out", "{d}/m2", "--map", "price"], "canonical=source"),
    (["backtest", "--input", "{d}/test.parquet", "--model", "{d}/model", "--out", "{d}/o", "--from", "yesterday"],
     "ISO 8601"),
])
def test_bad_flags_get_one_line_not_a_traceback(trained, args, message):
    proc = tickcast(*[a.format(d=trained) for a in args], check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tickcast: error:"), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_state_inspect_reports_partitions_and_unusable_checkpoints(tmp_path, bundle):
    from operators.forecaster import Forecaster
    from pipeline.checkpoint import CheckpointStore

    fc = Forecaster(bundle)
    fc.step(generate_ticks(7, 500, seed=3, bad_fraction=0.0))
    store = CheckpointStore(str(tmp_path / "grp"))
    for offset in (100, 500):
        store.write("ticks", 0, fc.export_partition(0), offset, bundle.model_version, {})
    store.write("ticks", 1, fc.export_partition(1), 42, bundle.model_version, {})

    out = tickcast("state", "inspect", str(tmp_path)).stdout
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["grp/ticks/0", "500", "7"] and lines[1].split()[-1] == "2"
    assert lines[2].split()[:3] == ["grp/ticks/1", "42", "0"]
    assert "2 partition(s), 3 checkpoint(s), 0 unusable" in lines[-1]

    newest = sorted((tmp_path / "grp" / "ticks" / "0").glob("*.arrow"))[-1]
    newest.write_bytes(newest.read_bytes()[:50])
    proc = tickcast("state", "inspect", str(tmp_path), "--json", check=False)
    assert proc.returncode == 1
    rows = json.loads(proc.stdout)
    assert rows[0]["offset"] == 100 and rows[0]["unusable"] == 1 and "truncated" in rows[0]["problems"][0]
    assert rows[0]["model_version"] == bundle.model_version and rows[0]["age_s"] >= 0

    empty = tickcast("state", "inspect", str(tmp_path / "nothing"), check=False)
    assert empty.returncode == 1 and "no checkpoints" in empty.stdout


def test_walkforward_and_compare(tmp_path):
    ticks = tmp_path / "ticks.parquet"
    write_parquet(generate_ticks(6, 9000, seed=8, bad_fraction=0.0), ticks)
    wf = tmp_path / "wf"
    out = tickcast("walkforward", "--input", str(ticks), "--folds", "2", "--epochs", "1", "--hidden", "8",
                   "--out", str(wf)).stdout
    assert "walk-forward over 2 fold(s)" in out and "MAE model - rw" in out
    folds = pq.read_table(wf / "folds.parquet").to_pylist()
    assert [f["fold"] for f in folds] == [1, 2] and all(f["test_ticks"] > 0 for f in folds)
    assert folds[0]["test_from_ns"] == folds[1]["train_from_ns"], "fold 2 trains on fold 1's test window"
    pooled = pq.read_table(wf / "forecasts.parquet")
    assert sorted(set(pooled.column("fold").to_pylist())) == [1, 2]
    assert pooled.num_rows == sum(pq.read_table(wf / f"fold{k}" / "forecasts.parquet").num_rows for k in (1, 2))
    assert (wf / "report.html").stat().st_size > 10_000

    # The two folds' models on the same test window: compare says something, in one line per fact.
    test = tmp_path / "test.parquet"
    write_parquet(generate_ticks(6, 3000, seed=9, bad_fraction=0.0), test)
    runs = []
    for k in (1, 2):
        runs.append(tmp_path / f"bt{k}")
        tickcast("backtest", "--input", str(test), "--model", str(wf / f"fold{k}" / "model"), "--out", str(runs[-1]),
                 "--quiet", "--no-plots")
    res = json.loads(tickcast("compare", str(runs[0]), str(runs[1]), "--json").stdout)
    assert res["n"] > 2000 and res["ci95"][0] <= res["mae_b_minus_a"] <= res["ci95"][1]
    lo, hi = res["ci95"]
    want = "B is better" if hi < 0 else "A is better" if lo > 0 else "no significant difference"
    assert res["verdict"].startswith(want), (res["ci95"], res["verdict"])
    same = json.loads(tickcast("compare", str(runs[0]), str(runs[0]), "--json").stdout)
    assert same["mae_b_minus_a"] == 0 and same["verdict"].startswith("no significant")
    bad = tickcast("compare", str(runs[0]), str(tmp_path), check=False)
    assert bad.returncode == 2 and "holds no forecasts.parquet" in bad.stderr


def test_train_gru_with_horizons_and_quantiles_then_backtest_and_compare_per_output(tmp_path):
    ticks = tmp_path / "ticks.parquet"
    write_parquet(generate_ticks(6, 4000, seed=12, bad_fraction=0.0), ticks)
    tickcast("train", "--input", str(ticks), "--out", str(tmp_path / "m"), "--cell", "gru", "--horizons", "1,4",
             "--quantiles", "0.25", "--hidden", "4", "--epochs", "1", "--window", "32")
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert [o["name"] for o in meta["target"]["outputs"]] == ["h1", "h1_q0.25", "h4", "h4_q0.25"]
    runs = []
    for name in ("a", "b"):
        runs.append(tmp_path / name)
        out = tickcast("backtest", "--input", str(ticks), "--model", str(tmp_path / "m"), "--out", str(runs[-1]),
                       "--quiet", "--no-plots").stdout
        assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("  h")] == ["h1", "h1_q0.25", "h4",
                                                                                       "h4_q0.25"]
    text = tickcast("compare", str(runs[0]), str(runs[1])).stdout.splitlines()
    assert [(ln.split()[0], ln.split()[2]) for ln in text[3:]] == [("h1", "MAE"), ("h1_q0.25", "pinball"),
                                                                   ("h4", "MAE"), ("h4_q0.25", "pinball")]
    res = json.loads(tickcast("compare", str(runs[0]), str(runs[1]), "--json").stdout)
    assert res["outputs"]["h4_q0.25"]["pinball_b_minus_a"] == 0 and res["outputs"]["h1"]["mae_b_minus_a"] == 0
    bad = tickcast("train", "--input", str(ticks), "--out", str(tmp_path / "x"), "--quantiles", "0.5,2", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "quantile must be in (0, 1)" in bad.stderr


def test_walkforward_of_a_multi_horizon_gru_scores_every_output(tmp_path):
    ticks = tmp_path / "ticks.parquet"
    write_parquet(generate_ticks(5, 3000, seed=13, bad_fraction=0.0), ticks)
    args = ["walkforward", "--input", str(ticks), "--cell", "gru", "--horizons", "1,4", "--quantiles", "0.9",
            "--hidden", "4", "--epochs", "1", "--window", "32", "--folds", "2"]
    out = tickcast(*args, "--out", str(tmp_path / "wf")).stdout
    assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("  h")] == ["h1", "h1_q0.9", "h4", "h4_q0.9"]
    assert out.count("MAE model - rw") == 2 and out.count("coverage") == 2
    summary = json.loads((tmp_path / "wf" / "summary.json").read_text())
    pooled = pq.read_table(tmp_path / "wf" / "forecasts.parquet")
    for o in summary["outputs"]:
        r = pooled.column(f"realized_{o['name']}").to_numpy(zero_copy_only=False)
        f = pooled.column(f"forecast_{o['name']}").to_numpy()
        ok = np.isfinite(r)
        assert o["scored"] == ok.sum() > 0
        if o["kind"] == "mean":
            assert o["model"]["mae"] == pytest.approx(np.mean(np.abs(f[ok] - r[ok])), rel=1e-12)
    folds = pq.read_table(tmp_path / "wf" / "folds.parquet")
    assert folds.column("output").to_pylist() == ["h1", "h1_q0.9", "h4", "h4_q0.9"] * 2
    again = json.loads(tickcast(*args, "--out", str(tmp_path / "wf2"), "--json").stdout)
    assert [o["name"] for o in again["outputs"]] == [o["name"] for o in summary["outputs"]]
    assert [o["scored"] for o in again["outputs"]] == [o["scored"] for o in summary["outputs"]]
