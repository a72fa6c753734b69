"""`tickcast train --features`: any ordered subset of the feature registry; the bundle round-trips, serves
what its Keras model computes, and unknown names are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.bundle import load_bundle
from operators.errors import BundleError
from operators.features import KNOWN_FEATURES
from operators.forecaster import Forecaster
from operators.training import sequences_from_table
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import in_target_units
from tests.support.cli import tickcast
from tests.support.keras_models import ChainReference
from tests.support.shared import shared_folder

# Every feature, the new ones first: the model's input order is the spec's, not the registry's.
NAMES = (*KNOWN_FEATURES[5:], *KNOWN_FEATURES[:5])
GRU = ("trade_sign", "time_of_day_sin", "log_return")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two bundles trained by the CLI, once per session (shared by the xdist workers)."""
    return shared_folder(tmp_path_factory, "train_features", _train_both)


def _train_both(folder) -> None:
    pq.write_table(generate_ticks(3, 900, seed=2, bad_fraction=0.0), folder / "ticks.parquet")
    tickcast("train", "--input", str(folder / "ticks.parquet"), "--out", str(folder / "model"), "--epochs", "1",
             "--hidden", "4", "--window", "32", "--horizon", "3", "--features", ",".join(NAMES))
    tickcast("train", "--input", str(folder / "ticks.parquet"), "--out", str(folder / "gru"), "--epochs", "1",
             "--hidden", "4", "--window", "32", "--cell", "gru", "--horizons", "1,3", "--features", ",".join(GRU))


def test_the_bundle_names_its_features_in_order_and_round_trips(trained):
    meta = json.loads((trained / "model" / "bundle.json").read_text())
    assert meta["feature_spec"] == {"version": 1, "names": list(NAMES)}
    assert meta["architecture"]["n_features"] == len(NAMES) and len(meta["normalisation"]["mean"]) == len(NAMES)
    bundle = load_bundle(trained / "model")
    assert bundle.feature_spec.names == NAMES and bundle.model_version == meta["model_version"]
    assert bundle.shape.previous == ("mid", "sign")


def test_the_operator_serves_what_the_keras_model_computes_in_any_micro_batches(trained):
    bundle = load_bundle(trained / "model", with_keras=True)
    ticks = generate_ticks(3, 300, seed=9, bad_fraction=0.01)
    seq = sequences_from_table(ticks, bundle.feature_spec.names)
    x = bundle.model_inputs(seq.raw_features)
    want = np.empty(len(seq.order))
    bounds = np.append(seq.group_starts, len(seq.order))
    for s, e in zip(bounds[:-1], bounds[1:]):
        want[s:e] = np.asarray(bundle.keras_model(x[None, s:e], training=False)).ravel()
    norm = bundle.normalisation
    want = want * norm.target_std + norm.target_mean
    fc = Forecaster(bundle)
    cuts = [0, 17, 18, 130, 200, ticks.num_rows]
    got_rows, got = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        res = fc.step(ticks.slice(a, b - a))
        got_rows.append(res.rows + a)
        got.append(res.forecasts)
    by_row = dict(zip(np.concatenate(got_rows).tolist(), np.concatenate(got).tolist()))
    got = np.array([by_row[r] for r in seq.order.tolist()])
    np.testing.assert_allclose(in_target_units(bundle, got), in_target_units(bundle, want), rtol=1e-5, atol=1e-5)


def test_a_gru_with_several_outputs_over_registry_features_serves_what_keras_computes(trained):
    bundle = load_bundle(trained / "gru", with_keras=True)
    meta = json.loads((trained / "gru" / "bundle.json").read_text())
    assert meta["feature_spec"]["names"] == list(GRU) and meta["training"]["config"]["features"] == list(GRU)
    assert bundle.outputs == 2 and bundle.shape.previous == ("sign",)
    ticks = generate_ticks(3, 240, seed=4, bad_fraction=0.0)
    rows, want, _ = ChainReference(bundle, bundle.keras_model).run(ticks)
    fc = Forecaster(bundle)
    got = np.concatenate([fc.step(ticks.slice(a, 50)).forecasts for a in range(0, ticks.num_rows, 50)])
    np.testing.assert_array_equal(rows, np.arange(ticks.num_rows))
    np.testing.assert_allclose(in_target_units(bundle, got), want, rtol=1e-5, atol=1e-5)


def test_a_bundle_naming_an_unknown_feature_is_refused_listing_the_known_ones(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "model", tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["feature_spec"]["names"][0] = "vwap"
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"unknown \['vwap'\]\); choose from log_return, .*time_of_day_cos"):
        load_bundle(tmp_path / "b")


@pytest.mark.parametrize("features, message", [
    ("log_return,vwap", "unknown ['vwap']); choose from " + ", ".join(KNOWN_FEATURES)),
    ("trade_sign,trade_sign", "a feature named twice"),
    (",", "none given"),
])
def test_train_refuses_unusable_features_in_one_line(tmp_path, features, message):
    done = tickcast("train", "--input", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m"),
                    "--features", features, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
    assert "--features" in done.stderr


def test_train_help_lists_every_feature():
    done = tickcast("train", "--help")
    text = " ".join(done.stdout.split())
    assert all(name in text for name in KNOWN_FEATURES)
