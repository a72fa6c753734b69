"""A layer's config from a user's .keras file, vetted as data before Keras (or tickcast) uses any of it.

Keras deserialises every object nested in a layer's config when it loads a model, and refuses a config key
its class does not take. So a served layer's config may hold only the keys its Keras class takes
(:data:`CONFIG_KEYS`, from the ``__init__`` signatures and ``get_config()`` of Keras 3.15), and the only
objects nested in it are Keras' own built-ins (:data:`NESTED`: initializers, regularizers, constraints, the
float dtype policy; a ``TimeDistributed`` layer's inner layer, vetted the same way), with no registered name
of their own and configs of plain data (numbers, strings, booleans, null, lists and mappings of them).
Anything else is refused in one line naming where in the config it sits.
"""

from __future__ import annotations

_LAYER = frozenset("activity_regularizer autocast dtype input_dim input_shape name trainable".split())
CONFIG_KEYS: dict[str, frozenset[str]] = {
    "InputLayer": frozenset(
        "batch_shape batch_size dtype input_tensor name optional ragged shape sparse".split()),
    "LSTM": frozenset(
        "activation bias_constraint bias_initializer bias_regularizer dropout go_backwards "
        "kernel_constraint kernel_initializer kernel_regularizer recurrent_activation "
        "recurrent_constraint recurrent_dropout recurrent_initializer recurrent_regularizer "
        "return_sequences return_state seed stateful unit_forget_bias units unroll use_bias use_cudnn "
        "zero_output_for_mask".split()) | _LAYER,
    "GRU": frozenset(
        "activation bias_constraint bias_initializer bias_regularizer dropout go_backwards "
        "kernel_constraint kernel_initializer kernel_regularizer recurrent_activation "
        "recurrent_constraint recurrent_dropout recurrent_initializer recurrent_regularizer "
        "reset_after return_sequences return_state seed stateful units unroll use_bias use_cudnn "
        "zero_output_for_mask".split()) | _LAYER,
    "SimpleRNN": frozenset(
        "activation bias_constraint bias_initializer bias_regularizer dropout go_backwards "
        "kernel_constraint kernel_initializer kernel_regularizer recurrent_constraint "
        "recurrent_dropout recurrent_initializer recurrent_regularizer return_sequences return_state "
        "seed stateful units unroll use_bias zero_output_for_mask".split()) | _LAYER,
    "Dense": frozenset(
        "activation bias_constraint bias_initializer bias_regularizer kernel_constraint "
        "kernel_initializer kernel_regularizer lora_alpha lora_rank quantization_config units "
        "use_bias".split()) | _LAYER,
    "TimeDistributed": frozenset("layer".split()) | _LAYER,
    "LayerNormalization": frozenset(
        "axis beta_constraint beta_initializer beta_regularizer center epsilon gamma_constraint "
        "gamma_initializer gamma_regularizer rms_scaling scale".split()) | _LAYER,
    "Activation": frozenset("activation".split()) | _LAYER,
    "Dropout": frozenset("noise_shape rate seed".split()) | _LAYER,
    "SpatialDropout1D": frozenset("noise_shape rate seed".split()) | _LAYER,
    "GaussianNoise": frozenset("seed stddev".split()) | _LAYER,
    "GaussianDropout": frozenset("rate seed".split()) | _LAYER,
    "AlphaDropout": frozenset("noise_shape rate seed".split()) | _LAYER,
    "BatchNormalization": frozenset(
        "axis beta_constraint beta_initializer beta_regularizer center epsilon gamma_constraint "
        "gamma_initializer gamma_regularizer momentum moving_mean_initializer "
        "moving_variance_initializer renorm renorm_clipping renorm_momentum scale synchronized".split()) | _LAYER,
    "Conv1D": frozenset(
        "activation bias_constraint bias_initializer bias_regularizer data_format dilation_rate "
        "filters groups kernel_constraint kernel_initializer kernel_regularizer kernel_size "
        "lora_alpha lora_rank padding rank strides use_bias".split()) | _LAYER,
    "UnitNormalization": frozenset("axis".split()) | _LAYER,
    "PReLU": frozenset("alpha_constraint alpha_initializer alpha_regularizer shared_axes".split()) | _LAYER,
    "LeakyReLU": frozenset("negative_slope".split()) | _LAYER,
    "ReLU": frozenset("max_value negative_slope threshold".split()) | _LAYER,
    "ELU": frozenset("alpha".split()) | _LAYER,
    "Softmax": frozenset("axis".split()) | _LAYER,
    "Rescaling": frozenset("offset scale".split()) | _LAYER,
}

