"""Read a Keras 3 model file (``.keras``) as data, without Keras or TensorFlow.

A ``.keras`` file is a zip archive. ``config.json`` describes the model as
JSON (for a Functional or Sequential model, a list of layers, each with its
class name and config); ``model.weights.h5`` holds each layer's variables in
HDF5 groups under ``layers/``: the layer's own variables in ``<group>/vars/0,
1, ...`` and those of a sublayer, such as a recurrent layer's cell, in
``<group>/<sub>/vars/...``. The group of a layer is found as Keras finds it
when it loads the file (``keras.src.saving.saving_lib``): by its place among
the model's layers, named after its class (the first LSTM ``layers/lstm``, the
second ``layers/lstm_1``), never by the layer names or attributes inside the
file; so the arrays read here are the arrays Keras would load.

Serving needs only that: the layers in order, their configs, their arrays.
Reading them deserialises nothing but JSON and numbers, so no code in the file
can run, and a serving process does not pay TensorFlow's start-up (seconds)
or memory (hundreds of MB). The HDF5 bytes are parsed in a child process
(:mod:`operators.keras_weights`), so a malformed or hostile weights file ends
in a refusal, never in a crash or a hang of the process reading it. Both
members are bounded in size before they are read. Any file that does not have
this shape raises ``KerasFileError`` with one line saying what was wrong.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
_MAX_CONFIG_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 256 << 20  # a served recurrent model is far smaller; checked before a byte is read
_MAX_MEMBERS = 1000
_MAX_LAYERS = 1000


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
    registered_name: str | None = field(default=None, compare=False)  # Keras' own classes: None or class_name


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
    from operators.keras_weights import WeightsRefused, read_weights  # noqa: PLC0415

    try:
        with zipfile.ZipFile(path) as archive:
            if len(archive.infolist()) > _MAX_MEMBERS:
                raise KerasFileError(f"the archive holds {len(archive.infolist())} members; a model file holds a few")
            config = _read_config(archive)
            entries = _layer_entries(config)
            data = _read_member(archive, WEIGHTS, MAX_WEIGHTS_BYTES, "the model's weights")
        variables = read_weights(data, WEIGHTS)
    except KerasFileError:
        raise
    except WeightsRefused as exc:
        raise KerasFileError(str(exc)) from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError, EOFError, RecursionError) as exc:
        raise KerasFileError(f"not a readable Keras model file ({type(exc).__name__}: {exc})") from None
    inner = config["config"]
    inputs, outputs = _tensor_list(inner.get("input_layers")), _tensor_list(inner.get("output_layers"))
    groups = _weight_groups(config["class_name"], entries, outputs)
    named = {path.split("/")[1] for path in variables}
    unknown = sorted(named - {g.split("/")[1] for g in groups.values()})
    if unknown:
        raise KerasFileError(f"{WEIGHTS} holds variables of layers the config does not have: {unknown}")
    layers = []
    for entry in entries:
        name = entry["config"]["name"]
        inbound = entry.get("inbound_nodes")
        arrays = _arrays_under(variables, groups[name]) if name in groups else ()
        registered = entry.get("registered_name")
        layers.append(KerasLayer(entry["class_name"], str(entry.get("module") or ""), name, entry["config"],
                                 arrays, inbound if isinstance(inbound, list) else None,
                                 registered if isinstance(registered, str) or registered is None else repr(registered)))
    return KerasModel(config["class_name"], layers, inputs, outputs)


def read_keras_config(path: str | Path) -> dict:
    """The model file's ``config.json`` alone (bounded, checked to be a Functional or Sequential model)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = _read_config(archive)
    except KerasFileError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError, EOFError, RecursionError) as exc:
        raise KerasFileError(f"not a readable Keras model file ({type(exc).__name__}: {exc})") from None
    _layer_entries(config)
    return config


def _read_member(archive: zipfile.ZipFile, member: str, limit: int, what: str) -> bytes:
    """A member's bytes, refused by its stated size before any is read, and by its real size while reading."""
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise KerasFileError(f"{member} is {info.file_size} bytes; {what} may take at most {limit}")
    with archive.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise KerasFileError(f"{member} is more than {limit} bytes; {what} may take at most {limit}")
    return data


