"""Shared fixtures: small trained bundles and the Keras reference for an instrument's sequence."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

pytest.register_assert_rewrite("tests.support")  # their asserts explain a failure like a test module's do

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from operators.bundle import Bundle, load_bundle, save_bundle  # noqa: E402
from operators.training import TrainConfig, sequences_from_table, train  # noqa: E402
from pipeline.files.synthetic import generate_ticks  # noqa: E402
from tests.support.shared import shared_folder  # noqa: E402


def _trained(tmp_path_factory, layers: int, hidden: int) -> Bundle:
    return _trained_as(tmp_path_factory, f"{layers}x{hidden}", lambda: TrainConfig(
        layers=layers, hidden=hidden, epochs=1, window=64, horizon=5))


def _trained_as(tmp_path_factory, name: str, config, n_ticks: int = 20_000) -> Bundle:
    def build(path) -> None:
        save_bundle(train(generate_ticks(12, n_ticks, seed=3, bad_fraction=0.0), config()), path)

    return load_bundle(shared_folder(tmp_path_factory, f"bundle_{name}", build), with_keras=True)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Bundle:
    """A trained 1-layer bundle, hidden 16, loaded from disk as a user would."""
    return _trained(tmp_path_factory, 1, 16)


@pytest.fixture(scope="session")
def bundle2(tmp_path_factory) -> Bundle:
    """A trained 2-layer bundle, hidden 8."""
    return _trained(tmp_path_factory, 2, 8)


@pytest.fixture(scope="session")
def multi_bundle(tmp_path_factory) -> Bundle:
    """A trained GRU (hidden 8) with a mean and two quantile outputs at horizons 1 and 5 (six outputs)."""
    return _trained_as(tmp_path_factory, "gru_multi", lambda: TrainConfig.with_outputs(
        "1,5", "0.1,0.9", layers=1, hidden=8, epochs=1, window=64, cell="gru"), n_ticks=6_000)


class KerasReference:
    """Each instrument's whole valid sequence, alone, through the bundle's Keras model."""

    def __init__(self, bundle: Bundle):
        import keras
        import tensorflow as tf

        self.bundle = bundle
        self.model = bundle.keras_model
        # Same weights, with the final states exposed (for state comparisons).
        inp = keras.Input(shape=(None, len(bundle.feature_spec.names)))
        x, self._state_layers = inp, []
        outs = []
        for layer in range(bundle.shape.layers):
            lstm = keras.layers.LSTM(bundle.shape.hidden, return_sequences=True, return_state=True)
            x, h, c = lstm(x)
            lstm.set_weights(self.model.get_layer(f"lstm_{layer}").get_weights())
            outs += [h, c]
        self.state_model = keras.Model(inp, outs)
        # Compiled once per shape family: a Keras LSTM called eagerly steps in Python, about 50x slower.
        self._forecast = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self._states = tf.function(lambda x: self.state_model(x, training=False), reduce_retracing=True)

    def run(self, ticks: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, list[np.ndarray]]]:
        """(rows of valid ticks ascending, forecasts for them, final [h0, c0, h1, c1...] per instrument)."""
        seq = sequences_from_table(ticks)
        norm = self.bundle.normalisation
        x = norm.apply(seq.raw_features)
        forecasts = np.empty(len(seq.order))
        states: dict[str, list[np.ndarray]] = {}
        bounds = np.append(seq.group_starts, len(seq.order))
        for g, name in enumerate(seq.instruments):
            s, e = bounds[g], bounds[g + 1]
            y = np.asarray(self._forecast(x[None, s:e])).ravel()
            forecasts[s:e] = y.astype(np.float64) * norm.target_std + norm.target_mean
            states[name] = [np.asarray(a)[0] for a in self._states(x[None, s:e])]
        back = np.argsort(seq.order, kind="stable")
        return seq.order[back], forecasts[back], states


@pytest.fixture(scope="session")
def reference(bundle) -> KerasReference:
    return KerasReference(bundle)


@pytest.fixture(scope="session")
def reference2(bundle2) -> KerasReference:
    return KerasReference(bundle2)


# The 20-kill crash loop is the longest test by far (about 4 minutes): it goes first, so the rest of the suite
# runs beside it instead of the run waiting for it alone at the end. Everything else keeps collection order.
_FIRST = "tests/integration/test_faults.py::test_sigkill_at_random_moments_loses_and_duplicates_nothing[20-kills]"


def pytest_collection_modifyitems(items) -> None:
    items.sort(key=lambda item: item.nodeid != _FIRST)  # stable
