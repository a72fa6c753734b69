"""Read a Keras 3 model file (``.keras``) as data, without Keras or TensorFlow.

A ``.keras`` file is a zip archive. ``config.json`` describes the model as
JSON (for a Functional or Sequential model, a list of layers, each with its
class name and config); ``model.weights.h5`` holds each layer's variables in
HDF5 groups under ``layers/``: the layer's own variables in ``<group>/vars/0,
1, ...`` (the group's ``name`` attribute is the layer's name) and those of a
sublayer, such as a recurrent layer's cell, in ``<group>/<sub>/vars/...``.

Serving needs only that: the layers in order, their configs, their arrays.
Reading them deserialises nothing but JSON and numbers, so no code in the file
can run, and a serving process does not pay TensorFlow's start-up (seconds)
or memory (hundreds of MB). Any file that does not have this shape raises
``KerasFileError`` with what was wrong.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
_MAX_CONFIG_BYTES = 16 << 20


class KerasFileError(ValueError):
    """The file is not a readable Keras 3 model file."""


@dataclass(frozen=True)
class KerasLayer:
    """One layer as the file describes it: Keras class name, layer name, config, variables in Keras order."""

    class_name: str
    module: str
    name: str
    config: dict[str, Any]
    weights: tuple[np.ndarray, ...]
    inbound: list | None = field(default=None, compare=False)  # a Functional model's inbound_nodes entry


@dataclass(frozen=True)
class KerasModel:
    """The whole file: the model's class ("Functional", "Sequential"), its layers, and for a Functional
    model the names of its input and output layers (``[name, node, tensor]`` triples, as saved)."""

    kind: str
    layers: list[KerasLayer]
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def read_keras_file(path: str | Path) -> list[KerasLayer]:
    """The model's layers in the order of its config."""
    return read_keras_model(path).layers


def read_keras_model(path: str | Path) -> KerasModel:
    """The model's layers in the order of its config, with the graph of a Functional model."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = _read_config(archive)
            with archive.open(WEIGHTS) as f:
                weights = _read_weights(f.read())
    except KerasFileError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        raise KerasFileError(f"not a readable Keras model file ({type(exc).__name__}: {exc})") from None
    layers = []
    for entry in _layer_entries(config):
        name = entry["config"]["name"]
        inbound = entry.get("inbound_nodes")
        layers.append(KerasLayer(entry["class_name"], str(entry.get("module") or ""), name, entry["config"],
                                 weights.pop(name, ()), inbound if isinstance(inbound, list) else None))
    if weights:
        raise KerasFileError(f"{WEIGHTS} holds variables of layers the config does not name: {sorted(weights)}")
    inner = config["config"]
    return KerasModel(config["class_name"], layers, _tensor_list(inner.get("input_layers")),
                      _tensor_list(inner.get("output_layers")))


def _tensor_list(value) -> list:
    """``[name, node, tensor]`` or a list of them, as a list of them."""
    if not isinstance(value, list) or not value:
        return []
    return [value] if isinstance(value[0], str) else list(value)


def layers_of_model(model) -> list[KerasLayer]:
    """The same description, from a model built or loaded by Keras (training keeps using this one)."""
    return [KerasLayer(layer.__class__.__name__, layer.__class__.__module__, layer.name, layer.get_config(),
                       tuple(np.asarray(w) for w in layer.get_weights())) for layer in model.layers]


def _read_config(archive: zipfile.ZipFile) -> dict:
    info = archive.getinfo(CONFIG)
    if info.file_size > _MAX_CONFIG_BYTES:
        raise KerasFileError(f"{CONFIG} is {info.file_size} bytes; a model description is far smaller")
    config = json.loads(archive.read(CONFIG).decode("utf-8"))
    if not isinstance(config, dict):
        raise KerasFileError(f"{CONFIG} is not a JSON object")
    return config


def _layer_entries(config: dict) -> list[dict]:
    kind = config.get("class_name")
    if kind not in ("Functional", "Sequential"):
        raise KerasFileError(f"the model is a {kind!r}; only Functional and Sequential models are read")
    inner = config.get("config")
    entries = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(entries, list):
        raise KerasFileError(f"{CONFIG} has no list of layers")
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("class_name"), str)
                and isinstance(entry.get("config"), dict) and isinstance(entry["config"].get("name"), str)):
            raise KerasFileError(f"{CONFIG} has a layer entry without a class name, config and name")
    names = [e["config"]["name"] for e in entries]
    if len(set(names)) != len(names):
        raise KerasFileError(f"{CONFIG} names a layer twice")
    return entries


def _read_weights(data: bytes) -> dict[str, tuple[np.ndarray, ...]]:
    import h5py  # noqa: PLC0415 - a Keras dependency; imported only when a file is read

    out: dict[str, tuple[np.ndarray, ...]] = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        layers = f.get("layers")
        if not isinstance(layers, h5py.Group):
            raise KerasFileError(f"{WEIGHTS} has no layers group")
        for key in layers:
            group = layers[key]
            if not isinstance(group, h5py.Group):
                raise KerasFileError(f"{WEIGHTS}: layers/{key} is not a group")
            own = group.get("vars")
            name = own.attrs.get("name") if isinstance(own, h5py.Group) else None
            if isinstance(name, bytes):
                name = name.decode("utf-8")
            if not isinstance(name, str):
                raise KerasFileError(f"{WEIGHTS}: layers/{key} does not say which layer it holds")
            if name in out:
                raise KerasFileError(f"{WEIGHTS} holds layer {name!r} twice")
            arrays = _vars(own)
            for sub in sorted(k for k in group if k != "vars"):
                if isinstance(group[sub], h5py.Group):
                    arrays += _vars(group[sub].get("vars"))
            out[name] = tuple(arrays)
    return out


def _vars(group) -> list[np.ndarray]:
    import h5py  # noqa: PLC0415

    if not isinstance(group, h5py.Group):
        return []
    keys = list(group)
    if sorted(keys, key=lambda k: (len(k), k)) != [str(i) for i in range(len(keys))]:
        raise KerasFileError(f"{WEIGHTS}: {group.name} holds {keys}, not variables 0..{len(keys) - 1}")
    arrays = []
    for i in range(len(keys)):
        ds = group[str(i)]
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind != "f":
            raise KerasFileError(f"{WEIGHTS}: {ds.name} is not an array of floats")
        arrays.append(np.asarray(ds[()], dtype=np.float32))
    return arrays
