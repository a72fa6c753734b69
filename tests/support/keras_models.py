"""Small Keras models with random weights, bundled with `tickcast bundle --keras`'s code, and their reference.

Each builder returns an unsaved Keras model over ``n`` features; weights are random (the default
initialisers, then random biases and normalisation parameters so every variable matters). The
reference runs each instrument's whole valid sequence alone through the Keras model itself, and
through a probe of the same layers that exposes each recurrent layer's final state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from operators.bundle import Bundle, _keras, load_bundle, save_bundle  # noqa: E402
from operators.bundle_from_keras import bundle_keras_model  # noqa: E402
from operators.training import sequences_from_table  # noqa: E402
from pipeline.files.synthetic import generate_ticks  # noqa: E402

FEATURES = ["log_return", "log_gap_seconds", "log_size", "relative_spread"]
RECURRENT = ("LSTM", "GRU", "SimpleRNN")


def _chain(layers, n: int = len(FEATURES), functional: bool = False):
    keras = _keras()
    if not functional:
        return keras.Sequential([keras.Input((None, n)), *layers])
    x = inp = keras.Input((None, n), name="ticks")
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


def build(name: str, seed: int = 0):
    """The test models by name: each supported layer, and stacked combinations."""
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(seed)
    models = {
        "lstm": lambda: _chain([L.LSTM(4, return_sequences=True), L.Dense(1)]),
        "lstm_other_activations": lambda: _chain([
            L.LSTM(3, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False, return_sequences=True),
            L.Dense(2, activation="softplus")]),
        "gru": lambda: _chain([L.GRU(4, return_sequences=True), L.Dense(1)]),
        "gru_reset_before": lambda: _chain([
            L.GRU(3, reset_after=False, activation="softsign", return_sequences=True), L.Dense(1, activation="tanh")]),
        "simple_rnn": lambda: _chain([L.SimpleRNN(4, return_sequences=True), L.Activation("swish"), L.Dense(1)]),
        "lstm_layernorm_gru_k3": lambda: _chain([
            L.LSTM(4, return_sequences=True), L.LayerNormalization(), L.GRU(3, return_sequences=True), L.Dense(3)],
            functional=True),
        "rnn_dropout_timedistributed": lambda: _chain([
            L.SimpleRNN(3, return_sequences=True, activation="relu"), L.Dropout(0.3),
            L.TimeDistributed(L.Dense(2, activation="elu"))]),
        "dense_lstm_lstm_selu": lambda: _chain([
            L.Dense(4, activation="relu"), L.LSTM(3, return_sequences=True), L.LSTM(2, return_sequences=True),
            L.Dense(2, activation="selu"), L.Dense(1, use_bias=False)], functional=True),
        "sequence_to_one": lambda: _chain([L.LSTM(3, return_sequences=True), L.GRU(3), L.Dense(2)]),
        # Layers the kernel lacks (the Keras engine serves them):
        "lstm_gelu_gru": lambda: _chain([
            L.LSTM(4, return_sequences=True), L.Dense(3, activation="gelu", name="gelu_dense"), L.GRU(3, return_sequences=True),
            L.Dense(1)], functional=True),
        "rnn_batchnorm": lambda: _chain([
            L.SimpleRNN(4, return_sequences=True), L.BatchNormalization(name="bn"), L.Dense(2)]),
        "conv1_lstm_prelu": lambda: _chain([
            L.Conv1D(3, 1, activation="celu"), L.LSTM(3, activation="gelu", return_sequences=True),
            L.PReLU(shared_axes=[1]), L.UnitNormalization(), L.Dense(1)]),
    }
    model = models[name]()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):  # gamma, beta, moving mean, moving variance (positive)
            g, b, m, v = weights
            layer.set_weights([g + rng.normal(0, 0.3, g.shape), b + rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.5, m.shape), 0.5 + rng.random(v.shape)])
            continue
        if weights and not isinstance(layer, (L.LSTM, L.GRU, L.SimpleRNN)) or isinstance(layer, L.TimeDistributed):
            layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype(np.float32) for w in weights])
        elif weights and len(weights) == 3:  # recurrent: random biases too
            layer.set_weights([*weights[:2], rng.normal(0, 0.3, weights[2].shape).astype(np.float32)])
    return model


MODELS = ("lstm", "lstm_other_activations", "gru", "gru_reset_before", "simple_rnn", "lstm_layernorm_gru_k3",
          "rnn_dropout_timedistributed", "dense_lstm_lstm_selu")
KERAS_ONLY = ("lstm_gelu_gru", "rnn_batchnorm", "conv1_lstm_prelu")  # layers the kernel lacks


def fit_ticks() -> pa.Table:
    return generate_ticks(4, 600, seed=5, bad_fraction=0.0)


def bundled(model, folder: Path, features: list[str] = FEATURES) -> tuple[Bundle, Path]:
    """Save ``model`` as a .keras file, bundle it as `tickcast bundle --keras` does, load the bundle back."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / "user_model.keras"
    model.save(model_file)
    b = bundle_keras_model(model_file, features, fit_ticks(), horizon=5)
    save_bundle(b, folder / "bundle", model_file=model_file)
    return load_bundle(folder / "bundle"), model_file


