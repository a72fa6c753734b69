"""engine = auto | kernel | keras: which engine steps a model, why (one line), and the one-line refusals."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from operators.bundle import _keras
from operators.engines import choose
from operators.errors import BundleError
from operators.forecaster import Forecaster, ForecasterConfig
from operators.bundle_from_keras import bundle_keras_model
from tests.support.keras_models import FEATURES, build, bundled, fit_ticks
from tests.support.no_tensorflow import ROOT, env_without_tensorflow

N = len(FEATURES)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return {name: bundled(build(name, seed=1), tmp_path_factory.mktemp(name))[0]
            for name in ("lstm_layernorm_gru_k3", "lstm_gelu_gru", "rnn_batchnorm")}


def test_auto_picks_the_kernel_when_it_computes_every_layer_and_says_so(bundles):
    fc = Forecaster(bundles["lstm_layernorm_gru_k3"])
    assert fc.engine.engine == "kernel"
    assert fc.engine.line == "engine: kernel (auto: the NumPy kernel computes every layer of the model)"
    assert type(fc.kernel).__name__ == "RaggedLSTM"


@pytest.mark.parametrize("name, layer", [("lstm_gelu_gru", r"layer gelu_dense \(Dense\).*activation 'gelu'"),
                                         ("rnn_batchnorm", r"layer bn \(BatchNormalization\)"
                                                           r".*does not compute BatchNormalization")])
def test_auto_picks_keras_for_a_layer_the_kernel_lacks_and_names_it(bundles, name, layer):
    fc = Forecaster(bundles[name])
    assert fc.engine.engine == "keras" and type(fc.kernel).__name__ == "KerasEngine"
    assert fc.engine.line.startswith("engine: keras (auto: the NumPy kernel cannot; ")
    assert re.search(layer, fc.engine.line) and "\n" not in fc.engine.line


def test_engine_kernel_with_a_layer_it_lacks_is_refused_in_one_line_naming_it(bundles):
    with pytest.raises(BundleError) as err:
        Forecaster(bundles["rnn_batchnorm"], ForecasterConfig(engine="kernel"))
    message = str(err.value)
    assert "\n" not in message and message.startswith('engine = "kernel" cannot serve this model: ')
    assert "layer bn (BatchNormalization)" in message and 'use engine = "keras"' in message


def test_engine_kernel_refuses_a_recurrent_activation_only_keras_has(tmp_path):
    keras = _keras()
    L = keras.layers
    model = keras.Sequential([keras.Input((None, N)), L.SimpleRNN(3, activation="gelu", return_sequences=True,
                                                                  name="g"), L.Dense(1)])
    bundle, _ = bundled(model, tmp_path)
    assert choose(bundle.stack, "auto").engine == "keras"
    with pytest.raises(BundleError, match=r"^engine = \"kernel\" cannot serve this model: layer g \(SimpleRNN\)"
                                          r".*activation 'gelu'"):
        choose(bundle.stack, "kernel")


def test_engine_keras_is_asked_for_and_an_unknown_engine_is_refused(bundles):
    stack = bundles["lstm_layernorm_gru_k3"].stack
    assert choose(stack, "keras").line == 'engine: keras (asked for with engine = "keras")'
    assert choose(stack, "kernel").engine == "kernel"
    with pytest.raises(ValueError, match=r"^engine 'torch' is not one of 'auto', 'kernel', 'keras'$"):
        ForecasterConfig(engine="torch").check()
    with pytest.raises(BundleError, match=r"^engine 'torch' is not one of"):
        choose(stack, "torch")


def test_the_keras_engine_makes_one_compiled_call_per_length_bucket(bundles):
    import numpy as np
    import pyarrow as pa

    fc = Forecaster(bundles["lstm_gelu_gru"])
    names = ["A", "B", "C", "A", "B", "C", "D", "A", "B", "C", "D"]  # A, B, C: 3 ticks each; D: 2 ticks
    ticks = pa.table({"instrument": names, "ts": 1_700_000_000_000_000_000 + np.arange(len(names)) * 1_000_000,
                      "price": 100.0 + np.arange(len(names)), "size": np.ones(len(names))})
    before = fc.kernel.calls
    res = fc.step(ticks)
    assert res.n_instruments == 4 and len(res.rows) == len(names)
    assert fc.kernel.calls - before == 2  # lengths 3 and 2


def test_engine_keras_without_tensorflow_is_refused_in_one_line_saying_what_to_install(bundles, tmp_path):
    """A serving install: Forecaster(engine="keras") in a process where TensorFlow and Keras cannot be imported."""
    path = bundles["rnn_batchnorm"].path
    code = ("from operators.bundle import load_bundle\n"
            "from operators.errors import TickcastError\n"
            "from operators.forecaster import Forecaster, ForecasterConfig\n"
            f"b = load_bundle({str(path)!r})\n"
            "try:\n"
            "    Forecaster(b, ForecasterConfig(engine='keras'))\n"
            "except TickcastError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=env_without_tensorflow(tmp_path / "site"))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line and line.startswith('engine = "keras"') and "needs TensorFlow and Keras" in line
    assert "pip install" in line and "tensorflow" in line


def _refusal(model, tmp_path) -> str:
    path = tmp_path / "m.keras"
    model.save(path)
    with pytest.raises(BundleError) as err:
        bundle_keras_model(path, FEATURES, fit_ticks())
    assert "\n" not in str(err.value)
    return str(err.value)


def _time_mixing():
    keras = _keras()
    L = keras.layers

    def seq(*layers, shape=(None, N)):
        return keras.Sequential([keras.Input(shape), *layers])

    return {
        "conv_kernel_3": (lambda: seq(L.LSTM(3, return_sequences=True), L.Conv1D(2, 3, padding="causal", name="c"),
                                      L.Dense(1)), r"layer c \(Conv1D\).*kernel_size 3: it mixes ticks across time"),
        "conv_strides": (lambda: seq(L.Conv1D(2, 1, strides=2, name="c"), L.LSTM(3, return_sequences=True),
                                     L.Dense(1)), r"layer c \(Conv1D\).*strides 2 skips ticks"),
        "batchnorm_time_axis": (lambda: seq(L.LSTM(3, return_sequences=True), L.BatchNormalization(axis=1, name="b"),
                                            L.Dense(1), shape=(8, N)), r"layer b \(BatchNormalization\).*axis=1"),
        "prelu_per_position": (lambda: seq(L.LSTM(3, return_sequences=True), L.PReLU(name="p"), L.Dense(1),
                                           shape=(8, N)), r"layer p \(PReLU\).*differ by tick position"),
        "pooling": (lambda: seq(L.LSTM(3, return_sequences=True), L.AveragePooling1D(2, name="pool"), L.Dense(1)),
                    r"layer pool \(AveragePooling1D\).*mixes ticks across time"),
        "group_norm": (lambda: seq(L.LSTM(4, return_sequences=True), L.GroupNormalization(2, name="gn"), L.Dense(1)),
                       r"layer gn \(GroupNormalization\).*mixes ticks across time"),
        "unknown_per_tick": (lambda: seq(L.LSTM(3, return_sequences=True), L.Identity(name="same"), L.Dense(1)),
                             r"layer same \(Identity\).*does not know that Identity computes each tick on its own"),
    }


@pytest.mark.parametrize("case", list(_time_mixing()))
def test_layers_that_look_across_time_are_refused_for_every_engine_in_one_line(case, tmp_path):
    make, pattern = _time_mixing()[case]
    assert re.search(pattern, _refusal(make(), tmp_path))
