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

With ``keras_layers=True`` (what a bundle holds; the Keras engine,
:mod:`operators.keras_engine`, serves it) the chain may also hold per-tick
layers the kernel does not compute, and recurrent layers with any activation
Keras names: a layer is *per tick* when its output at a tick depends only on
that tick's input vector and its own variables, never on other ticks or other
rows of the batch. Served as such (:data:`KERAS_PER_TICK`): ``Dense`` and
``Activation`` with any Keras activation name, ``TimeDistributed`` of a
per-tick layer, ``Conv1D`` with ``kernel_size`` 1 and ``strides`` 1,
``BatchNormalization`` (inference: moving statistics) and
``LayerNormalization``/``UnitNormalization`` over the feature axis only,
``PReLU`` with one slope vector shared over time, ``LeakyReLU``, ``ReLU``,
``ELU``, ``Softmax`` over the feature axis and ``Rescaling``. Such a layer is
kept as ``PerTick("keras", ...)`` with its Keras config and variables, and
:func:`kernel_refusal` says in one line why the kernel cannot serve it.
Anything that looks across time (``Conv1D`` with a wider kernel, attention,
pooling, ``GroupNormalization``) is refused as below.

Refused, each with one line naming the layer and why: ``stateful=True``,
``go_backwards=True``, ``return_state=True``, ``return_sequences=False`` on a
recurrent layer that feeds another, ``Bidirectional``, ``Masking`` (or any mask
passed between layers), ``Lambda`` and any class not from Keras itself (its
code is not in the file, and tickcast runs none), nested models, branches,
several inputs or outputs, non-float32 dtype policies, activations given as
objects or not in the list above, and any other layer type.

