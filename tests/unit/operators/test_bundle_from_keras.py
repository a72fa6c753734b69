"""Bundles of brought Keras models: normalisation fitted as training fits it, and a swapped model file refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from operators.bundle import _keras, load_bundle, save_bundle
from operators.errors import BundleError
from operators.features import FEATURE_NAMES, KNOWN_FEATURES, Normalisation, log_return_target
from operators.forecaster import Forecaster
from operators.bundle_from_keras import bundle_keras_model
from operators.training import sequences_from_table
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import in_target_units
from tests.support.cli import tickcast
from tests.support.keras_models import FEATURES, ChainReference, build, bundled, fit_ticks


def test_normalisation_is_fitted_on_the_models_features_as_training_fits_it(tmp_path):
    path = tmp_path / "m.keras"
    build("gru").save(path)
    ticks = fit_ticks()
    b = bundle_keras_model(path, FEATURES, ticks, horizon=6)
    seq = sequences_from_table(ticks)
    # The model's features picked from all five, row-major as training holds them (a column pick is
    # column-major, and numpy sums those columns in another order: the means differ in the last bit).
    picked = np.ascontiguousarray(seq.raw_features[:, [FEATURE_NAMES.index(n) for n in FEATURES]])
    np.testing.assert_array_equal(picked, sequences_from_table(ticks, tuple(FEATURES)).raw_features)
    want = Normalisation.fit(picked, log_return_target(seq.price, seq.group_starts, 6))
    np.testing.assert_array_equal(b.normalisation.mean, want.mean)
    np.testing.assert_array_equal(b.normalisation.std, want.std)
    assert (b.normalisation.target_mean, b.normalisation.target_std) == (want.target_mean, want.target_std)
    raw = bundle_keras_model(path, FEATURES, ticks, horizon=6, target_normalised=False)
    assert (raw.normalisation.target_mean, raw.normalisation.target_std) == (0.0, 1.0)
    np.testing.assert_array_equal(raw.normalisation.mean, want.mean)


def test_a_model_file_swapped_under_a_brought_bundle_is_refused(tmp_path):
    clear = _keras().backend.clear_session  # the same layer names for both: only the weights differ
    clear()
    b, _ = bundled(build("gru", seed=1), tmp_path / "one")
    clear()
    other, _ = bundled(build("gru", seed=2), tmp_path / "two")
    assert other.meta()["architecture"] == b.meta()["architecture"]
    other_arch, _ = bundled(build("simple_rnn"), tmp_path / "three")
    for source, message in ((other, "different trainings"), (other_arch, "not the model")):
        swapped = tmp_path / f"swapped-{message[:3]}"
        shutil.copytree(b.path, swapped)
        shutil.copy(source.path / "model.keras", swapped / "model.keras")
        with pytest.raises(BundleError, match=message):
            load_bundle(swapped)


def test_a_brought_bundle_saves_and_loads_with_the_same_version(tmp_path):
    b, model_file = bundled(build("lstm_layernorm_gru_k3"), tmp_path / "a")
    again = load_bundle(save_bundle(b, tmp_path / "b", model_file=model_file))
    assert again.model_version == b.model_version and again.shape == b.shape and again.outputs == 3
    with_keras = load_bundle(b.path, with_keras=True)
    assert with_keras.keras_model is not None and with_keras.model_version == b.model_version


def test_a_brought_model_over_registry_features_serves_what_keras_computes(tmp_path):
    """Any features of the registry, in the model's order; the state rows keep the previous mid and sign."""
    names = ["signed_log_size", "mid_log_return", "time_of_day_cos", "microprice_deviation"]
    model = build("gru", seed=5)
    b, _ = bundled(model, tmp_path, features=names)
    assert b.feature_spec.names == tuple(names) and b.shape.previous == ("mid", "sign")
    ticks = generate_ticks(3, 120, seed=6, bad_fraction=0.0)
    rows, want, _ = ChainReference(b, model).run(ticks)
    fc = Forecaster(b)
    got = np.concatenate([fc.step(ticks.slice(a, 40)).forecasts for a in range(0, ticks.num_rows, 40)])
    np.testing.assert_array_equal(np.sort(rows), np.arange(ticks.num_rows))
    np.testing.assert_allclose(in_target_units(b, got), want[:, 0], rtol=1e-5, atol=1e-5)


def test_bundle_help_lists_every_feature():
    done = tickcast("bundle", "--help")
    text = " ".join(done.stdout.split())
    assert all(name in text for name in KNOWN_FEATURES)
