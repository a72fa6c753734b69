"""A backtest of a model with several outputs scores each output against its own realised target, by hand."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.console import format_comparisons, format_summary
from pipeline.evaluation.backtest import run_backtest
from pipeline.evaluation.report import compare_runs
from pipeline.files.sinks import write_parquet
from pipeline.files.synthetic import generate_ticks


@pytest.fixture(scope="module")
def backtest(multi_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "bt"
    ticks = generate_ticks(4, 1500, seed=21)  # with some bad ticks: realised returns skip what was refused
    return run_backtest(ticks, multi_bundle, out, max_batch_ticks=97, progress=False), multi_bundle


def _realised_by_hand(table, horizon: int) -> list[float]:
    """Per instrument, in input order: log(price h forecasts later / price now), NaN when there is none."""
    inst, price = table.column("instrument").to_pylist(), table.column("price").to_pylist()
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(inst):
        seen.setdefault(name, []).append(i)
    out = [math.nan] * len(inst)
    for idx in seen.values():
        for j, i in enumerate(idx[:-horizon] if horizon < len(idx) else []):
            out[i] = math.log(price[idx[j + horizon]] / price[i])
    return out


def test_every_output_is_scored_against_the_realised_return_over_its_own_horizon(backtest):
    result, bundle = backtest
    table = pq.read_table(result.out_dir / "forecasts.parquet")
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert [o["name"] for o in summary["outputs"]] == [o.name for o in bundle.output_list]
    for spec, s in zip(bundle.output_list, summary["outputs"]):
        realised = _realised_by_hand(table, spec.horizon)
        np.testing.assert_allclose(table.column(f"realized_{spec.name}").to_numpy(), realised, rtol=1e-12)
        pairs = [(f, r) for f, r in zip(table.column(f"forecast_{spec.name}").to_pylist(), realised)
                 if not math.isnan(r)]
        assert s["scored"] == len(pairs) == len(table) - 4 * spec.horizon  # the last h of each instrument
        if spec.kind == "quantile":
            q = spec.quantile
            loss = [q * (r - f) if r >= f else (1 - q) * (f - r) for f, r in pairs]
            assert s["model"]["pinball"] == pytest.approx(sum(loss) / len(loss), rel=1e-12)
            assert s["model"]["coverage"] == pytest.approx(sum(r <= f for f, r in pairs) / len(pairs), rel=1e-12)
            rw = [q * r if r >= 0 else (1 - q) * -r for _, r in pairs]
            assert s["random_walk"]["pinball"] == pytest.approx(sum(rw) / len(rw), rel=1e-12)
        else:
            assert s["model"]["mae"] == pytest.approx(sum(abs(f - r) for f, r in pairs) / len(pairs), rel=1e-12)
            assert s["random_walk"]["mae"] == pytest.approx(sum(abs(r) for _, r in pairs) / len(pairs), rel=1e-12)
            rmse = math.sqrt(sum((f - r) ** 2 for f, r in pairs) / len(pairs))
            assert s["model"]["rmse"] == pytest.approx(rmse, rel=1e-12)
            directional = [(f, r) for f, r in pairs if f != 0 and r != 0]
            hits = sum((f > 0) == (r > 0) for f, r in directional) / len(directional)
            assert s["model"]["hit_rate"] == pytest.approx(hits, rel=1e-12)
            assert s["confidence"]["mae"]["value"] == pytest.approx(s["model"]["mae"], rel=1e-12)


def test_report_breakdowns_and_summary_are_per_output(backtest):
    result, bundle = backtest
    page = (result.out_dir / "report.html").read_text()
    for spec in bundle.output_list:
        assert f"<td>{spec.name}</td>" in page  # a row per output in the table of every output
    assert "Output h1: log return over 1 ticks" in page and "Output h5: log return over 5 ticks" in page
    per_inst = pq.read_table(result.out_dir / "per_instrument.parquet")
    assert sorted(set(per_inst.column("output").to_pylist())) == ["h1", "h5"]
    assert (result.out_dir / "plots" / "h5" / "cumulative_error.png").is_file()
    lines = format_summary(result.summary, result.out_dir).splitlines()
    assert [ln.split()[0] for ln in lines if ln.startswith("  h")] == [o.name for o in bundle.output_list]


def test_compare_is_per_output_with_each_outputs_own_loss(backtest, tmp_path):
    result, bundle = backtest
    other = tmp_path / "b"
    shutil.copytree(result.out_dir, other)
    table = pq.read_table(other / "forecasts.parquet")
    moved = "forecast_h5_q0.9"
    i = table.column_names.index(moved)
    table = table.set_column(i, moved, pc.add(table.column(moved), 1e-3))
    write_parquet(table, other / "forecasts.parquet")
    per_output, version_a, version_b = compare_runs(result.out_dir, other)
    assert [n for n, _ in per_output] == [o.name for o in bundle.output_list]
    assert version_a == version_b == bundle.model_version
    a = pq.read_table(result.out_dir / "forecasts.parquet")
    r = a.column("realized_h5_q0.9").to_numpy()
    ok = np.isfinite(r)
    fa, fb = a.column(moved).to_numpy()[ok], table.column(moved).to_numpy()[ok]
    loss = lambda f: np.mean(np.maximum(0.9 * (r[ok] - f), -0.1 * (r[ok] - f)))  # noqa: E731
    for name, c in per_output:
        if name == moved[len("forecast_"):]:
            assert c.metric == "pinball" and c.n == ok.sum()
            assert c.mae_a == pytest.approx(loss(fa), rel=1e-12) and c.mae_b == pytest.approx(loss(fb), rel=1e-12)
            assert c.diff == pytest.approx(loss(fb) - loss(fa), rel=1e-9)
        else:
            assert c.diff == 0 and c.metric == ("pinball" if "_q" in name else "MAE")
    text = format_comparisons(per_output, "A", "B", version_a, version_b).splitlines()
    assert [ln.split()[0] for ln in text[3:]] == [o.name for o in bundle.output_list]


def test_a_single_quantile_output_is_scored_by_pinball_loss_not_mae(tmp_path):
    from operators.bundle import load_bundle, save_bundle
    from operators.bundle_from_keras import bundle_keras_model
    from operators.outputs import OutputSpec
    from tests.support.keras_models import FEATURES, build, fit_ticks

    model_file = tmp_path / "m.keras"
    build("gru").save(model_file)
    b = bundle_keras_model(model_file, FEATURES, fit_ticks(), outputs=(OutputSpec("med", 3, "quantile", 0.5),))
    bundle = load_bundle(save_bundle(b, tmp_path / "b", model_file=model_file))
    result = run_backtest(fit_ticks(), bundle, tmp_path / "bt", plots=False, progress=False)
    (s,) = result.summary["outputs"]
    assert (s["name"], s["kind"], s["quantile"]) == ("med", "quantile", 0.5) and "pinball" in s["model"]
    f, r = result.forecasts.column("forecast_med").to_numpy(), result.forecasts.column("realized_med").to_numpy()
    ok = np.isfinite(r)
    assert s["model"]["pinball"] == pytest.approx(np.mean(0.5 * np.abs(f[ok] - r[ok])), rel=1e-12)
