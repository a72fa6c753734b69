"""Mutated real .keras files: changed bytes inside model.weights.h5 (the zip rebuilt, so its CRCs are right
and HDF5 parses the changed bytes), HDF5 features injected with h5py, edits of config.json. Every one ends
in a one-line refusal or in a model whose arrays are those Keras loads from the same file; never a signal
death or a hang of the reading process (a hang ends the process with a traceback after HANG_S), never
bytes from outside the file, never arrays larger than the file."""

from __future__ import annotations

import faulthandler
import importlib.util
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.keras_chain import UnservableModel, describe
from operators.keras_file import KerasFileError, read_keras_model
from tests.support.keras_files import CONFIG, WEIGHTS, edit_config, edit_weights, keras_weights, members, rezip
from tests.support.keras_models import FEATURES

HANG_S = 120  # far beyond the reader's own deadline, set to READER_S below
READER_S = 10.0
SECRET = 4242.0  # the value a file outside the model holds: never in an accepted model
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _model_file(folder):
    from operators.bundle import _keras

    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(7)
    x = inp = keras.Input((None, len(FEATURES)), name="ticks")
    x = L.LSTM(3, return_sequences=True)(x)
    x = L.Dense(3, activation="tanh")(x)
    x = L.Dense(3)(x)
    x = L.TimeDistributed(L.Dense(2))(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    path = folder / "base.keras"
    model.save(path)
    return path


def _pools(h5: bytes) -> list[list[int]]:
    """Byte positions to change: anywhere; the metadata (not the arrays' data); the class and bit-field bytes
    of every datatype message (the datasets' float32, the `name` attributes' strings), where libhdf5 picks
    how to convert what it reads."""
    import h5py

    data = []
    with h5py.File(io.BytesIO(h5), "r") as f:
        f.visititems(lambda _, o: data.append((o.id.get_offset(), o.id.get_storage_size()))
                     if isinstance(o, h5py.Dataset) and o.id.get_offset() is not None else None)
    meta = [i for i in range(len(h5)) if not any(a <= i < a + n for a, n in data)]
    headers = [at + i for at in _find_all(h5, b"\x11\x20\x1f\x00\x04\x00") for i in range(4)]
    headers += [at + 8 + i for at in _find_all(h5, b"name\x00\x00\x00\x00") for i in range(4)]
    return [list(range(len(h5))), meta, sorted(headers)]


def _find_all(data: bytes, sig: bytes) -> list[int]:
    out, at = [], data.find(sig)
    while at >= 0:
        out.append(at)
        at = data.find(sig, at + 1)
    return out


def _verdict(path, accepted: list) -> None:
    """Refused in one line, or accepted with every array from inside the file (checked against Keras later)."""
    h5_size = len(members(path).get(WEIGHTS, b""))
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        model = read_keras_model(path)
        arrays = [w for layer in model.layers for w in layer.weights]  # checked before any shape check refuses
        assert sum(a.size for a in arrays) * 4 <= h5_size, "arrays larger than the file they came from"
        assert not any(np.any(a == SECRET) for a in arrays), "bytes from outside the file"
        describe(model, keras_layers=True)
    except (KerasFileError, UnservableModel) as exc:
        assert str(exc) and "\n" not in str(exc), repr(exc)
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    accepted.append((path, model))


def _inject(kind: str, folder):
    """An HDF5 feature a Keras weights file does not need, put on the Dense kernel (layers/dense/vars/0)."""
    import h5py

    target = "layers/dense/vars/0"
    secret = folder / "secret.bin"
    secret.write_bytes(np.full(9, SECRET, np.float32).tobytes())
    fifo = folder / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)

    def replace(f, **kwargs):
        del f[target]
        f["layers/dense/vars"].create_dataset("0", **{"shape": (3, 3), "dtype": "<f4"} | kwargs)

    def virtual(f):
        layout = h5py.VirtualLayout(shape=(3, 3), dtype="float32")
        layout[:] = h5py.VirtualSource(str(folder / "other.h5"), "x", shape=(3, 3))
        with h5py.File(folder / "other.h5", "w") as other:
            other["x"] = np.full((3, 3), SECRET, np.float32)
        del f[target]
        f["layers/dense/vars"].create_virtual_dataset("0", layout)

    def swap(f):
        f.move("layers/dense", "layers/tmp")
        f.move("layers/dense_1", "layers/dense")
        f.move("layers/tmp", "layers/dense_1")

    return {
        "external_secret": lambda f: replace(f, external=[(str(secret), 0, 36)]),
        "external_fifo": lambda f: replace(f, external=[(str(fifo), 0, 36)]),
        "soft_link": lambda f: f["layers/dense/vars"].__setitem__("2", h5py.SoftLink("/" + target)),
        "external_link": lambda f: f["layers/dense/vars"].__setitem__("2", h5py.ExternalLink(str(folder / "other.h5"),
                                                                                            "/x")),
        "virtual": virtual,
        "gzip_huge": lambda f: replace(f, shape=(1 << 25,), chunks=(1 << 20,), compression="gzip"),
        "unallocated_huge": lambda f: replace(f, shape=(1 << 25,)),
        "unallocated": lambda f: replace(f),
        "int_kernel": lambda f: replace(f, dtype="<i4", data=np.ones((3, 3), np.int32)),
        "bfloat16_mark": lambda f: f[target].attrs.__setitem__("dtype", "bfloat16"),
        "float64_kernel": lambda f: replace(f, dtype="<f8", data=np.full((3, 3), 0.25)),
        "wrong_shape": lambda f: replace(f, shape=(9,), data=np.ones(9, np.float32)),
        "groups_swapped": swap,
        "group_renamed": lambda f: f.move("layers/dense_1", "layers/dense_7"),
    }[kind]


