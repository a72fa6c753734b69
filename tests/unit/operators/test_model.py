"""Bundles: round trip, train/serve parity, and refusal of what cannot be served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from operators.errors import BundleError
from operators.forecaster import Forecaster
from operators.bundle import _version_hash, load_bundle, save_bundle
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import in_target_units


def test_bundle_holds_what_serving_needs(bundle):
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["target"] == {"kind": "log_return", "horizon_ticks": 5}
    assert meta["architecture"] == {"layers": 1, "hidden": 16, "n_features": 5}
    assert len(meta["training"]["sha256"]) == 64 and meta["training"]["valid_ticks"] > 0
    assert meta["model_version"] == bundle.model_version and len(bundle.model_version) == 16


def test_train_serve_parity_full_sequence_vs_random_micro_batches(bundle, reference):
    """The Keras model over each instrument's full sequence == the operator over random micro-batches."""
    ticks = generate_ticks(8, 3_000, seed=11, bad_fraction=0.002)
    _, ref, _ = reference.run(ticks)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(ticks.num_rows, size=40, replace=False))
    bounds = list(zip(np.r_[0, cuts], np.r_[cuts, ticks.num_rows]))
    fc = Forecaster(bundle)
    got = np.concatenate([fc.step(ticks.slice(a, b - a)).forecasts for a, b in bounds])
    np.testing.assert_allclose(in_target_units(bundle, got), in_target_units(bundle, ref), rtol=1e-5, atol=1e-5)


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle.path, dst)
    return dst


def _edit(path, fn):
    meta = json.loads((path / "bundle.json").read_text())
    fn(meta)
    (path / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["feature_spec"].update(version=99), "feature spec v99"),
    (lambda m: m.update(format_version=7), "format version 7"),
    (lambda m: m["architecture"].update(hidden=32), "units=16"),
    (lambda m: m["normalisation"].update(mean=[0.0]), "wrong number of features"),
    (lambda m: m.pop("target"), "incomplete"),
    (lambda m: m["normalisation"].update(target_std=2.0), "does not match"),
])
def test_incompatible_bundles_are_refused_with_a_clear_message(bundle, tmp_path, edit, message):
    path = _copy(bundle, tmp_path)
    _edit(path, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


@pytest.mark.parametrize("field, value", [("std", 0.0), ("std", -1.0), ("std", float("nan")),
                                          ("mean", float("inf")), ("target_std", 0.0)])
def test_bundle_with_unusable_normalisation_is_refused_even_when_its_hash_matches(bundle, tmp_path, field, value):
    """A bundle saved consistently (version hash over its own statistics) but dividing by zero or NaN."""
    import dataclasses

    norm = bundle.normalisation
    if field == "target_std":
        bad = dataclasses.replace(norm, target_std=value)
    else:
        arr = getattr(norm, field).copy()
        arr[1] = value
        bad = dataclasses.replace(norm, **{field: arr})
    broken = dataclasses.replace(bundle, normalisation=bad)
    broken = dataclasses.replace(broken, model_version=_version_hash(broken.weights, broken.meta()))
    path = save_bundle(broken, tmp_path / "b")
    with pytest.raises(BundleError, match=f"normalisation must be finite.*{field}"):
        load_bundle(path)


def test_missing_or_foreign_directories_are_refused(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("with_keras", [False, True], ids=["file-reader", "keras"])
def test_model_with_code_is_refused_in_safe_mode(bundle, tmp_path, with_keras):
    import keras

    inp = keras.Input(shape=(None, 5))
    out = keras.layers.Lambda(lambda x: x[..., :1] * 2.0)(inp)
    model = keras.Model(inp, out)
    path = _copy(bundle, tmp_path)
    model.save(path / "model.keras")
    with pytest.raises(BundleError, match="safe mode"):
        load_bundle(path, with_keras=with_keras)


@pytest.mark.parametrize("with_keras", [False, True], ids=["file-reader", "keras"])
def test_unservable_architecture_is_refused(bundle, tmp_path, with_keras):
    import keras

    inp = keras.Input(shape=(None, 5))
    x = keras.layers.LSTM(16, return_sequences=True, activation="relu", name="lstm_0")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="forecast")(x))
    path = _copy(bundle, tmp_path)
    model.save(path / "model.keras")
    with pytest.raises(BundleError, match="activation='relu'"):
        load_bundle(path, with_keras=with_keras)


