"""From a Keras model file's description to a :class:`~operators.layers.Stack` the kernel serves, or a refusal.

Served: a Sequential model, or a Functional model whose graph is one linear
chain (one input, one output, each layer fed by the one before it), of

- ``LSTM``, ``GRU`` (``reset_after`` True or False) and ``SimpleRNN``, stacked
  or alone, with any activation of :data:`operators.layers.ACTIVATIONS`,
  with or without bias; dropout settings are ignored (inference);
- per-tick layers before, between and after them: ``Dense`` (any such
  activation), ``TimeDistributed(Dense)``, ``LayerNormalization`` (last
  axis), ``Activation``, and ``Dropout``/``SpatialDropout1D``/``GaussianNoise``/
  ``GaussianDropout``/``AlphaDropout`` (all no-ops at inference).

The last recurrent layer may have ``return_sequences=False`` (a model trained
sequence-to-one): the operator forecasts after every tick, and its forecast
after a tick is what the model outputs for the sequence up to that tick.

Refused, each with one line naming the layer and why: ``stateful=True``,
``go_backwards=True``, ``return_state=True``, ``return_sequences=False`` on a
recurrent layer that feeds another, ``Bidirectional``, ``Masking`` (or any mask
passed between layers), ``Lambda`` and any class not from Keras itself (its
code is not in the file, and tickcast runs none), nested models, branches,
several inputs or outputs, non-float32 dtype policies, activations given as
objects or not in the list above, and any other layer type.
"""

from __future__ import annotations

import numpy as np

from operators.keras_file import KerasLayer, KerasModel
from operators.layers import ACTIVATIONS, Layer, PerTick, Recurrent, Stack

RECURRENT = {"LSTM": ("lstm", 4), "GRU": ("gru", 3), "SimpleRNN": ("rnn", 1)}
IDENTITY = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout")
PER_TICK = ("Dense", "TimeDistributed", "LayerNormalization", "Activation", *IDENTITY)
SUPPORTED = ("InputLayer", *RECURRENT, *PER_TICK)

_WHY = {
    "Bidirectional": "a bidirectional layer reads each sequence backwards too, so a forecast would depend on "
                     "ticks that have not arrived",
    "Masking": "masking skips ticks, and the operator steps every tick",
    "Lambda": "it runs Python code stored in the file, which tickcast never runs",
    "TFSMLayer": "it runs a TensorFlow SavedModel, which the NumPy kernel cannot",
    "Sequential": "a nested model: save the layers as one flat chain",
    "Functional": "a nested model: save the layers as one flat chain",
    "Model": "a nested model: save the layers as one flat chain",
    "RNN": "a generic RNN runs a cell class the kernel does not know; use LSTM, GRU or SimpleRNN",
}


class UnservableModel(ValueError):
    """The model is not one the NumPy kernel computes exactly; the message is one line."""


def _refuse(layer: KerasLayer | None, why: str) -> UnservableModel:
    where = f"layer {layer.name} ({layer.class_name})" if layer is not None else "the model"
    return UnservableModel(f"{where} cannot be served: {why}")


def describe(model: KerasModel) -> Stack:
    """The servable chain of ``model``, or :class:`UnservableModel`."""
    chain = _chain(model)
    n_inputs = None
    if chain and chain[0].class_name == "InputLayer":
        _check_code(chain[0])
        shape = chain[0].config.get("batch_shape") or chain[0].config.get("batch_input_shape")
        if not isinstance(shape, list) or len(shape) != 3 or not isinstance(shape[-1], int):
            raise _refuse(chain[0], f"input shape {shape} is not (batch, time, features)")
        n_inputs = shape[-1]
    body = [layer for layer in chain if layer is not chain[0] or layer.class_name != "InputLayer"]
    if not body:
        raise _refuse(None, "it has no layers")
    recurrent_at = [i for i, layer in enumerate(body) if layer.class_name in RECURRENT]
    layers: list[Layer] = []
    width = n_inputs
    for i, layer in enumerate(body):  # in chain order: the first layer that cannot be served is named
        _check_code(layer)
        if layer.class_name == "InputLayer":
            raise _refuse(layer, "a second input inside the chain")
        if width is None:
            width = _first_width(body)
            n_inputs = width
        if layer.class_name in RECURRENT:
            converted = _recurrent(layer, width, last=i == recurrent_at[-1])
            width = converted.units
        else:
            converted = _per_tick(layer, width)
            width = converted.width(width)
        layers.append(converted)
    if not recurrent_at:
        raise _refuse(None, "it has no LSTM, GRU or SimpleRNN layer, so no state to carry from tick to tick")
    return Stack(tuple(layers), n_inputs)