# Objects a layer's config may hold, by module: Keras' built-in classes only.
NESTED = {
    "keras.initializers": ("Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity",
                           "IdentityInitializer", "LecunNormal", "LecunUniform", "Ones", "Orthogonal",
                           "OrthogonalInitializer", "RandomNormal", "RandomUniform", "TruncatedNormal",
                           "VarianceScaling", "Zeros"),
    "keras.regularizers": ("L1", "L1L2", "L2", "OrthogonalRegularizer"),
    "keras.constraints": ("MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"),
    "keras": ("DTypePolicy", "FloatDTypePolicy"),
}
_OBJECT_KEYS = {"module", "class_name", "config", "registered_name", "shared_object_id"}
_MAX_NESTING = 8


class _Refused(Exception):
    pass


def config_refusal(class_name: str, config: dict, registered_name: str | None = None) -> str | None:
    """Why the config of a layer of Keras class ``class_name`` is refused (one line), or None."""
    try:
        if registered_name not in (None, class_name):
            raise _Refused(f"it is registered as {registered_name!r}, not as Keras' own {class_name}")
        _check_keys(class_name, config, "config")
        _check_nested(class_name, config, "config", 0)
    except _Refused as exc:
        return str(exc)
    return None


def _check_keys(class_name: str, config: dict, where: str) -> None:
    known = CONFIG_KEYS.get(class_name)
    unknown = sorted(k for k in config if known is not None and k not in known)
    if unknown:
        raise _Refused(f"{where} has keys {unknown} that Keras' {class_name} does not take")


def _check_nested(class_name: str, value, where: str, depth: int) -> None:
    if depth > _MAX_NESTING:
        raise _Refused(f"{where} is nested deeper than {_MAX_NESTING} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_nested(class_name, item, f"{where}[{i}]", depth + 1)
        return
    if not isinstance(value, dict):
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise _Refused(f"{where} holds a {type(value).__name__}")
        return
    if "class_name" not in value and "module" not in value:
        for key, item in value.items():
            _check_nested(class_name, item, f"{where}.{key}", depth + 1)
        return
    module, cls = value.get("module"), value.get("class_name")
    shown = f"{module}.{cls}" if isinstance(module, str) and isinstance(cls, str) else "an object"
    if where.endswith("activation"):
        raise _Refused(f"{where.split('.')[-1]} is an object ({shown}), not a name Keras knows; only named "
                       "Keras activations are served")
    inner_layer = where == "config.layer" and class_name == "TimeDistributed" and module == "keras.layers"
    if inner_layer and cls not in CONFIG_KEYS:
        raise _Refused(f"{where} is {shown}; TimeDistributed of a layer tickcast does not know")
    if not inner_layer and (not isinstance(cls, str) or cls not in NESTED.get(module, ())):
        raise _Refused(f"{where} is {shown}; only Keras' own initializers, regularizers, constraints and float "
                       "dtype policies are served")
    extra = sorted(set(value) - _OBJECT_KEYS - ({"build_config", "name"} if inner_layer else set()))
    if extra or value.get("registered_name") not in (None, cls) or not isinstance(value.get("config", {}), dict):
        raise _Refused(f"{where} ({shown}) " + (f"has keys {extra}" if extra else "is not a plain Keras object"))
    if not isinstance(value.get("shared_object_id", 0), int):
        raise _Refused(f"{where} ({shown}) has a shared_object_id that is not a number")
    inner = value.get("config", {})
    if inner_layer:
        _check_keys(cls, inner, f"{where}.config")
    for key, item in inner.items():
        if inner_layer:
            _check_nested(cls, item, f"{where}.{key}", depth + 1)
        else:
            _check_plain(item, f"{where}.{key}", depth + 1)
    if inner_layer:
        _check_plain(value.get("build_config"), f"{where}.build_config", depth + 1)


def _check_plain(value, where: str, depth: int) -> None:
    """Numbers, strings, booleans, null, and lists and string-keyed mappings of them: no objects."""
    if depth > _MAX_NESTING:
        raise _Refused(f"{where} is nested deeper than {_MAX_NESTING} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        if "class_name" in value or "module" in value:
            raise _Refused(f"{where} is an object inside a Keras object's config; only plain data is served")
        for key, item in value.items():
            _check_plain(item, f"{where}.{key}", depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise _Refused(f"{where} holds a {type(value).__name__}")
