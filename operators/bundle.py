"""Model bundles: saving, loading, and every refusal of a bundle this build cannot serve exactly.

A bundle is a directory:

    model.keras    the Keras model (loaded in safe mode: no arbitrary code)
    bundle.json    feature spec, normalisation statistics, horizon, shape,
                   model version, and a description + hash of the training window;
                   for a model with several outputs (or a GRU trained by tickcast) what
                   each output forecasts (``target.outputs``) and target statistics per output

The model version is a hash of the weights and the serving-relevant metadata,
so two bundles with the same version forecast the same numbers, and a
``model.keras`` swapped under a ``bundle.json`` is caught at load time.
Training (the Keras model's definition, sequences, windows, fit) is in
:mod:`operators.training`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from operators.errors import BundleError, TrainingUnavailable
from operators.features import FEATURE_SPEC_VERSION, KNOWN_FEATURES, FeatureSpec, Normalisation
from operators.keras_chain import UnservableModel, describe
from operators.keras_file import KerasFileError, KerasLayer, layers_of_model, read_keras_file, read_keras_model
from operators.layers import Stack
from operators.lstm import LSTMLayerWeights, LSTMWeights
from operators.outputs import OutputSpec, check_outputs
from operators.state import StateShape

BUNDLE_FORMAT = "tickcast-bundle"
BUNDLE_FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
META_FILE = "bundle.json"


def _keras(needed_for: str = "training"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's reordered float sums make TensorFlow's numbers vary by machine
    # and thread count; tickcast wants the reference numbers reproducible.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras  # noqa: PLC0415 - TensorFlow takes seconds to import; only when needed
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("keras", "tensorflow"):
            raise
        hint = f"pip install {training_requirements()}"
        raise TrainingUnavailable(f"{needed_for} needs TensorFlow and Keras, which this install leaves out "
                                  f"(the serving install); install them with: {hint}") from None
    return keras


# What pyproject.toml asks for, for the message above (tests check the two agree).
TENSORFLOW_MIN = "2.16"


def training_requirements() -> str:
    tensorflow = "tensorflow-cpu" if platform.machine() == "x86_64" else "tensorflow"
    return f"'{tensorflow}>={TENSORFLOW_MIN}' 'keras>={SAFE_KERAS_TEXT}'"


@dataclass(frozen=True)
class Bundle:
    """A loaded model bundle, ready to serve."""

    path: Path | None
    model_version: str
    feature_spec: FeatureSpec
    normalisation: Normalisation
    horizon: int
    shape: StateShape
    weights: LSTMWeights | None  # the built-in model's; None for a model brought with `tickcast bundle --keras`
    training: dict[str, Any] = field(default_factory=dict)
    keras_model: Any = None
    own_stack: Stack | None = None  # a model brought with `tickcast bundle --keras`: its servable chain
    output_specs: tuple[OutputSpec, ...] = ()  # named outputs; () for the single output at ``horizon``
    stack_source: str = "keras"  # own_stack's origin: "keras" (brought) or "train" (a GRU or several outputs)

    def __post_init__(self):
        # The state rows keep what the features need of the previous tick (shape.previous): it follows from
        # the spec, whoever builds the bundle. Not in meta(): the version hash of a bundle stays as it was.
        if self.shape.previous != self.feature_spec.previous:
            object.__setattr__(self, "shape", replace(self.shape, previous=self.feature_spec.previous))

    @property
    def stack(self) -> Stack:
        """The chain of layers the kernel steps."""
        return self.own_stack if self.own_stack is not None else self.weights.stack()

    @property
    def outputs(self) -> int:
        """Forecasts per tick (K)."""
        return self.stack.outputs

    @property
    def output_list(self) -> tuple[OutputSpec, ...]:
        """What each of the K forecasts means, in the model's output order."""
        if self.output_specs:
            return self.output_specs
        if self.outputs == 1:
            return (OutputSpec(f"h{self.horizon}", self.horizon),)
        return tuple(OutputSpec(f"y{k}", self.horizon) for k in range(self.outputs))

    def model_inputs(self, raw: np.ndarray) -> np.ndarray:
        """Raw features (n, F) of the spec, in its order -> the model's normalised inputs."""
        return self.normalisation.apply(raw)

    def meta(self) -> dict[str, Any]:
        architecture = {
            "layers": self.shape.layers,
            "hidden": self.shape.hidden,
            "n_features": len(self.feature_spec.names),
        }
        if self.own_stack is not None:
            architecture |= {"source": self.stack_source, "outputs": self.own_stack.outputs,
                             "cells": [list(c) for c in self.shape.cells], "stack": self.own_stack.describe()}
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_version": self.model_version,
            "feature_spec": self.feature_spec.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "target": {"kind": "log_return", "horizon_ticks": self.horizon}
            | ({"outputs": [o.to_dict() for o in self.output_specs]} if self.output_specs else {}),
            "architecture": architecture,
            "training": self.training,
        }