def _chain(model: KerasModel) -> list[KerasLayer]:
    """The layers in the order data flows through them; refuse anything but one linear chain."""
    if model.kind == "Sequential":
        return list(model.layers)
    if model.kind != "Functional":
        raise _refuse(None, f"a {model.kind} model; only Sequential and Functional models are served")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise _refuse(None, f"{len(model.inputs)} inputs and {len(model.outputs)} outputs; one of each is served")
    by_name = {layer.name: layer for layer in model.layers}
    feeds: dict[str, str] = {}  # producer -> consumer
    for layer in model.layers:
        nodes = layer.inbound or []
        if layer.class_name == "InputLayer":
            continue
        if len(nodes) != 1:
            raise _refuse(layer, f"it is called {len(nodes)} times; each layer of a chain is called once")
        node = nodes[0]
        args = node.get("args", []) if isinstance(node, dict) else []
        tensors = _tensors(args)
        kwargs = node.get("kwargs", {}) if isinstance(node, dict) else {}
        if len(tensors) != 1:
            raise _refuse(layer, f"it takes {len(tensors)} input tensors; only a linear chain is served")
        extra = sorted(k for k, v in kwargs.items() if k not in ("training", "mask") or (k == "mask" and v is not None))
        if extra:
            raise _refuse(layer, f"it is called with {', '.join(extra)}; masks and initial states are not served")
        source = tensors[0]
        if source in feeds:
            raise _refuse(by_name.get(source, layer), "its output feeds more than one layer (a branch)")
        feeds[source] = layer.name
    first, last = model.inputs[0][0], model.outputs[0][0]
    chain, name = [], first
    while True:
        if name not in by_name:
            raise _refuse(None, f"its graph names a layer {name!r} it does not define")
        chain.append(by_name[name])
        if name == last:
            break
        if name not in feeds:
            raise _refuse(by_name[name], "the chain from the input stops here, before the output layer")
        name = feeds[name]
    left = [layer.name for layer in model.layers if layer not in chain]
    if left:
        raise _refuse(None, f"layers {left} are not on the chain from its input to its output")
    return chain


def _tensors(args) -> list[str]:
    """Names of the layers whose outputs are among ``args`` (tensors may be nested in lists)."""
    out: list[str] = []
    for arg in args if isinstance(args, list) else [args]:
        if isinstance(arg, list):
            out += _tensors(arg)
        elif isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
            out.append(str(arg.get("config", {}).get("keras_history", ["?"])[0]))
    return out


def _from_keras(module: str) -> bool:
    """Keras' own classes name module ``keras`` or ``keras.<...>`` (not, say, ``keras_extras``)."""
    return module == "keras" or module.startswith("keras.")


def _check_code(layer: KerasLayer) -> None:
    if layer.class_name in _WHY and _from_keras(layer.module):
        raise _refuse(layer, _WHY[layer.class_name])
    if not _from_keras(layer.module) or layer.class_name not in SUPPORTED:
        if not _from_keras(layer.module):
            raise _refuse(layer, f"its class comes from {layer.module or 'an unnamed module'!r}, code the file "
                                 "does not hold and tickcast never runs")
        raise _refuse(layer, f"the NumPy kernel does not compute {layer.class_name} layers "
                             f"(it serves {', '.join(s for s in SUPPORTED if s != 'InputLayer')})")
    dtype = layer.config.get("dtype")
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if name not in (None, "float32"):
        raise _refuse(layer, f"dtype policy {name!r}; the kernel computes float32")


def _activation(layer: KerasLayer, key: str, config: dict | None = None) -> str:
    value = (config or layer.config).get(key, "linear")
    if value is None:
        return "linear"
    if not isinstance(value, str) or value not in ACTIVATIONS:
        shown = value if isinstance(value, str) else "an object"
        raise _refuse(layer, f"{key} {shown!r} is not one the kernel computes ({', '.join(ACTIVATIONS)})")
    return value