def keras_group_name(class_name: str) -> str:
    """A layer's group under ``layers/`` before numbering, as Keras names it (``naming.to_snake_case``)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weight_groups(kind: str, entries: list[dict], outputs: list) -> dict[str, str]:
    """Layer name -> the group Keras loads its variables from: ``layers/<class>``, ``layers/<class>_<k>`` for the
    k-th further layer of that class, in the order of ``model.layers`` (a Sequential model's config order without
    its input layer; a Functional model's layers by decreasing depth from its outputs)."""
    if kind == "Sequential":
        order = entries[1:] if entries and entries[0]["class_name"] == "InputLayer" else list(entries)
    else:
        order = _functional_order(entries, outputs)
    used: dict[str, int] = {}
    groups = {}
    for entry in order:
        base = keras_group_name(entry["class_name"])
        used[base] = used.get(base, -1) + 1
        groups[entry["config"]["name"]] = f"layers/{base}" + (f"_{used[base]}" if used[base] else "")
    return groups


def _functional_order(entries: list[dict], outputs: list) -> list[dict]:
    """Keras' ``Functional.layers``: the graph's layers by decreasing depth (an output layer has depth 0, a
    layer feeding others one more than the deepest of them); ties in config order. For the linear chains
    tickcast serves, the chain's order from its input. Layers off the graph hold no variables Keras loads."""
    names = [e["config"]["name"] for e in entries]
    consumers: dict[str, list[str]] = {n: [] for n in names}
    for entry in entries:
        for node in entry.get("inbound_nodes") or []:
            for source in inbound_layers(node.get("args", []) if isinstance(node, dict) else []):
                if source in consumers:
                    consumers[source].append(entry["config"]["name"])
    depth: dict[str, int] = {str(t[0]): 0 for t in outputs if isinstance(t, list) and t and t[0] in consumers}
    for _ in range(len(names)):  # longest path to an output, relaxed at most once per layer (no cycles)
        changed = False
        for name in names:
            deeper = [depth[c] + 1 for c in consumers[name] if c in depth]
            if deeper and max(deeper) > depth.get(name, -1):
                depth[name] = max(deeper)
                changed = True
        if not changed:
            break
    else:
        raise KerasFileError(f"{CONFIG}: the layers' graph has a cycle")
    position = {name: i for i, name in enumerate(names)}
    on_graph = sorted(depth, key=lambda n: (-depth[n], position[n]))
    by_name = {e["config"]["name"]: e for e in entries}
    return [by_name[n] for n in on_graph]


def _arrays_under(variables: dict, group: str) -> tuple[np.ndarray, ...]:
    """The variables of the layer whose group is ``group``: its own (``vars/0..``), then each sublayer's in
    the order Keras visits attributes (by name, private ones last), as ``layer.weights`` lists them."""
    prefix = group + "/"
    own = {p[len(prefix) + 5:]: a for p, a in variables.items() if p.startswith(prefix + "vars/")}
    if sorted(own, key=lambda k: (len(k), k)) != [str(i) for i in range(len(own))]:
        raise KerasFileError(f"{WEIGHTS}: {group}/vars holds {sorted(own)}, not variables 0..{len(own) - 1}")
    arrays = tuple(own[str(i)] for i in range(len(own)))
    subs = {p[len(prefix):].split("/")[0] for p in variables if p.startswith(prefix)} - {"vars"}
    for sub in sorted(subs, key=lambda s: ("~" + s) if s.startswith("_") else s):
        arrays += _arrays_under(variables, prefix + sub)
    return arrays


def inbound_layers(args) -> list[str]:
    """Names of the layers whose outputs are among a node's ``args`` (tensors may be nested in lists)."""
    out: list[str] = []
    for arg in args if isinstance(args, list) else [args]:
        if isinstance(arg, list):
            out += inbound_layers(arg)
        elif isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
            config = arg.get("config") if isinstance(arg.get("config"), dict) else {}
            history = config.get("keras_history", ["?"])
            out.append(str(history[0]) if isinstance(history, list) and history else "?")
    return out


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
    config = json.loads(_read_member(archive, CONFIG, _MAX_CONFIG_BYTES, "a model description").decode("utf-8"))
    if not isinstance(config, dict):
        raise KerasFileError(f"{CONFIG} is not a JSON object")
    return config


# Where Keras finds the model class when it loads a file (the first name is what it writes): under any other
# module name (``keras.models`` for a Functional model, a misspelt ``keras.src.modelg.functional``) Keras
# refuses the file, and so does tickcast.
MODEL_MODULES = {"Functional": ("keras.src.models.functional",),
                 "Sequential": ("keras", "keras.models", "keras.src.models", "keras.src.models.sequential")}


def _layer_entries(config: dict) -> list[dict]:
    kind = config.get("class_name")
    if kind not in ("Functional", "Sequential"):
        raise KerasFileError(f"the model is a {kind!r}; only Functional and Sequential models are read")
    module = config.get("module")
    if module not in MODEL_MODULES[kind] or config.get("registered_name") not in (None, kind):
        raise KerasFileError(f"the model's class is {module!r}.{config.get('registered_name')!r}, "
                             f"not Keras' own {kind}")
    inner = config.get("config")
    entries = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(entries, list):
        raise KerasFileError(f"{CONFIG} has no list of layers")
    if len(entries) > _MAX_LAYERS:
        raise KerasFileError(f"{CONFIG} has {len(entries)} layers; at most {_MAX_LAYERS} are read")
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("class_name"), str)
                and isinstance(entry.get("config"), dict) and isinstance(entry["config"].get("name"), str)):
            raise KerasFileError(f"{CONFIG} has a layer entry without a class name, config and name")
    names = [e["config"]["name"] for e in entries]
    if len(set(names)) != len(names):
        raise KerasFileError(f"{CONFIG} names a layer twice")
    return entries