def _truncated(data: bytes, kind: str) -> bytes:
    return data[: {"truncated_superblock": 40, "truncated_half": len(data) // 2}.get(kind, len(data) - 8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    path = _model_file(folder)
    return folder, path, _pools(members(path)[WEIGHTS])


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 1 << 40) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=6)


def test_mutated_keras_files_are_refused_in_one_line_or_read_as_keras_reads_them(base, monkeypatch):
    folder, path, pools = base
    if importlib.util.find_spec("operators.keras_weights"):  # the reader's own deadline, shorter for the test
        monkeypatch.setattr("operators.keras_weights.READ_TIMEOUT_S", READER_S)
    parts = members(path)
    accepted: list = []
    counter = iter(range(1 << 30))

    def out():
        return folder / f"m{next(counter)}.keras"

    # Half of the changes land on a datatype message's header, a quarter anywhere, a quarter in the metadata.
    position = st.sampled_from([pools[0], pools[1], pools[2], pools[2]]).flatmap(st.sampled_from)

    @settings(max_examples=40, **SETTINGS)
    @given(changes=st.lists(st.tuples(position, st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)),
                            min_size=3, max_size=8))
    def changed_bytes(changes):
        h5 = bytearray(parts[WEIGHTS])
        for at, value in changes:
            h5[at] = value
        _verdict(rezip(parts | {WEIGHTS: bytes(h5)}, out()), accepted)

    @settings(max_examples=20, **SETTINGS)
    @given(kind=st.sampled_from(["external_secret", "external_fifo", "soft_link", "external_link", "virtual",
                                 "gzip_huge", "unallocated_huge", "unallocated", "int_kernel", "bfloat16_mark",
                                 "float64_kernel", "wrong_shape", "groups_swapped", "group_renamed",
                                 "truncated_superblock", "truncated_half", "truncated_tail"]))
    def injected(kind):
        if kind.startswith("truncated"):
            _verdict(rezip(parts | {WEIGHTS: _truncated(parts[WEIGHTS], kind)}, out()), accepted)
        else:
            _verdict(edit_weights(path, out(), _inject(kind, folder)), accepted)

    @settings(max_examples=30, **SETTINGS)
    @given(keys=st.lists(st.sampled_from(["config", "layers", 0, 1, 2, 3, 4, "class_name", "name", "units",
                                          "module", "activation", "kernel_initializer", "registered_name",
                                          "dtype", "layer", "inbound_nodes", "output_layers"]), min_size=1,
                         max_size=5),
           value=json_values,
           flips=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=3))
    def edited_config(keys, value, flips):
        def edit(doc):
            node = doc
            for key in keys[:-1]:
                try:
                    node = node[key]
                except (KeyError, IndexError, TypeError):
                    return
            try:
                node[keys[-1]] = value
            except (IndexError, TypeError):
                pass

        edited = edit_config(path, out(), edit)
        text = bytearray(members(edited)[CONFIG])
        for at, value_ in flips:
            text[at % len(text)] = value_
        _verdict(rezip(parts | {CONFIG: bytes(text)}, edited), accepted)

    changed_bytes()
    injected()
    edited_config()
    # Whatever was accepted holds, layer by layer, exactly the arrays Keras loads from the same file.
    theirs = keras_weights([p for p, _ in accepted]) if accepted else []
    for (p, model), keras_model in zip(accepted, theirs):
        assert isinstance(keras_model, dict), f"{p.name} was accepted, Keras refuses it: {keras_model}"
        for layer in model.layers:
            want = keras_model.get(layer.name, [])
            assert len(layer.weights) == len(want), f"{p.name}: layer {layer.name}"
            for mine, expected in zip(layer.weights, want):
                np.testing.assert_array_equal(mine, np.asarray(expected, np.float32), err_msg=p.name)
