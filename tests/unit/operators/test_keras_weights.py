"""The weights of a user's .keras file are untrusted data: parsed in a child process, every HDF5 feature a
Keras weights file does not need refused in one line, sizes bounded before anything is read, and the
arrays mapped to layers as Keras maps them (so the model version names what runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from operators.errors import BundleError
from operators.bundle_from_keras import bundle_keras_model
from operators.keras_file import KerasFileError, read_keras_model
from tests.support.keras_files import ROOT, WEIGHTS, edit_weights, keras_weights, members, rezip
from tests.support.keras_models import FEATURES, fit_ticks

N = len(FEATURES)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """LSTM(3) -> Dense(3) -> Dense(3) -> Dense(1), random weights: two Dense layers of the same shape."""
    from operators.bundle import _keras

    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((None, N)), L.LSTM(3, return_sequences=True), L.Dense(3, name="first"),
                              L.Dense(3, name="second"), L.Dense(1)])
    rng = np.random.default_rng(3)
    for layer in model.layers:
        layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(path)
    return path


def _refusal(path, match: str) -> str:
    with pytest.raises(KerasFileError, match=match) as err:
        read_keras_model(path)
    assert "\n" not in str(err.value)
    return str(err.value)


def _replace(f, where: str, **kwargs) -> None:
    old = f[where]
    shape, dtype = old.shape, old.dtype
    group, name = where.rsplit("/", 1)
    del f[where]
    f[group].create_dataset(name, shape=kwargs.pop("shape", shape), dtype=kwargs.pop("dtype", dtype), **kwargs)


def test_a_dataset_stored_in_an_external_file_is_refused_and_the_file_never_read(model_file, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(9, 4242.0, np.float32).tobytes())  # what a leak would put in the kernel
    path = edit_weights(model_file, tmp_path / "ext.keras",
                        lambda f: _replace(f, "layers/dense/vars/0", external=[(str(secret), 0, 36)]))
    _refusal(path, "layers/dense/vars/0 is stored in an external file")
    with pytest.raises(BundleError, match="external file") as err:
        bundle_keras_model(path, FEATURES, fit_ticks())
    assert "\n" not in str(err.value)


def test_an_external_dataset_on_a_fifo_is_refused_without_hanging(model_file, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = edit_weights(model_file, tmp_path / "fifo.keras",
                        lambda f: _replace(f, "layers/dense/vars/0", external=[(str(fifo), 0, 36)]))
    code = ("import sys\nfrom operators.keras_file import KerasFileError, read_keras_model\n"
            "try:\n    read_keras_model(sys.argv[1])\nexcept KerasFileError as exc:\n    print(exc)\n    sys.exit(0)\n"
            "sys.exit(1)\n")
    try:  # a reader that opened the FIFO would wait for a writer forever
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a model file whose weights name a FIFO hung")
    assert done.returncode == 0 and "external file" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("edit, why", [
    (lambda f: f["layers/dense/vars"].__setitem__("2", __import__("h5py").SoftLink("/layers/dense/vars/0")),
     "SoftLink"),
    (lambda f: f["layers/dense/vars"].__setitem__("2", __import__("h5py").ExternalLink("/etc/hostname", "/")),
     "ExternalLink"),
    (lambda f: _replace(f, "layers/dense/vars/0", compression="gzip"), "compressed or filtered"),
    (lambda f: _replace(f, "layers/dense/vars/0", chunks=(1, 3)), "chunked"),
    (lambda f: _replace(f, "layers/dense/vars/0", dtype="int32", data=np.ones((3, 3), np.int32)), "float32"),
    (lambda f: _replace(f, "layers/dense/vars/0", dtype="float16", data=np.ones((3, 3), np.float16)), "float32"),
    (lambda f: _replace(f, "layers/dense/vars/0", shape=(1 << 26,)), "claims 268435456 bytes, more than the file"),
    (lambda f: _replace(f, "layers/dense/vars/0", shape=(1000,)), "does not lie inside the file"),
    (lambda f: _replace(f, "layers/dense/vars/0", shape=(1 << 26,), chunks=(1 << 20,), compression="gzip"),
     "compressed or filtered"),
    (lambda f: f["layers/dense/vars"].__setitem__("9", f["layers/dense/vars/0"]), "reached twice"),
    (lambda f: f.create_group("layers/elsewhere/vars").create_dataset("0", data=np.ones(2, np.float32)),
     "the config does not have"),
])
def test_hdf5_features_a_keras_weights_file_does_not_need_are_refused(model_file, tmp_path, edit, why):
    _refusal(edit_weights(model_file, tmp_path / "x.keras", edit), why)


def test_a_virtual_dataset_is_refused(model_file, tmp_path):
    import h5py

    def edit(f):
        layout = h5py.VirtualLayout(shape=(3, 3), dtype="float32")
        layout[:] = h5py.VirtualSource("/etc/hostname", "x", shape=(3, 3))
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_virtual_dataset("0", layout)

    _refusal(edit_weights(model_file, tmp_path / "vds.keras", edit), "virtual dataset")


def test_a_weights_entry_larger_than_the_bound_is_refused_before_it_is_read(model_file, tmp_path, monkeypatch):
    """The entry's stated size (the zip's central directory) says 300 MiB: refused on that alone."""
    path = rezip(members(model_file), tmp_path / "big.keras")
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(WEIGHTS)
    at = next(i for i in range(len(raw)) if raw.startswith(b"PK\x01\x02", i)
              and raw[i + 46: i + 46 + len(WEIGHTS)] == WEIGHTS.encode())
    raw[at + 24: at + 28] = (300 << 20).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(raw))
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (
        opened.append(getattr(name, "filename", name)), real_open(self, name, *a, **k))[1])
    _refusal(path, f"{WEIGHTS} is {300 << 20} bytes; the model's weights may take at most")
    assert WEIGHTS not in opened
    assert info.file_size < 1 << 20


def test_a_reader_that_crashes_is_a_one_line_refusal(monkeypatch):
    from operators import keras_weights

    monkeypatch.setattr(keras_weights, "_reader_command", lambda size: [
        sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    with pytest.raises(keras_weights.WeightsRefused, match=r"crashed the HDF5 reader \(SIGSEGV\)") as err:
        keras_weights.read_weights(b"not cached " + os.urandom(8))
    assert "\n" not in str(err.value)


def test_a_reader_that_hangs_is_stopped_at_its_deadline(monkeypatch):
    from operators import keras_weights

    monkeypatch.setattr(keras_weights, "READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(keras_weights, "_reader_command", lambda size: [
        sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(keras_weights.WeightsRefused, match="took more than 1 s"):
        keras_weights.read_weights(b"not cached " + os.urandom(8))


def test_the_arrays_read_are_those_keras_loads_for_each_layer(model_file):
    from operators.keras_chain import describe

    (theirs,) = keras_weights([model_file])
    model = read_keras_model(model_file)
    for layer in model.layers:
        assert len(layer.weights) == len(theirs.get(layer.name, ()))  # a Sequential's input layer: not listed
        for mine, want in zip(layer.weights, theirs.get(layer.name, ())):
            np.testing.assert_array_equal(mine, want)
    assert describe(model, keras_layers=True).n_inputs == N


def test_two_bundles_whose_groups_map_differently_get_different_versions(model_file, tmp_path):
    """Swap the groups of the two Dense(3) layers, and their `name` attributes with them: Keras loads by
    group path, so the swapped file computes differently; its version must differ, and its arrays be Keras'."""
    def swap(f):
        f.move("layers/dense", "layers/tmp")
        f.move("layers/dense_1", "layers/dense")
        f.move("layers/tmp", "layers/dense_1")

    swapped = edit_weights(model_file, tmp_path / "swapped.keras", swap)
    ticks = fit_ticks()
    a = bundle_keras_model(model_file, FEATURES, ticks, horizon=5)
    b = bundle_keras_model(swapped, FEATURES, ticks, horizon=5)
    assert a.model_version != b.model_version
    _, theirs = keras_weights([model_file, swapped])
    model = read_keras_model(swapped)
    for layer in model.layers:
        assert len(layer.weights) == len(theirs.get(layer.name, ()))
        for mine, want in zip(layer.weights, theirs.get(layer.name, ())):
            np.testing.assert_array_equal(mine, want)
    before = {layer.name: layer for layer in read_keras_model(model_file).layers}
    after = {layer.name: layer for layer in model.layers}
    np.testing.assert_array_equal(after["first"].weights[0], before["second"].weights[0])


def test_the_keras_engine_runs_the_hashed_arrays_and_never_opens_the_hdf5_in_process(tmp_path, monkeypatch):
    """engine = "keras" builds the model from config.json alone (safe mode) and sets the arrays the version
    hashes; h5py is never asked to open anything in the serving process."""
    import h5py

    from operators.forecaster import Forecaster
    from tests.support.keras_models import build, bundled

    bundle, _ = bundled(build("lstm_gelu_gru", seed=2), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("h5py.File opened in the serving process")

    monkeypatch.setattr(h5py, "File", refuse)
    fc = Forecaster(bundle)
    assert type(fc.kernel).__name__ == "KerasEngine"
    running = fc.kernel.model.get_weights()
    hashed = [a for layer in bundle.stack.layers for a in layer.arrays()]
    assert len(running) == len(hashed)
    for mine, theirs in zip(running, hashed):
        np.testing.assert_array_equal(np.reshape(mine, np.shape(theirs)), theirs)