class ChainReference:
    """Each instrument's whole valid sequence, alone, through the Keras model (outputs) and a probe of
    the same layers (each recurrent layer's final state vectors, in the state table's order)."""

    def __init__(self, bundle: Bundle, model):
        self.bundle, self.model = bundle, model
        keras = _keras()
        self.probe = []
        width = len(bundle.feature_spec.names)
        for layer in model.layers:
            if layer.__class__.__name__ == "InputLayer":
                continue
            if layer.__class__.__name__ in RECURRENT:
                cfg = layer.get_config() | {"return_state": True, "return_sequences": True}
                clone = layer.__class__.from_config(cfg)
                clone.build((None, None, width))
                clone.set_weights(layer.get_weights())
                self.probe.append((True, clone))
                width = cfg["units"]
            else:
                self.probe.append((False, layer))
                width = layer.compute_output_shape((None, None, width))[-1]
        self.keras = keras
        self._forward = lambda x: self.model(x, training=False)
        self._probe = self._probe_eagerly
        # Compiled (one trace per shape family): eagerly, a Keras recurrent layer steps in Python, about 50x
        # slower. Not with TimeDistributed: traced with an unknown time length, it returns a single tick.
        if not any(layer.__class__.__name__ == "TimeDistributed" for layer in model.layers):
            import tensorflow as tf  # noqa: PLC0415

            self._forward = tf.function(self._forward, reduce_retracing=True)
            self._probe = tf.function(self._probe_eagerly, reduce_retracing=True)

    def _probe_eagerly(self, h):
        vectors = []
        for recurrent, layer in self.probe:
            if recurrent:
                h, *final = layer(h, training=False)
                vectors += [v[0] for v in final]
            else:
                h = layer(h, training=False)
        return h, vectors

    def run(self, ticks: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, list[np.ndarray]]]:
        """(rows of valid ticks ascending, model outputs (m, K) for them, final state vectors per instrument)."""
        seq = sequences_from_table(ticks, self.bundle.feature_spec.names)
        x = self.bundle.model_inputs(seq.raw_features)
        outputs = np.empty((len(seq.order), self.bundle.outputs), np.float32)
        states: dict[str, list[np.ndarray]] = {}
        bounds = np.append(seq.group_starts, len(seq.order))
        for g, name in enumerate(seq.instruments):
            s, e = bounds[g], bounds[g + 1]
            y = np.asarray(self._forward(x[None, s:e]))
            outputs[s:e] = y.reshape(e - s, -1)
            h, vectors = self._probe(x[None, s:e])
            vectors = [np.asarray(v) for v in vectors]
            np.testing.assert_allclose(np.asarray(h).reshape(e - s, -1), outputs[s:e], rtol=1e-6, atol=1e-6)
            states[name] = vectors
        back = np.argsort(seq.order, kind="stable")
        return seq.order[back], outputs[back], states
