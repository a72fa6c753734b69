"""What `tickcast bundle --keras` refuses: one line naming the layer and why; and what it reads from the file."""

from __future__ import annotations

import json
import zipfile

import pytest

from operators.bundle import _keras
from operators.errors import BundleError
from operators.bundle_from_keras import bundle_keras_model
from tests.support.keras_models import FEATURES, build, fit_ticks

N = len(FEATURES)


def _save(model, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    return path


def _refusal(path) -> str:
    with pytest.raises(BundleError) as err:
        bundle_keras_model(path, FEATURES, fit_ticks())
    message = str(err.value)
    assert "\n" not in message
    return message


def _models():
    keras = _keras()
    L = keras.layers

    def seq(*layers, batch=None):
        inp = keras.Input(batch_shape=(batch, None, N)) if batch else keras.Input((None, N))
        return keras.Sequential([inp, *layers])

    def branch():
        inp = keras.Input((None, N))
        x = L.LSTM(3, return_sequences=True, name="trunk")(inp)
        return keras.Model(inp, L.Add()([L.Dense(2)(x), L.Dense(2)(x)]))

    def two_outputs():
        inp = keras.Input((None, N))
        x = L.GRU(3, return_sequences=True, name="shared")(inp)
        return keras.Model(inp, [L.Dense(1)(x), L.Dense(1)(x)])

    return {
        "stateful": (lambda: seq(L.LSTM(3, stateful=True, return_sequences=True, name="kept"), L.Dense(1), batch=1),
                     r"layer kept \(LSTM\).*stateful=True"),
        "go_backwards": (lambda: seq(L.GRU(3, go_backwards=True, return_sequences=True, name="rev"), L.Dense(1)),
                         r"layer rev \(GRU\).*go_backwards=True"),
        "bidirectional": (lambda: seq(L.Bidirectional(L.LSTM(3, return_sequences=True), name="both"), L.Dense(1)),
                          r"layer both \(Bidirectional\).*backwards"),
        "lambda": (lambda: seq(L.LSTM(3, return_sequences=True), L.Lambda(lambda t: t * 2, name="double"),
                               L.Dense(1)), r"layer double \(Lambda\).*Python code"),
        "masking": (lambda: seq(L.Masking(name="mask"), L.LSTM(3, return_sequences=True), L.Dense(1)),
                    r"layer mask \(Masking\).*skips ticks"),
        "return_sequences_false_not_last": (
            lambda: seq(L.LSTM(3, name="first"), L.RepeatVector(2), L.LSTM(2), L.Dense(1)),
            r"layer first \(LSTM\).*return_sequences=False"),
        "other_layer": (lambda: seq(L.Conv1D(3, 2, name="conv"), L.LSTM(3), L.Dense(1)),
                        r"layer conv \(Conv1D\).*kernel_size 2: it mixes ticks across time"),
        "branch": (branch, r"layer trunk \(LSTM\).*more than one layer"),
        "two_outputs": (two_outputs, r"2 outputs"),
        "no_recurrent_layer": (lambda: seq(L.Dense(2), L.Dense(1)), r"no LSTM, GRU or SimpleRNN"),
        "activation_object": (lambda: seq(L.SimpleRNN(3, activation=L.ReLU(), return_sequences=True, name="g"),
                                          L.Dense(1)), r"layer g \(SimpleRNN\).*activation is an object"),
        "mixed_precision": (lambda: seq(L.LSTM(3, return_sequences=True, dtype="mixed_float16", name="half"),
                                        L.Dense(1)), r"layer half \(LSTM\).*mixed_float16"),
    }


@pytest.mark.parametrize("case", list(_models()))
def test_unservable_models_are_refused_in_one_line_naming_the_layer_and_why(case, tmp_path):
    make, pattern = _models()[case]
    assert __import__("re").search(pattern, _refusal(_save(make(), tmp_path)))


def test_the_kernel_alone_still_refuses_what_only_keras_computes_in_one_line(tmp_path):
    """describe() without keras_layers is the kernel's chain: a layer only Keras computes is named and refused
    (a bundle keeps it, for engine = "keras"; tests/unit/operators/test_engines.py)."""
    from operators.keras_chain import UnservableModel, describe
    from operators.keras_file import read_keras_model

    keras = _keras()
    L = keras.layers
    model = keras.Sequential([keras.Input((None, N)), L.SimpleRNN(3, activation="gelu", return_sequences=True,
                                                                  name="g"), L.Dense(1)])
    with pytest.raises(UnservableModel, match=r"^layer g \(SimpleRNN\).*activation 'gelu'"):
        describe(read_keras_model(_save(model, tmp_path)))
    model = keras.Sequential([keras.Input((None, N)), L.LSTM(3, return_sequences=True), L.BatchNormalization(
        name="bn"), L.Dense(1)])
    with pytest.raises(UnservableModel, match=r"^layer bn \(BatchNormalization\).*does not compute Batch"):
        describe(read_keras_model(_save(model, tmp_path)))


def test_a_layer_class_from_outside_keras_is_refused_without_running_its_code(tmp_path):
    """A custom layer's code is not in the file; the class name and module in config.json are all there is.
    The file is edited to claim a layer from another module; nothing is imported or run to refuse it."""
    path = _save(build("lstm"), tmp_path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    dense = config["config"]["layers"][-1]
    dense.update(module="keras_extras.layers", class_name="Dense", registered_name="keras_extras>Dense")
    files["config.json"] = json.dumps(config).encode()
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(edited, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    message = _refusal(edited)
    assert f"layer {dense['config']['name']} (Dense)" in message and "keras_extras.layers" in message


def test_features_must_match_the_models_inputs_and_come_from_tickcasts_set(tmp_path):
    path = _save(build("gru"), tmp_path)
    with pytest.raises(BundleError, match="takes 4 features per tick, but 3 are named"):
        bundle_keras_model(path, FEATURES[:3], fit_ticks())
    with pytest.raises(BundleError, match=r"unknown \['vwap'\]"):
        bundle_keras_model(path, [*FEATURES[:3], "vwap"], fit_ticks())
    with pytest.raises(BundleError, match="a feature named twice"):
        bundle_keras_model(path, [*FEATURES[:3], FEATURES[0]], fit_ticks())


def test_the_state_a_row_holds_is_each_recurrent_layers_vectors(tmp_path):
    b = bundle_keras_model(_save(build("lstm_layernorm_gru_k3"), tmp_path), FEATURES, fit_ticks())
    assert b.shape.cells == (("lstm", 4), ("gru", 3))
    assert b.shape.vectors == (("h0", 4), ("c0", 4), ("h1", 3))
    assert b.outputs == 3
    assert [layer["kind"] for layer in b.meta()["architecture"]["stack"]] == ["lstm", "layer_norm", "gru", "dense"]


def test_a_custom_layer_subclass_saved_by_keras_is_refused(tmp_path):
    keras = _keras()

    @keras.saving.register_keras_serializable(package="mine")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    model = keras.Sequential([keras.Input((None, N)), keras.layers.GRU(3, return_sequences=True),
                              Doubling(name="twice"), keras.layers.Dense(1)])
    message = _refusal(_save(model, tmp_path))
    assert "layer twice (Doubling)" in message and "never runs" in message


def _object(module, cls, config=None, registered=None) -> dict:
    return {"module": module, "class_name": cls, "config": {} if config is None else config,
            "registered_name": registered}


def _set(layer: int, key: str, value):
    def edit(config):
        config["config"]["layers"][layer]["config"][key] = value
    return edit


def _set_entry(layer: int, key: str, value):
    def edit(config):
        config["config"]["layers"][layer][key] = value
    return edit


@pytest.mark.parametrize("edit, pattern", [
    (_set(1, "kernel_initializer", _object("os", "system", {"command": "id"})),
     r"layer rnn \(LSTM\).*config.kernel_initializer is os.system; only Keras' own"),
    (_set(1, "bias_initializer", _object("builtins", "function", registered="function") | {"config": "os.system"}),
     r"config.bias_initializer is builtins.function"),
    (_set(1, "kernel_regularizer", _object("keras.regularizers", "L2", {"l2": _object("builtins", "eval")})),
     r"config.kernel_regularizer.l2 is an object inside a Keras object's config"),
    (_set(1, "recurrent_constraint", _object("keras.src.saving.serialization_lib", "enable_unsafe_deserialization")),
     r"config.recurrent_constraint is keras.src.saving.serialization_lib.enable_unsafe_deserialization"),
    (_set(1, "kernel_initializer", _object("keras.initializers", "Zeros", registered="mine>Zeros")),
     r"config.kernel_initializer \(keras.initializers.Zeros\) is not a plain Keras object"),
    (_set(1, "bias_initializer", _object("keras.initializers", "Constant", {"value": [1, {"nested": {"a": 1}}]})
          | {"extra": 1}), r"config.bias_initializer \(keras.initializers.Constant\) has keys \['extra'\]"),
    (_set(2, "dtype", _object("keras", "DTypePolicyMap", {"name": "float32"})),
     r"layer head \(Dense\).*config.dtype is keras.DTypePolicyMap"),
    (_set(2, "kernel_initializer", _object("keras.layers", "TFSMLayer", {"filepath": "/tmp/x"})),
     r"config.kernel_initializer is keras.layers.TFSMLayer"),
    (_set_entry(1, "registered_name", "Custom>LSTM"), r"layer rnn \(LSTM\).*registered as 'Custom>LSTM'"),
    (_set(2, "bias_constraznt", None), r"layer head \(Dense\).*keys \['bias_constraznt'\] that Keras' Dense does not"),
])
def test_nested_config_objects_other_than_keras_builtins_with_plain_configs_are_refused(tmp_path, edit, pattern):
    """Keras deserialises every object nested in a layer's config when it loads the model: each must be one of
    its own initializers, regularizers, constraints or float dtype policies, with plain data inside; and a key
    the layer's Keras class does not take (Keras would refuse the file) is refused too."""
    from tests.support.keras_files import edit_config

    keras = _keras()
    L = keras.layers
    model = keras.Sequential([keras.Input((None, N)), L.LSTM(3, return_sequences=True, name="rnn"),
                              L.Dense(1, name="head")])
    path = edit_config(_save(model, tmp_path), tmp_path / "edited.keras", edit)
    assert __import__("re").search(pattern, _refusal(path))


def test_keras_builtin_initializers_regularizers_and_constraints_are_served(tmp_path):
    keras = _keras()
    L = keras.layers
    model = keras.Sequential([keras.Input((None, N)), L.LSTM(
        3, return_sequences=True, kernel_initializer=keras.initializers.VarianceScaling(2.0, seed=1),
        kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02), recurrent_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint=keras.constraints.NonNeg()), L.Dense(
        1, kernel_regularizer=keras.regularizers.OrthogonalRegularizer(0.1),
        bias_initializer=keras.initializers.Constant(0.5))])
    assert bundle_keras_model(_save(model, tmp_path), FEATURES, fit_ticks()).outputs == 1


def test_a_model_class_from_outside_keras_is_refused(tmp_path):
    from tests.support.keras_files import edit_config

    path = edit_config(_save(build("lstm"), tmp_path), tmp_path / "edited.keras",
                       lambda c: c.update(module="mine.models", registered_name="mine>Sequential"))
    assert "not Keras' own Sequential" in _refusal(path)


@pytest.mark.parametrize("value", ["x", None, [3], {"a": 1}, 1e300, -1])
def test_a_config_value_of_the_wrong_type_is_a_one_line_refusal(tmp_path, value):
    from tests.support.keras_files import edit_config

    path = edit_config(_save(build("gru"), tmp_path), tmp_path / "edited.keras",
                       lambda c: c["config"]["layers"][1]["config"].__setitem__("units", value))
    _refusal(path)


def _set_module(where: str, module: str):
    def edit(c):
        if where == "model":
            c["module"] = module
        else:
            c["config"]["layers"][int(where)]["module"] = module
    return edit


@pytest.mark.parametrize("kind, where, module", [
    ("functional", "model", "keras.src.modelg.functional"),  # a flipped byte Keras cannot import
    ("functional", "model", "keras.models"),
    ("lstm", "model", "keras.modelz"),
    ("lstm", "1", "keras"),
    ("lstm", "1", "keras.layerz"),
    ("lstm", "2", "keras.src"),
])
def test_a_keras_class_under_a_module_keras_cannot_load_it_from_is_refused_as_keras_refuses_it(
        tmp_path, kind, where, module):
    """A Keras class named under a module Keras does not find it in (a misspelling, a package instead of the
    module): Keras refuses the file, so tickcast refuses it too, in one line, instead of serving it."""
    from tests.support.keras_files import edit_config, keras_weights

    if kind == "functional":
        keras = _keras()
        inp = keras.Input((None, N))
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(3, return_sequences=True)(inp)))
    else:
        model = build(kind)
    path = edit_config(_save(model, tmp_path), tmp_path / "edited.keras", _set_module(where, module))
    assert module in _refusal(path)
    assert isinstance(keras_weights([path])[0], str), "Keras loads it: the refusal is stricter than Keras"
