"""Several outputs per tick: their meanings, flags, targets and the pinball loss; a trained multi-horizon GRU
serves the numbers Keras computes; the default model's bundle metadata is what it always was."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.bundle import load_bundle, save_bundle
from operators.features import Normalisation, log_return_target
from operators.forecaster import Forecaster
from operators.outputs import OutputSpec, outputs_for, parse_outputs, pinball, targets
from operators.training import TrainConfig
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import in_target_units
from tests.support.keras_models import ChainReference

finite = st.floats(-1e3, 1e3, allow_nan=False)


@given(f=finite, r=finite, q=st.floats(0.01, 0.99))
def test_pinball_is_q_times_the_shortfall_or_one_minus_q_times_the_excess(f, r, q):
    want = q * (r - f) if r >= f else (1 - q) * (f - r)
    assert pinball(np.array([f]), np.array([r]), q)[0] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_horizons_and_quantiles_make_a_mean_then_each_quantile_per_horizon():
    got = outputs_for("1,10", "0.1,0.9")
    assert [o.name for o in got] == ["h1", "h1_q0.1", "h1_q0.9", "h10", "h10_q0.1", "h10_q0.9"]
    assert got[5] == OutputSpec("h10_q0.9", 10, "quantile", 0.9)
    assert parse_outputs("a:1, b:10:0.5") == (OutputSpec("a", 1), OutputSpec("b", 10, "quantile", 0.5))


@pytest.mark.parametrize("horizons, quantiles, message", [
    ("1,x", "", "--horizons must be comma-separated numbers"),
    ("1,0", "", "output h0: horizon must be >= 1"),
    ("1", "0.5,1", "quantile must be in (0, 1)"),
    ("5,5", "", "output names must differ"),
])
def test_bad_horizons_or_quantiles_say_what_is_wrong(horizons, quantiles, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.with_outputs(horizons, quantiles).check()


def test_each_output_has_its_own_target_and_target_statistics():
    price = np.exp(np.cumsum(np.random.default_rng(1).normal(0, 1e-3, 50)))
    starts = np.array([0, 20])
    outs = outputs_for("1,5", "0.5")
    y = targets(price, starts, outs)
    for k, o in enumerate(outs):
        np.testing.assert_array_equal(y[:, k], log_return_target(price, starts, o.horizon))
    norm = Normalisation.fit(np.zeros((50, 2)), y)
    again = Normalisation.from_dict(json.loads(json.dumps(norm.to_dict())))
    for k in range(len(outs)):
        t = y[:, k][np.isfinite(y[:, k])]
        assert again.target_mean[k] == pytest.approx(t.mean()) and again.target_std[k] == pytest.approx(t.std())


def test_one_horizon_gives_the_default_model_and_its_bundle_metadata_as_before(bundle):
    assert TrainConfig.with_outputs("7", "") == TrainConfig(horizon=7)
    assert TrainConfig.with_outputs("", "") == TrainConfig()
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["target"] == {"kind": "log_return", "horizon_ticks": 5}
    assert set(meta["training"]["config"]) == {"layers", "hidden", "horizon", "epochs", "window", "batch_size",
                                               "learning_rate", "max_ticks", "validation_fraction", "seed"}
    assert set(meta["architecture"]) == {"layers", "hidden", "n_features"}
    assert isinstance(meta["normalisation"]["target_mean"], float)


def test_a_multi_horizon_gru_bundle_names_its_outputs_and_round_trips(multi_bundle, tmp_path):
    meta = json.loads((multi_bundle.path / "bundle.json").read_text())
    assert [o["name"] for o in meta["target"]["outputs"]] == ["h1", "h1_q0.1", "h1_q0.9", "h5", "h5_q0.1", "h5_q0.9"]
    assert meta["target"]["outputs"][2] == {"name": "h1_q0.9", "horizon": 1, "kind": "quantile", "quantile": 0.9}
    assert meta["architecture"]["source"] == "train" and meta["architecture"]["cells"] == [["gru", 8]]
    assert len(meta["normalisation"]["target_std"]) == 6 and multi_bundle.outputs == 6
    assert meta["training"]["config"]["cell"] == "gru"
    again = load_bundle(save_bundle(multi_bundle, tmp_path / "b", model_file=multi_bundle.path / "model.keras"))
    assert again.model_version == multi_bundle.model_version and again.output_list == multi_bundle.output_list


def test_a_bundle_json_naming_other_outputs_than_the_model_gives_is_refused(multi_bundle, tmp_path):
    from operators.errors import BundleError

    path = save_bundle(multi_bundle, tmp_path / "b", model_file=multi_bundle.path / "model.keras")
    meta = json.loads((path / "bundle.json").read_text())
    meta["target"]["outputs"] = meta["target"]["outputs"][:5]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="names 5 outputs, the model gives 6 per tick"):
        load_bundle(path)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_multi_horizon_gru_serves_what_keras_computes_over_random_micro_batches(multi_bundle, seed):
    """Keras on each instrument's whole sequence == the operator over random micro-batches, every output."""
    ticks = generate_ticks(5, 700, seed=seed % 97, bad_fraction=0.0)
    rows, want, _ = ChainReference(multi_bundle, multi_bundle.keras_model).run(ticks)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, ticks.num_rows), size=rng.integers(1, 30), replace=False))
    forecaster = Forecaster(multi_bundle)
    got_rows, got = [], []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, ticks.num_rows]):
        r = forecaster.step(ticks.slice(a, b - a))
        got_rows.append(r.rows + a)
        got.append(r.forecasts)
    got_rows, got = np.concatenate(got_rows), np.concatenate(got)
    order = np.argsort(got_rows)
    assert got.shape == (len(rows), 6)
    np.testing.assert_array_equal(got_rows[order], rows)
    np.testing.assert_allclose(in_target_units(multi_bundle, got[order]), want, rtol=1e-5, atol=1e-5)


def test_the_loss_is_mse_for_means_pinball_for_quantiles_and_ignores_unknown_targets():
    from operators.training import make_loss

    outs = (OutputSpec("h1", 1), OutputSpec("h5_q0.9", 5, "quantile", 0.9))
    y = np.array([[0.5, -1.0], [2.0, 3.0]], np.float32)  # targets per tick, per output
    w = np.array([[1, 1], [1, 0]], np.float32)  # tick 2's h5 target lies past its sequence's end
    pred = np.array([[0.0, 1.0], [1.0, -7.0]], np.float32)
    got = np.asarray(make_loss(outs)(np.concatenate([y, w], axis=1), pred))
    want = [(0.5**2 + 0.1 * 2.0) / 2, (1.0**2 + 0.0) / 2]
    np.testing.assert_allclose(got, want, rtol=1e-6)
