"""Whatever bytes sit in a bundle's model.keras, loading it for serving ends in a bundle that forecasts
exactly like the original, or in BundleError with a reason: never another exception, never a different
model served."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.errors import BundleError
from operators.bundle import MODEL_FILE, load_bundle

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load(bundle, tmp_path, data: bytes):
    path = tmp_path / "b"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(bundle.path, path)
    (path / MODEL_FILE).write_bytes(data)
    try:
        return load_bundle(path)
    except BundleError as exc:
        assert str(exc), "a refusal says why"
        return None


def _same(loaded, bundle) -> None:
    assert loaded.model_version == bundle.model_version
    for mine, theirs in zip(loaded.weights.layers, bundle.weights.layers):
        np.testing.assert_array_equal(mine.kernel, theirs.kernel)
        np.testing.assert_array_equal(mine.recurrent, theirs.recurrent)
        np.testing.assert_array_equal(mine.bias, theirs.bias)
    np.testing.assert_array_equal(loaded.weights.dense_kernel, bundle.weights.dense_kernel)


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused(bundle, tmp_path, data):
    assert _load(bundle, tmp_path, data) is None


@SETTINGS
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_a_damaged_model_file_is_refused_or_still_the_same_model(bundle, tmp_path, flips, cut):
    raw = bytearray((bundle.path / MODEL_FILE).read_bytes())
    for where, xor in flips:
        raw[int(where * len(raw))] ^= xor
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    loaded = _load(bundle, tmp_path, bytes(raw))
    if loaded is not None:
        _same(loaded, bundle)


def _rezip(bundle, edit) -> bytes:
    """The bundle's model file with one member rewritten (a well-formed zip with odd contents)."""
    src = zipfile.ZipFile(bundle.path / MODEL_FILE)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = edit(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(info.filename, data)
    return out.getvalue()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                      max_size=3), max_leaves=8)


@SETTINGS
@given(path=st.lists(st.sampled_from(["config", "layers", 0, 1, 2, 3, "class_name", "name", "units", "module",
                                      "activation", "return_sequences"]), min_size=1, max_size=4),
       value=json_values, drop=st.sampled_from([None, "config.json", "model.weights.h5"]))
def test_an_edited_config_is_refused_or_still_the_same_model(bundle, tmp_path, path, value, drop):
    import json

    def edit(name, data):
        if name == drop:
            return None
        if name != "config.json":
            return data
        doc = json.loads(data)
        node = doc
        for key in path[:-1]:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return data
        try:
            node[path[-1]] = value
        except (IndexError, TypeError):
            return data
        return json.dumps(doc)

    loaded = _load(bundle, tmp_path, _rezip(bundle, edit))
    if loaded is not None:
        _same(loaded, bundle)