@pytest.mark.parametrize("with_keras", [False, True], ids=["file-reader", "keras"])
@pytest.mark.parametrize("extra, message", [
    ("norm", r"layers outside the architecture: norm \(LayerNormalization\)"),
    ("dense", r"layers outside the architecture: between \(Dense\)"),
    ("lstm", "1 more LSTM layers"),
])
def test_a_layer_the_operator_would_skip_is_refused(bundle, tmp_path, with_keras, extra, message):
    """The kernel computes lstm_0.. and forecast only: any other layer in the file would be skipped
    silently and the forecasts would differ from the Keras model's, so the bundle is refused."""
    import keras

    inp = keras.Input(shape=(None, 5), name="features")
    x = keras.layers.LSTM(16, return_sequences=True, name="lstm_0")(inp)
    if extra == "norm":
        x = keras.layers.LayerNormalization(name="norm")(x)
    elif extra == "dense":
        x = keras.layers.Dense(16, name="between")(x)
    else:
        x = keras.layers.LSTM(16, return_sequences=True, name="lstm_extra")(x)
    model = keras.Model(inp, keras.layers.Dense(1, name="forecast")(x))
    path = _copy(bundle, tmp_path)
    model.save(path / "model.keras")
    with pytest.raises(BundleError, match=message):
        load_bundle(path, with_keras=with_keras)


@pytest.mark.parametrize("fixture", ["bundle", "bundle2"])
def test_serving_reads_the_same_weights_as_keras_without_importing_it(fixture, request):
    b = request.getfixturevalue(fixture)
    served = load_bundle(b.path)
    assert served.keras_model is None and served.model_version == b.model_version
    for mine, theirs in zip(served.weights.layers, b.weights.layers):
        for name in ("kernel", "recurrent", "bias"):
            np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name))
    np.testing.assert_array_equal(served.weights.dense_kernel, b.weights.dense_kernel)
    assert served.weights.dense_bias == b.weights.dense_bias
    # What `tickcast run` and `tickcast backtest` import, then the bundle loaded and the operator built.
    probe = ("import sys\nimport pipeline.cli, pipeline.run_command, pipeline.live.runner, pipeline.evaluation.backtest\n"
             "from operators.bundle import load_bundle\nfrom operators.forecaster import Forecaster\n"
             f"Forecaster(load_bundle({str(b.path)!r}))\n"
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow'))\n"
             "assert not loaded, loaded[:5]\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-2000:]


def test_save_load_round_trip_keeps_weights_and_version(bundle, tmp_path):
    save_bundle(bundle, tmp_path / "again")
    again = load_bundle(tmp_path / "again")
    assert again.model_version == bundle.model_version
    np.testing.assert_array_equal(again.weights.layers[0].kernel, bundle.weights.layers[0].kernel)


def test_keras_with_a_known_safe_mode_bypass_is_refused_and_not_admitted_by_the_requirements(bundle, monkeypatch):
    import tomllib
    from pathlib import Path

    import keras

    from operators.bundle import SAFE_KERAS

    # Each with a published safe-mode bypass: CVE-2025-1550 (< 3.9), CVE-2025-8747 and CVE-2025-9906 (< 3.11),
    # CVE-2025-49655 (3.11.0-3.11.2), CVE-2026-1462 (< 3.13.2).
    for version in ("3.8.0", "3.10.0", "3.11.2", "3.13.1"):
        monkeypatch.setattr(keras, "__version__", version)
        with pytest.raises(BundleError, match="CVE-2025-8747.*CVE-2026-1462"):
            load_bundle(bundle.path, with_keras=True)
    monkeypatch.setattr(keras, "__version__", "3.13.2")
    load_bundle(bundle.path, with_keras=True)
    assert SAFE_KERAS == (3, 13, 2)
    deps = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = [d for d in deps if d.replace(" ", "").startswith("keras>=")]
    assert floor, f"keras has no lower bound in {deps}"
    assert tuple(int(p) for p in floor[0].split(">=")[1].split(".")[:3]) >= SAFE_KERAS