def weights_from_keras(model, layers: int) -> LSTMWeights:
    return weights_from_layers(layers_of_model(model), layers)


def weights_from_layers(described: list[KerasLayer], layers: int) -> LSTMWeights:
    by_name = {layer.name: layer for layer in described}
    lstm_weights = []
    for layer in range(layers):
        kernel, recurrent, bias = (np.asarray(w, dtype=np.float32) for w in by_name[f"lstm_{layer}"].weights)
        lstm_weights.append(LSTMLayerWeights(kernel, recurrent, bias))
    dk, db = by_name["forecast"].weights
    return LSTMWeights(tuple(lstm_weights), np.asarray(dk, np.float32).ravel(), float(np.asarray(db).ravel()[0]))


def _version_hash(weights: LSTMWeights | Stack, meta: dict[str, Any]) -> str:
    """Every variable in chain order (for the built-in model: LSTM kernels, then the head), then the metadata."""
    h = hashlib.sha256()
    stack = weights.stack() if isinstance(weights, LSTMWeights) else weights
    for a in stack.arrays():
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    serving = {k: meta[k] for k in ("feature_spec", "normalisation", "target", "architecture")}
    h.update(json.dumps(serving, sort_keys=True).encode())
    return h.hexdigest()[:16]


def save_bundle(bundle: Bundle, directory: str | Path, model_file: str | Path | None = None) -> Path:
    """Write the bundle; ``model_file``: copy this ``.keras`` file as it is instead of saving ``keras_model``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if model_file is not None:
        tmp_model = path / (MODEL_FILE + ".tmp")
        tmp_model.write_bytes(Path(model_file).read_bytes())
        tmp_model.replace(path / MODEL_FILE)
    else:
        bundle.keras_model.save(path / MODEL_FILE)
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(bundle.meta(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path / META_FILE)  # metadata last: a bundle is complete once it exists
    return path


def load_bundle(directory: str | Path, *, with_keras: bool = False) -> Bundle:
    """Load and check a bundle; refuse anything this build cannot serve exactly.

    Serving reads ``model.keras`` as data (operators.keras_file: JSON and arrays, no Keras, no TensorFlow).
    ``with_keras=True`` also loads it with Keras in safe mode into ``Bundle.keras_model``, for callers that
    run the Keras model itself (the tests' reference, the benchmarks' peers); both are checked the same way.
    """
    path = Path(directory)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist; create one with `tickcast train --out {path}`")
    if not meta_path.is_file() or not (path / MODEL_FILE).is_file():
        raise BundleError(
            f"{path} is not a model bundle (needs {META_FILE} and {MODEL_FILE}); create one with `tickcast train`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path} is unreadable ({exc}); retrain or restore the bundle") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path} is not a tickcast bundle (format={meta.get('format')!r})")
    if meta.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {meta.get('format_version')} at {path} is not supported by this tickcast "
            f"(it reads version {BUNDLE_FORMAT_VERSION}); retrain with this version"
        )
    try:
        spec = FeatureSpec.from_dict(meta["feature_spec"])
        norm = Normalisation.from_dict(meta["normalisation"])
        horizon = int(meta["target"]["horizon_ticks"])
        arch = meta["architecture"]
        shape = StateShape(int(arch["layers"]), int(arch["hidden"]))
        brought = "stack" in arch
        outputs = tuple(OutputSpec.from_dict(o) for o in meta["target"].get("outputs", ()))
        if outputs:
            check_outputs(outputs)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{meta_path} is incomplete (missing or bad {exc}); retrain the bundle") from None
    if spec.version != FEATURE_SPEC_VERSION:
        again = ("bundle the model again with `tickcast bundle --keras`" if brought and arch.get("source") != "train"
                 else "retrain with `tickcast train`")
        raise BundleError(f"bundle {path} uses feature spec v{spec.version} {list(spec.names)}; this tickcast "
                          f"computes v{FEATURE_SPEC_VERSION}; {again}")
    check_feature_names(spec.names, f"bundle {path}")
    if len(norm.mean) != len(spec.names) or len(norm.std) != len(spec.names):
        raise BundleError(f"{meta_path}: normalisation has the wrong number of features; retrain the bundle")
    _check_normalisation(norm, spec, meta_path)
    model = None
    if brought:
        stack = stack_of_keras_file(path / MODEL_FILE, len(spec.names))  # vetted before Keras sees the file
        if with_keras:
            model = load_keras_model(path / MODEL_FILE, f"loading {path / MODEL_FILE} with Keras")
        bundle = Bundle(path, str(meta.get("model_version", "")), spec, norm, horizon, shape_of(stack), None,
                        dict(meta.get("training", {})), model, stack, outputs, arch.get("source", "keras"))
        _check_outputs(bundle, meta_path)
        if bundle.meta()["architecture"] != arch:
            raise BundleError(f"bundle {path}: {MODEL_FILE} is not the model {META_FILE} describes; "
                              "bundle it again with `tickcast bundle --keras`")
        weights: LSTMWeights | Stack = stack
    else:
        try:
            described = read_keras_file(path / MODEL_FILE)
        except KerasFileError as exc:
            raise BundleError(f"cannot load {path / MODEL_FILE}: {exc}") from None
        _check_architecture(described, shape, len(spec.names), path / MODEL_FILE)
        if with_keras:
            model = load_keras_model(path / MODEL_FILE, f"loading {path / MODEL_FILE} with Keras")
            described = layers_of_model(model)
            _check_architecture(described, shape, len(spec.names), path / MODEL_FILE)
        weights = weights_from_layers(described, shape.layers)
        bundle = Bundle(path, str(meta.get("model_version", "")), spec, norm, horizon, shape, weights,
                        dict(meta.get("training", {})), model, None, outputs)
        _check_outputs(bundle, meta_path)
    expected = _version_hash(weights, bundle.meta())
    if bundle.model_version != expected:
        raise BundleError(
            f"bundle {path}: {MODEL_FILE} does not match {META_FILE} (version {bundle.model_version}, "
            f"weights hash to {expected}); the files come from different trainings"
        )
    return bundle


def load_keras_model(model_file: Path, needed_for: str):
    """``model_file`` loaded by Keras in safe mode (no code from the file runs), or a one-line error."""
    keras = _keras(needed_for)
    _check_keras_is_safe(keras.__version__)
    try:
        return keras.saving.load_model(model_file, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; all mean "unusable file"
        raise BundleError(f"cannot load {model_file} in safe mode: {exc}") from None


def keras_model_from_config(model_file: Path, needed_for: str):
    """The model ``model_file``'s config describes, built by Keras in safe mode without its weights (the
    caller sets them from arrays read by :mod:`operators.keras_file`); or a one-line error."""
    from operators.keras_file import KerasFileError, read_keras_config  # noqa: PLC0415

    keras = _keras(needed_for)
    _check_keras_is_safe(keras.__version__)
    try:
        config = read_keras_config(model_file)
    except KerasFileError as exc:
        raise BundleError(f"cannot read {model_file}: {exc}") from None
    try:
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; all mean "unusable file"
        raise BundleError(f"cannot build the model of {model_file} in safe mode: {exc}") from None


def check_feature_names(names: tuple[str, ...], where: str) -> None:
    """A model's features: some of tickcast's (operators.features.REGISTRY), each once, in any order."""
    unknown = [n for n in names if n not in KNOWN_FEATURES]
    if not names or unknown or len(set(names)) != len(names):
        why = f"unknown {unknown}" if unknown else "none given" if not names else "a feature named twice"
        raise BundleError(f"{where}: features {list(names)} are not usable ({why}); choose from "
                          f"{', '.join(KNOWN_FEATURES)}")


def stack_of_keras_file(model_file: str | Path, n_features: int) -> Stack:
    """The servable chain of a ``.keras`` file read as data, or BundleError in one line."""
    try:
        stack = describe(read_keras_model(model_file), keras_layers=True)  # layers the kernel lacks: Keras engine
    except KerasFileError as exc:
        raise BundleError(f"cannot read {model_file}: {exc}") from None
    except UnservableModel as exc:
        raise BundleError(f"{model_file}: {exc}") from None
    if stack.n_inputs != n_features:
        raise BundleError(f"{model_file}: the model takes {stack.n_inputs} features per tick, "
                          f"but {n_features} are named")
    return stack


def shape_of(stack: Stack) -> StateShape:
    """The state a row holds for this chain: each recurrent layer's kind and units."""
    return StateShape.of([(layer.kind, layer.units) for layer in stack.recurrent])