def _first_width(body: list[KerasLayer]) -> int:
    for layer in body:
        if layer.weights:
            return int(layer.weights[0].shape[0])
        if layer.class_name not in IDENTITY + ("Activation",):
            break
    raise _refuse(None, "it has no input layer and its first layer does not tell how many features it takes")


def _shapes(layer: KerasLayer, want: list[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    got = [tuple(w.shape) for w in layer.weights]
    if got != want:
        raise _refuse(layer, f"its variables have shapes {got}, expected {want} for its config and inputs")
    return tuple(np.asarray(w, dtype=np.float32) for w in layer.weights)


def _recurrent(layer: KerasLayer, width: int, last: bool) -> Recurrent:
    cfg = layer.config
    for key, why in (("stateful", "Keras would carry state across calls itself; tickcast keeps each "
                                  "instrument's state: save the model with stateful=False"),
                     ("go_backwards", "it reads each sequence from its end, which a stream never has"),
                     ("return_state", "the model must have one output; drop return_state")):
        if cfg.get(key):
            raise _refuse(layer, f"{key}=True: {why}")
    if not cfg.get("return_sequences", False) and not last:
        raise _refuse(layer, "return_sequences=False on a recurrent layer that feeds another one")
    kind, gates = RECURRENT[layer.class_name]
    units = int(cfg.get("units", 0))
    use_bias = bool(cfg.get("use_bias", True))
    reset_after = bool(cfg.get("reset_after", True)) if kind == "gru" else True
    want = [(width, gates * units), (units, gates * units)]
    if use_bias:
        want.append((2, 3 * units) if kind == "gru" and reset_after else (gates * units,))
    arrays = _shapes(layer, want)
    act = _activation(layer, "activation")
    rec_act = _activation(layer, "recurrent_activation") if kind != "rnn" else "sigmoid"
    return Recurrent(kind, layer.name, arrays[0], arrays[1], arrays[2] if use_bias else None, act, rec_act,
                     reset_after)


def _dense(layer: KerasLayer, cfg: dict, width: int) -> PerTick:
    units = int(cfg.get("units", 0))
    use_bias = bool(cfg.get("use_bias", True))
    if cfg.get("lora_rank"):
        raise _refuse(layer, "LoRA-adapted Dense layers are not served; merge the adapter first")
    if cfg.get("quantization_config") or cfg.get("dtype") in ("int8", "float8"):
        raise _refuse(layer, "quantized Dense layers are not served")
    arrays = _shapes(layer, [(width, units)] + ([(units,)] if use_bias else []))
    return PerTick("dense", layer.name, kernel=arrays[0], bias=arrays[1] if use_bias else None,
                   activation=_activation(layer, "activation", cfg))


def _per_tick(layer: KerasLayer, width: int) -> PerTick:
    cfg = layer.config
    cls = layer.class_name
    if cls in IDENTITY:
        return PerTick("identity", layer.name)
    if cls == "Activation":
        return PerTick("activation", layer.name, activation=_activation(layer, "activation"))
    if cls == "Dense":
        return _dense(layer, cfg, width)
    if cls == "TimeDistributed":
        inner = cfg.get("layer")
        if not (isinstance(inner, dict) and inner.get("class_name") == "Dense"
                and _from_keras(str(inner.get("module", "keras"))) and isinstance(inner.get("config"), dict)):
            shown = inner.get("class_name") if isinstance(inner, dict) else "?"
            raise _refuse(layer, f"TimeDistributed({shown}); only TimeDistributed(Dense) is served")
        return _dense(layer, inner["config"], width)
    # LayerNormalization
    axis = cfg.get("axis", -1)
    if axis not in (-1, [-1], 2, [2]):
        raise _refuse(layer, f"axis={axis}; only the last (feature) axis is served")
    if cfg.get("rms_scaling"):
        raise _refuse(layer, "rms_scaling=True is not served")
    scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
    arrays = _shapes(layer, [(width,)] * (int(scale) + int(center)))
    return PerTick("layer_norm", layer.name, gamma=arrays[0] if scale else None,
                   beta=arrays[-1] if center else None, epsilon=float(cfg.get("epsilon", 1e-3)))
