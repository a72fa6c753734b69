"""Walk-forward with several outputs: each output pooled over the folds and scored against its own target, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.training import TrainConfig
from pipeline.console import format_walkforward
from pipeline.evaluation.walkforward import run_walkforward
from pipeline.files.synthetic import generate_ticks

FOLDS = 2


@pytest.fixture(scope="module")
def walkforward(tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "wf"
    config = TrainConfig.with_outputs("1,5", "0.9", hidden=4, epochs=1, window=16, batch_size=16)
    ticks = generate_ticks(4, 2400, seed=31)  # with some bad ticks: realised returns skip what was refused
    summary = run_walkforward(ticks, FOLDS, config, out, max_batch_ticks=113, say=lambda _: None)
    return out, summary, config


def _realised_by_hand(table, horizon: int) -> list[float]:
    """Per fold and instrument, in input order: log(price h forecasts later / price now), NaN when none."""
    fold, inst, price = (table.column(c).to_pylist() for c in ("fold", "instrument", "price"))
    rows: dict[tuple[int, str], list[int]] = {}
    for i, key in enumerate(zip(fold, inst)):
        rows.setdefault(key, []).append(i)
    out = [math.nan] * len(inst)
    for idx in rows.values():
        for j in range(len(idx) - horizon):
            out[idx[j]] = math.log(price[idx[j + horizon]] / price[idx[j]])
    return out


def _by_hand(forecast: list[float], realised: list[float], spec) -> dict:
    pairs = [(f, r) for f, r in zip(forecast, realised) if not math.isnan(r)]
    n = len(pairs)
    if spec.kind == "quantile":
        q = spec.quantile
        loss = [q * (r - f) if r >= f else (1 - q) * (f - r) for f, r in pairs]
        rw = [q * r if r >= 0 else (1 - q) * -r for _, r in pairs]
        return {"scored": n, "pinball": sum(loss) / n, "pinball_random_walk": sum(rw) / n,
                "coverage": sum(r <= f for f, r in pairs) / n}
    directional = [(f, r) for f, r in pairs if f != 0 and r != 0]
    sse, sse_rw = sum((f - r) ** 2 for f, r in pairs), sum(r * r for _, r in pairs)
    return {"scored": n, "mae": sum(abs(f - r) for f, r in pairs) / n,
            "mae_random_walk": sum(abs(r) for _, r in pairs) / n,
            "rmse": math.sqrt(sse / n), "rmse_random_walk": math.sqrt(sse_rw / n),
            "hit_rate": sum((f > 0) == (r > 0) for f, r in directional) / len(directional),
            "r2_vs_random_walk": 1 - sse / sse_rw}


def _flat(o: dict) -> dict:
    m, rw = o["model"], o["random_walk"]
    if o["kind"] == "quantile":
        return {"scored": o["scored"], "pinball": m["pinball"], "pinball_random_walk": rw["pinball"],
                "coverage": m["coverage"]}
    return {"scored": o["scored"], "mae": m["mae"], "mae_random_walk": rw["mae"], "rmse": m["rmse"],
            "rmse_random_walk": rw["rmse"], "hit_rate": m["hit_rate"], "r2_vs_random_walk": o["r2_vs_random_walk"]}


def test_each_output_pooled_over_the_folds_is_scored_against_its_own_realised_return(walkforward):
    out, summary, config = walkforward
    table = pq.read_table(out / "forecasts.parquet")
    assert sorted(set(table.column("fold").to_pylist())) == [1, 2]
    assert table.num_rows == sum(pq.read_table(out / f"fold{k}" / "forecasts.parquet").num_rows for k in (1, 2))
    assert [o["name"] for o in summary["outputs"]] == [o.name for o in config.output_list] == \
        ["h1", "h1_q0.9", "h5", "h5_q0.9"]
    assert json.loads((out / "summary.json").read_text())["outputs"] == summary["outputs"]
    instruments = len(set(zip(table.column("fold").to_pylist(), table.column("instrument").to_pylist())))
    for spec, s in zip(config.output_list, summary["outputs"]):
        realised = _realised_by_hand(table, spec.horizon)
        got = table.column(f"realized_{spec.name}").to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(got, realised, rtol=1e-12)  # NaN where the horizon runs past the fold
        want = _by_hand(table.column(f"forecast_{spec.name}").to_pylist(), realised, spec)
        assert want["scored"] == table.num_rows - instruments * spec.horizon  # the last h of each fold's instrument
        assert _flat(s) == pytest.approx(want, rel=1e-9)
        if spec.kind == "mean":
            assert s["confidence"]["mae"]["value"] == pytest.approx(want["mae"], rel=1e-9)
            lo, hi = s["confidence"]["mae"]["ci95"]
            assert lo <= want["mae"] <= hi


def test_folds_parquet_has_a_row_per_fold_and_output_with_that_folds_scores(walkforward):
    out, summary, config = walkforward
    table = pq.read_table(out / "forecasts.parquet")
    folds = pq.read_table(out / "folds.parquet").to_pylist()
    names = [o.name for o in config.output_list]
    assert [(r["fold"], r["output"]) for r in folds] == [(k, n) for k in (1, 2) for n in names]
    for row in folds:
        part = table.filter(table.column("fold").to_numpy() == row["fold"])
        spec = config.output_list[names.index(row["output"])]
        want = _by_hand(part.column(f"forecast_{spec.name}").to_pylist(), _realised_by_hand(part, spec.horizon), spec)
        assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-9)
        assert row["horizon_ticks"] == spec.horizon and row["kind"] == spec.kind
    assert summary["per_fold"] == folds
    per_inst = pq.read_table(out / "per_instrument.parquet")
    assert sorted(set(per_inst.column("output").to_pylist())) == ["h1", "h5"]  # the mean outputs


def test_console_and_report_show_every_output(walkforward):
    out, summary, config = walkforward
    text = format_walkforward(summary, FOLDS, out)
    heads = [ln.split()[0] for ln in text.splitlines() if ln.startswith("  h")]
    assert heads == [o.name for o in config.output_list]
    assert text.count("MAE model - rw") == 2 and text.count("pinball model") == 2
    page = (out / "report.html").read_text()
    assert all(f"<td>{o.name}</td>" in page for o in config.output_list)
    assert "Output h5: log return over 5 ticks" in page