# Keras versions whose safe mode a crafted .keras file can bypass to run code: CVE-2025-1550 (before 3.9),
# CVE-2025-8747 / GHSA-c9rc-mg46-23w3 and CVE-2025-9906 / GHSA-36fq-jgmw-4r9c (before 3.11.0), CVE-2025-49655
# (3.11.0 to 3.11.2, TorchModuleWrapper), CVE-2026-1462 / GHSA-4f3f-g24h-fr8m (before 3.13.2, TFSMLayer).
# pyproject.toml asks for at least this version, and a bundle is never opened with an older one found installed.
SAFE_KERAS = (3, 13, 2)
SAFE_KERAS_TEXT = ".".join(map(str, SAFE_KERAS))


def _check_keras_is_safe(version: str) -> None:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if parts < SAFE_KERAS:
        raise BundleError(f"keras {version} is installed; its safe mode can be bypassed by a crafted model file "
                          f"(CVE-2025-1550, CVE-2025-8747, CVE-2025-9906, CVE-2025-49655, CVE-2026-1462): install "
                          f"keras>={SAFE_KERAS_TEXT} to load bundles")


def _check_normalisation(norm: Normalisation, spec: FeatureSpec, meta_path: Path) -> None:
    """Statistics the features are divided by: a zero, negative or non-finite one would turn every tick
    into inf/NaN inputs and poison each instrument's state on its first tick."""
    bad = [f"std of {name} = {s!r}" for name, s in zip(spec.names, norm.std.tolist())
           if not (np.isfinite(s) and s > 0)]
    bad += [f"mean of {name} = {m!r}" for name, m in zip(spec.names, norm.mean.tolist()) if not np.isfinite(m)]
    if not np.all(np.isfinite(norm.target_std) & (np.asarray(norm.target_std) > 0)):
        bad.append(f"target_std = {norm.target_std!r}")
    if not np.all(np.isfinite(norm.target_mean)):
        bad.append(f"target_mean = {norm.target_mean!r}")
    if bad:
        raise BundleError(f"{meta_path}: normalisation must be finite with positive standard deviations, got "
                          f"{', '.join(bad)}; retrain the bundle")