A layer's config is vetted whole before anything else (:mod:`operators.keras_config`):
only the keys Keras' class takes, and nested objects that are Keras' own
built-ins with plain-data configs.
"""

from __future__ import annotations

import numpy as np

from operators.keras_config import config_refusal
from operators.keras_file import KerasLayer, KerasModel, inbound_layers
from operators.layers import ACTIVATIONS, Layer, PerTick, Recurrent, Stack

RECURRENT = {"LSTM": ("lstm", 4), "GRU": ("gru", 3), "SimpleRNN": ("rnn", 1)}
IDENTITY = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout")
PER_TICK = ("Dense", "TimeDistributed", "LayerNormalization", "Activation", *IDENTITY)
SUPPORTED = ("InputLayer", *RECURRENT, *PER_TICK)
# Per-tick layers the Keras engine computes (checked further by _keras_per_tick).
KERAS_PER_TICK = (*PER_TICK, "BatchNormalization", "Conv1D", "UnitNormalization", "PReLU", "LeakyReLU", "ReLU",
                  "ELU", "Softmax", "Rescaling")
_ACROSS_TIME = "it mixes ticks across time, so a forecast would not be each tick's own"

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
    **{cls: _ACROSS_TIME for cls in ("MultiHeadAttention", "Attention", "AdditiveAttention", "GroupQueryAttention",
                                     "GlobalAveragePooling1D", "GlobalMaxPooling1D", "AveragePooling1D",
                                     "MaxPooling1D", "GroupNormalization", "Cropping1D", "ZeroPadding1D",
                                     "UpSampling1D", "Flatten", "Reshape", "Permute", "RepeatVector",
                                     "SeparableConv1D", "DepthwiseConv1D", "Conv1DTranspose")},
}


class UnservableModel(ValueError):
    """The model is not one the NumPy kernel computes exactly; the message is one line."""


def _refuse(layer: KerasLayer | None, why: str) -> UnservableModel:
    where = f"layer {layer.name} ({layer.class_name})" if layer is not None else "the model"
    return UnservableModel(f"{where} cannot be served: {why}")


def describe(model: KerasModel, keras_layers: bool = False) -> Stack:
    """The servable chain of ``model``, or :class:`UnservableModel`.

    ``keras_layers``: also per-tick layers only Keras computes (the Keras engine's chain; see the module)."""
    try:
        return _describe(model, keras_layers)
    except UnservableModel:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        # A config value of the wrong type (say "units": "x"): the file is malformed, refused in one line.
        shown = " ".join(str(exc).split())[:200]
        raise _refuse(None, f"its config.json holds a malformed value ({type(exc).__name__}: {shown})") from None


def _describe(model: KerasModel, keras_layers: bool) -> Stack:
    chain = _chain(model)
    n_inputs = None
    if chain and chain[0].class_name == "InputLayer":
        _check_code(chain[0], keras_layers)
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
    seq_to_one = False  # after a recurrent layer with return_sequences=False, ticks are (batch, features)
    for i, layer in enumerate(body):  # in chain order: the first layer that cannot be served is named
        _check_code(layer, keras_layers)
        if layer.class_name == "InputLayer":
            raise _refuse(layer, "a second input inside the chain")
        if width is None:
            width = _first_width(body)
            n_inputs = width
        if layer.class_name in RECURRENT:
            converted = _recurrent(layer, width, last=i == recurrent_at[-1], keras_layers=keras_layers)
            width = converted.units
            seq_to_one = not layer.config.get("return_sequences", False)
        else:
            try:
                if layer.class_name not in PER_TICK:  # only with keras_layers (_check_code refused it otherwise)
                    raise _refuse(layer, f"the NumPy kernel does not compute {layer.class_name} layers "
                                         f"(it serves {', '.join(s for s in SUPPORTED if s != 'InputLayer')})")
                converted = _per_tick(layer, width)
            except UnservableModel as exc:
                if not keras_layers:
                    raise
                converted = _keras_per_tick(layer, width, str(exc), seq_to_one)
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
        tensors = inbound_layers(args)
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


def _from_keras(module: str) -> bool:
    """Keras' own classes name module ``keras`` or ``keras.<...>`` (not, say, ``keras_extras``)."""
    return module == "keras" or module.startswith("keras.")


# Where Keras finds its own layer classes when it loads a file (``keras.layers`` is what it writes). Keras
# refuses a layer under any other name (``keras``, ``keras.src``, a misspelt ``keras.layerz``), so tickcast
# refuses it too rather than serve a file Keras cannot read.
LAYER_MODULES = ("keras.layers", "keras.src.layers")


def _check_code(layer: KerasLayer, keras_layers: bool = False) -> None:
    if layer.class_name in _WHY and _from_keras(layer.module):
        raise _refuse(layer, _WHY[layer.class_name])
    served = SUPPORTED + (KERAS_PER_TICK if keras_layers else ())
    if not _from_keras(layer.module) or layer.class_name not in served:
        if not _from_keras(layer.module):
            raise _refuse(layer, f"its class comes from {layer.module or 'an unnamed module'!r}, code the file "
                                 "does not hold and tickcast never runs")
        if keras_layers:
            raise _refuse(layer, f"tickcast does not know that {layer.class_name} computes each tick on its own "
                                 f"(it serves LSTM, GRU, SimpleRNN and {', '.join(KERAS_PER_TICK)})")
        raise _refuse(layer, f"the NumPy kernel does not compute {layer.class_name} layers "
                             f"(it serves {', '.join(s for s in SUPPORTED if s != 'InputLayer')})")
    if layer.module not in LAYER_MODULES:
        raise _refuse(layer, f"its module {layer.module!r} is not where Keras finds its {layer.class_name} "
                             f"layer ({' or '.join(LAYER_MODULES)}): Keras would refuse to load it")
    why = config_refusal(layer.class_name, layer.config, layer.registered_name)
    if why:
        raise _refuse(layer, why)
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


def _recurrent(layer: KerasLayer, width: int, last: bool, keras_layers: bool = False) -> Recurrent:
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
    named = _keras_activation if keras_layers else _activation
    act = named(layer, "activation")
    rec_act = named(layer, "recurrent_activation") if kind != "rnn" else "sigmoid"
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


# -- the Keras engine's chain ---------------------------------------------------------


def kernel_refusal(stack: Stack) -> str | None:
    """Why the NumPy kernel cannot serve ``stack`` (one line naming the first such layer), or None."""
    for layer in stack.layers:
        if isinstance(layer, PerTick) and layer.kind == "keras":
            return layer.why
        if isinstance(layer, Recurrent):
            for key in ("activation", "recurrent_activation"):
                value = getattr(layer, key)
                if value not in ACTIVATIONS and (key == "activation" or layer.kind != "rnn"):
                    return (f"layer {layer.name} ({_CLASS[layer.kind]}) cannot be served: {key} {value!r} is not "
                            f"one the kernel computes ({', '.join(ACTIVATIONS)})")
    return None


_CLASS = {kind: cls for cls, (kind, _) in RECURRENT.items()}


def _keras_activation(layer: KerasLayer, key: str, config: dict | None = None) -> str:
    """An activation Keras names (a string; Keras resolves it when the engine builds the layer)."""
    value = (config or layer.config).get(key, "linear")
    if value is None:
        return "linear"
    if not isinstance(value, str):
        raise _refuse(layer, f"{key} is an object, not a name Keras knows; only named Keras activations are served")
    return value


def _axis_is_last(axis, rank: int) -> bool:
    axes = axis if isinstance(axis, list) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def _keras_per_tick(layer: KerasLayer, width: int, why: str, seq_to_one: bool) -> PerTick:
    """A per-tick layer only Keras computes: checked to look at one tick alone; its output width."""
    cfg, cls = layer.config, layer.class_name
    rank = 2 if seq_to_one else 3
    out = width
    if cls == "TimeDistributed":
        inner = cfg.get("layer")
        if not (isinstance(inner, dict) and isinstance(inner.get("config"), dict)
                and isinstance(inner.get("class_name"), str) and _from_keras(str(inner.get("module", "keras")))):
            raise _refuse(layer, "TimeDistributed of a layer that is not from Keras itself")
        sub = KerasLayer(inner["class_name"], str(inner.get("module", "keras")), layer.name, inner["config"],
                         layer.weights)
        if sub.class_name not in KERAS_PER_TICK or sub.class_name == "TimeDistributed":
            raise _refuse(layer, f"TimeDistributed({sub.class_name}); only per-tick layers are served inside it")
        try:
            out = _per_tick(sub, width).width(width)
        except UnservableModel:
            out = _keras_per_tick(sub, width, why, seq_to_one).width(width)
    elif cls in ("Dense", "Activation"):
        _keras_activation(layer, "activation")
        if cls == "Dense":
            if cfg.get("lora_rank") or cfg.get("quantization_config"):
                raise _refuse(layer, "LoRA-adapted or quantized Dense layers are not served")
            out = int(cfg.get("units", 0))
            _shapes(layer, [(width, out)] + ([(out,)] if cfg.get("use_bias", True) else []))
    elif cls == "Conv1D":
        kernel_size = cfg.get("kernel_size")
        kernel_size = kernel_size[0] if isinstance(kernel_size, list) and len(kernel_size) == 1 else kernel_size
        strides = cfg.get("strides", 1)
        strides = strides[0] if isinstance(strides, list) and len(strides) == 1 else strides
        if kernel_size != 1:
            raise _refuse(layer, f"kernel_size {kernel_size}: {_ACROSS_TIME}; only kernel_size 1 is per tick")
        if strides != 1:
            raise _refuse(layer, f"strides {strides} skips ticks; only strides 1 is per tick")
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise _refuse(layer, "data_format channels_first convolves over features as time")
        _keras_activation(layer, "activation")
        out = int(cfg.get("filters", 0))
    elif cls in ("BatchNormalization", "LayerNormalization", "UnitNormalization", "Softmax"):
        if not _axis_is_last(cfg.get("axis", -1), rank):
            raise _refuse(layer, f"axis={cfg.get('axis')}: {_ACROSS_TIME}; only the last (feature) axis is per tick")
    elif cls == "PReLU":
        alpha = layer.weights[0] if layer.weights else None
        if alpha is None or alpha.shape[-1] != width or int(np.prod(alpha.shape)) != width:
            shape = None if alpha is None else tuple(alpha.shape)
            raise _refuse(layer, f"slopes of shape {shape} differ by tick position; share them over time "
                                 "(shared_axes=[1])")
    return PerTick("keras", layer.name, keras=layer, why=why, out_width=out)