def _check_outputs(bundle: Bundle, meta_path: Path) -> None:
    """bundle.json names as many outputs as the model gives, with a target statistic per output."""
    k = bundle.outputs
    if bundle.output_specs and len(bundle.output_specs) != k:
        raise BundleError(f"{meta_path} names {len(bundle.output_specs)} outputs, the model gives {k} per tick; "
                          "bundle the model again")
    norm = bundle.normalisation
    for name in ("target_mean", "target_std"):
        value = getattr(norm, name)
        if np.ndim(value) not in (0, 1) or (np.ndim(value) == 1 and len(value) != k):
            raise BundleError(f"{meta_path}: normalisation {name} has {np.size(value)} values for {k} outputs; "
                              "bundle the model again")


_ARCHITECTURE = ("InputLayer", "LSTM", "Dense")


def _check_architecture(described: list[KerasLayer], shape: StateShape, n_features: int, path: Path) -> None:
    """The model must be exactly what the operator computes: an input, ``shape.layers`` LSTMs named lstm_0...,
    a Dense(1) head named forecast; any other layer would be silently skipped by the kernel, so it is refused."""
    def refuse(why: str) -> BundleError:
        return BundleError(f"bundle {path.parent}: the Keras model cannot be served ({why}); "
                           "retrain with `tickcast train`")

    for layer in described:
        if layer.class_name in ("Lambda", "TFSMLayer") or not layer.module.startswith("keras"):
            raise BundleError(f"cannot load {path} in safe mode: layer {layer.name} ({layer.class_name}, "
                              f"module {layer.module!r}) would run code from the file")
    by_name = {layer.name: layer for layer in described}
    wanted_names = {f"lstm_{i}": "LSTM" for i in range(shape.layers)} | {"forecast": "Dense"}
    for name, cls in wanted_names.items():
        if name not in by_name:
            raise refuse(f"no layer named {name}")
        if by_name[name].class_name != cls:
            raise refuse(f"layer {name} is a {by_name[name].class_name}, the operator needs {cls}")
    extra = [f"{l.name} ({l.class_name})" for l in described
             if l.name not in wanted_names and l.class_name != "InputLayer"]
    if any(l.class_name == "LSTM" and l.name not in wanted_names for l in described):
        raise refuse(f"{sum(l.class_name == 'LSTM' for l in described) - shape.layers} more LSTM layers than "
                     "bundle.json says")
    if extra:
        raise refuse(f"layers outside the architecture: {', '.join(extra)}")
    for i in range(shape.layers):
        layer = by_name[f"lstm_{i}"]
        wanted = {"units": shape.hidden, "activation": "tanh", "recurrent_activation": "sigmoid",
                  "use_bias": True, "return_sequences": True, "go_backwards": False, "stateful": False}
        for key, value in wanted.items():
            if layer.config.get(key) != value:
                raise refuse(f"layer {layer.name} has {key}={layer.config.get(key)!r}, the operator needs {value!r}")
        inputs = n_features if i == 0 else shape.hidden
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [(inputs, 4 * shape.hidden), (shape.hidden, 4 * shape.hidden), (4 * shape.hidden,)]:
            if i == 0 and len(shapes) == 3 and shapes[0][0] != n_features:
                raise refuse(f"first LSTM takes {shapes[0][0]} features, the spec has {n_features}")
            raise refuse(f"layer {layer.name} has variables of shapes {shapes}")
    head = by_name["forecast"]
    if head.config.get("units") != 1 or head.config.get("activation") != "linear" or not head.config.get(
            "use_bias", True) or [tuple(w.shape) for w in head.weights] != [(shape.hidden, 1), (1,)]:
        raise refuse("the head must be Dense(1, linear, with bias) on the last LSTM")
