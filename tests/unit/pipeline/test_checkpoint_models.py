"""Checkpoints of several models (a primary and candidates stepped over the same records): one manifest names
every model's data file at one offset; every check, the MAC and the pruning cover every file; format-1
checkpoints (one model, as written before there were candidates) still load; no bytes make latest() raise."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.features import FEATURE_NAMES
from operators.forecaster import Forecaster
from operators.state import StateTable
from pipeline.checkpoint import CheckpointError, CheckpointStore, Loaded, ModelState, Problem
from pipeline.checkpoint_format import FORMAT, FORMAT_SEVERAL, MAC_FIELD, MAX_MODELS
from pipeline.checkpoint_inventory import inventory_by_partition
from pipeline.console import format_inventory
from pipeline.files.synthetic import generate_ticks
from tests.support.features import numpy_bundle
from tests.unit.pipeline.test_checkpoint import FailingWrites

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
KEY = b"k" * 32
BUNDLES = [numpy_bundle(FEATURE_NAMES, hidden=4, seed=0), numpy_bundle(FEATURE_NAMES, hidden=6, seed=1),
           numpy_bundle(FEATURE_NAMES, hidden=4, seed=2)]
BY_VERSION = {b.model_version: b for b in BUNDLES}


def _states(n_instruments: int = 5, last_offset: int | None = 99) -> list[pa.Table]:
    """Each bundle's partition 0 after the same ticks (``last_offset``: every row's, below the offsets used)."""
    ticks = generate_ticks(n_instruments, 400, seed=4, bad_fraction=0.0)
    out = []
    for b in BUNDLES:
        fc = Forecaster(b)
        fc.step(ticks)
        table = fc.export_partition(0)
        if last_offset is not None:
            i = table.column_names.index("last_offset")
            table = table.set_column(i, "last_offset", pa.array(np.full(table.num_rows, last_offset, np.int64)))
        out.append(table)
    return out


STATES = _states()


def _models(states=STATES, bundles=BUNDLES) -> list[ModelState]:
    return [ModelState(b.model_version, s, b.feature_spec.to_dict()) for b, s in zip(bundles, states)]


def _folder(store) -> str:
    return store._dir("ticks", 0)


def _ls(store) -> list[str]:
    infos = store.fs.get_file_info(pafs.FileSelector(_folder(store), allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def _newest_manifest(store) -> str:
    return f"{_folder(store)}/{[n for n in _ls(store) if n.endswith('.json')][-1]}"


def _get(path: str) -> bytes:
    return Path(path).read_bytes()


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _all_rows_import(loaded: Loaded) -> None:
    """What recovery does with each model's table: rows this model can serve (ValueError otherwise)."""
    for version, table in loaded.states.items():
        if version not in BY_VERSION:
            raise ValueError(f"unknown model {version}")
        StateTable(Forecaster(BY_VERSION[version]).state.shape).check_rows(table)


# -- writing and reading several models -----------------------------------------------------------------------
def test_every_models_state_comes_back_at_one_offset_and_the_primary_accessors_are_the_first(tmp_path):
    store = CheckpointStore(str(tmp_path))
    m = store.write_models("ticks", 0, _models(), 100)
    got = store.latest("ticks", 0)
    assert got.manifest == m and m.format == FORMAT_SEVERAL and m.offset == 100
    assert [e.model_version for e in m.models] == [b.model_version for b in BUNDLES]
    assert list(got.states) == [b.model_version for b in BUNDLES]
    for b, s in zip(BUNDLES, STATES):
        assert got.states[b.model_version].equals(s)
        assert got.states[b.model_version].schema.metadata == s.schema.metadata
        entry = m.model(b.model_version)
        assert (entry.layers, entry.hidden, entry.rows) == (1, b.shape.hidden, s.num_rows)
        assert entry.feature_spec == b.feature_spec.to_dict()
    # the single-model accessors every current caller uses: the primary's
    assert got.state.equals(STATES[0]) and m.model_version == BUNDLES[0].model_version and m.rows == 5
    assert m.total_bytes == sum(e.bytes for e in m.models) > m.bytes
    assert _ls(store) == sorted([f"{m.name}.arrow", f"{m.name}.1.arrow", f"{m.name}.2.arrow", f"{m.name}.json"])
    raw = json.loads(_get(f"{_folder(store)}/{m.name}.json"))
    assert [o["data"] for o in raw["others"]] == [f"{m.name}.1.arrow", f"{m.name}.2.arrow"]
    for entry in m.models:
        body = _get(f"{_folder(store)}/{entry.data}")
        assert len(body) == entry.bytes and hashlib.sha256(body).hexdigest() == entry.sha256


def test_every_restored_state_continues_its_model_exactly(tmp_path):
    """Each model restored from the shared checkpoint steps the next ticks as the undisturbed model does."""
    ticks = generate_ticks(5, 800, seed=4, bad_fraction=0.0)
    first, rest = ticks.slice(0, 400), ticks.slice(400)
    store = CheckpointStore(str(tmp_path))
    live = [Forecaster(b) for b in BUNDLES]
    for fc in live:
        fc.step(first)
    store.write_models("ticks", 0, [ModelState(b.model_version, fc.export_partition(0), b.feature_spec.to_dict())
                                    for b, fc in zip(BUNDLES, live)], 400)
    got = store.latest("ticks", 0)
    for b, fc in zip(BUNDLES, live):
        restored = Forecaster(b)
        restored.import_partition(0, got.states[b.model_version])
        a, r = fc.step(rest), restored.step(rest)
        assert len(a.forecasts) == 400
        np.testing.assert_array_equal(a.forecasts, r.forecasts)


def test_one_model_is_written_in_format_1_byte_for_byte_as_before(tmp_path):
    """Without candidates nothing changes on storage: a build that reads only format 1 still restores it."""
    store = CheckpointStore(str(tmp_path))
    m = store.write("ticks", 0, STATES[0], 100, "v1", {"features": ["a"]})
    raw = json.loads(_get(f"{_folder(store)}/{m.name}.json"))
    assert raw["format"] == FORMAT == 1 and sorted(raw) == sorted(json.loads(_fixture_manifest("checkpoint_format1")))
    assert _ls(store) == [f"{m.name}.arrow", f"{m.name}.json"]
    assert m.others == () and m.models == (m.primary,) and store.latest("ticks", 0).states.keys() == {"v1"}


def _fixture_manifest(name: str) -> str:
    return next((FIXTURES / name / "ticks" / "0").glob("*.json")).read_text()


@pytest.mark.parametrize("fixture, key", [("checkpoint_format1", None), ("checkpoint_format1_signed", KEY)])
def test_a_format_1_checkpoint_written_before_candidates_loads_as_one_model(tmp_path, fixture, key):
    """Stored files, written by the store before checkpoints held several models: they load as a one-model
    checkpoint, and their rows import into their model (numpy-0, hidden 4) and step on."""
    shutil.copytree(FIXTURES / fixture, tmp_path / "store")
    store = CheckpointStore(str(tmp_path / "store"), key=key)
    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems)
    assert problems == [] and got is not None
    assert got.manifest.format == 1 and got.manifest.offset == 60 and got.manifest.model_version == "numpy-0"
    assert list(got.states) == ["numpy-0"] and got.states["numpy-0"] is got.state and got.state.num_rows == 3
    assert [e.model_version for e in got.manifest.models] == ["numpy-0"]
    data = next((tmp_path / "store" / "ticks" / "0").glob("*.arrow"))
    assert got.state.equals(pa.ipc.open_file(pa.py_buffer(data.read_bytes())).read_all())
    fc = Forecaster(BUNDLES[0])
    assert fc.import_partition(0, got.state) == 3
    fc.step(generate_ticks(3, 50, seed=2, bad_fraction=0.0))
    if key is not None:  # the signature still means something: another key refuses it
        assert CheckpointStore(str(tmp_path / "store"), key=b"x" * 32).latest("ticks", 0) is None


def test_a_loaded_built_by_hand_still_has_its_one_state_by_version(tmp_path):
    m = CheckpointStore(str(tmp_path)).write("ticks", 0, STATES[0], 100, "v1", {})
    assert Loaded(m, STATES[0]).states == {"v1": STATES[0]}


@pytest.mark.parametrize("models, why", [
    (lambda: [], "no model"),
    (lambda: _models()[:1] * 2, "appears twice"),
    (lambda: [_models()[0], ModelState(BUNDLES[1].model_version, _with_nan(STATES[1]), {})], "NaN"),
    (lambda: [_models()[0], ModelState("c", _with_last_offset(STATES[1], 500), {})], "last_offset"),
])
def test_the_writer_refuses_what_restore_would_refuse_in_any_models_state(tmp_path, models, why):
    store = CheckpointStore(str(tmp_path))
    store.write_models("ticks", 0, _models(), 100)
    before = _ls(store)
    with pytest.raises(CheckpointError, match=why):
        store.write_models("ticks", 0, models(), 200)
    assert _ls(store) == before and store.latest("ticks", 0).manifest.offset == 100


# -- every check on every model's file --------------------------------------------------------------------------
def _with_last_offset(state: pa.Table, value: int) -> pa.Table:
    i = state.column_names.index("last_offset")
    return state.set_column(i, "last_offset", pa.array(np.full(state.num_rows, value, dtype=np.int64)))


def _with_nan(state: pa.Table) -> pa.Table:
    i = state.column_names.index("h0")
    flat = state.column("h0").combine_chunks().flatten().to_numpy().copy()
    flat[1] = np.nan
    width = state.schema.field("h0").type.list_size
    return state.set_column(i, state.schema.field("h0"), pa.FixedSizeListArray.from_arrays(pa.array(flat), width))


def _with_meta(state: pa.Table, **changes: str) -> pa.Table:
    meta = dict(state.schema.metadata)
    meta.update({k.encode(): v.encode() for k, v in changes.items()})
    return state.replace_schema_metadata(meta)


def _rewrite(manifest_path: str, k: int, body: bytes | None = None, resign: bool = True, **fields) -> None:
    """Change model ``k``'s data file and/or entry (k=0: the top level), recomputing its size and checksum."""
    raw = json.loads(_get(manifest_path))
    entry = raw if k == 0 else raw["others"][k - 1]
    if body is not None:
        Path(manifest_path).with_name(entry["data"]).write_bytes(body)
        if resign:
            entry.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    entry.update(fields)
    Path(manifest_path).write_text(json.dumps(raw))


DAMAGE = {
    "corrupt": lambda path, body: (body[:200] + bytes([body[200] ^ 0xFF]) + body[201:], False, {}),
    "truncated": lambda path, body: (body[:100], False, {}),
    "rows_newer_than_the_offset": lambda path, body: (_ipc(_with_last_offset(STATES[1], 250)), True, {}),
    "nan_in_the_state": lambda path, body: (_ipc(_with_nan(STATES[1])), True, {}),
    "layers_not_the_manifests": lambda path, body: (_ipc(_with_meta(STATES[1], layers="3")), True, {}),
    "watermark_not_a_number": lambda path, body: (_ipc(_with_meta(STATES[1], **{"tickcast.watermark_ns": "x"})),
                                                  True, {}),
    "rows_not_the_manifests": lambda path, body: (None, True, {"rows": 4}),
    "another_models_data": lambda path, body: (None, True, {}),  # set below: the primary's file, checksum and all
}


@pytest.mark.parametrize("damage", sorted([*DAMAGE, "missing"]))
def test_every_check_applies_to_a_candidates_file_and_the_checkpoint_is_skipped_whole(tmp_path, damage):
    store = CheckpointStore(str(tmp_path))
    store.write_models("ticks", 0, _models(), 100)
    store.write_models("ticks", 0, _models(), 200)
    manifest = _newest_manifest(store)
    candidate = Path(manifest).with_name(json.loads(_get(manifest))["others"][0]["data"])
    if damage == "missing":  # also what a lagging listing looks like
        candidate.unlink()
    elif damage == "another_models_data":
        primary = Path(manifest).with_name(json.loads(_get(manifest))["data"])
        _rewrite(manifest, 1, primary.read_bytes())
    else:
        body, resign, fields = DAMAGE[damage](manifest, candidate.read_bytes())
        _rewrite(manifest, 1, body, resign, **fields)
    problems: list[Problem] = []
    got = store.latest("ticks", 0, max_offset=1000, problems=problems, validate=_all_rows_import)
    assert got is not None and got.manifest.offset == 100, "a checkpoint with a bad candidate file was used"
    assert len(problems) == 1 and problems[0].path == manifest


def _set_others(raw: dict, value) -> None:
    raw["others"] = value


MANIFEST_TAMPERING = {
    "others_not_a_list": lambda raw: _set_others(raw, {"a": 1}),
    "others_empty": lambda raw: _set_others(raw, []),
    "others_too_many": lambda raw: _set_others(raw, raw["others"] * MAX_MODELS),
    "entry_not_an_object": lambda raw: raw["others"].__setitem__(0, "x"),
    "entry_missing_a_field": lambda raw: raw["others"][0].pop("sha256"),
    "entry_with_an_extra_field": lambda raw: raw["others"][0].update(extra=1),
    "entry_rows_a_string": lambda raw: raw["others"][0].update(rows="5"),
    "entry_bytes_negative": lambda raw: raw["others"][0].update(bytes=-1),
    "entry_spec_a_list": lambda raw: raw["others"][0].update(feature_spec=[1]),
    "entry_sha_not_hex": lambda raw: raw["others"][0].update(sha256="z" * 64),
    "entry_of_the_primarys_version": lambda raw: raw["others"][0].update(model_version=raw["model_version"]),
    "two_entries_of_one_version": lambda raw: raw["others"][1].update(model_version=raw["others"][0]["model_version"]),
    "entry_names_the_primarys_file": lambda raw: raw["others"][0].update(data=raw["data"]),
    "entry_names_a_file_outside": lambda raw: raw["others"][0].update(data="../../outside.arrow"),
    "entries_swapped": lambda raw: raw["others"].reverse(),
    "format_2_without_others": lambda raw: raw.pop("others"),
    "format_1_with_others": lambda raw: raw.update(format=1),
    "format_3": lambda raw: raw.update(format=3),
}


@pytest.mark.parametrize("how", sorted(MANIFEST_TAMPERING))
def test_every_new_manifest_field_is_checked(tmp_path, how):
    store = CheckpointStore(str(tmp_path))
    store.write_models("ticks", 0, _models(), 100)
    store.write_models("ticks", 0, _models(), 200)
    manifest = _newest_manifest(store)
    raw = json.loads(_get(manifest))
    MANIFEST_TAMPERING[how](raw)
    Path(manifest).write_text(json.dumps(raw))
    problems: list[Problem] = []
    got = store.latest("ticks", 0, max_offset=1000, problems=problems, validate=_all_rows_import)
    assert got is not None and got.manifest.offset == 100
    assert len(problems) == 1 and problems[0].path == manifest


def test_with_a_key_a_candidates_forged_state_is_refused_as_tampered(tmp_path):
    """The MAC covers every model's entry: a candidate's data rewritten with its size and checksum recomputed
    (the forger has no key) does not verify."""
    store = CheckpointStore(str(tmp_path), key=KEY)
    store.write_models("ticks", 0, _models(), 100)
    store.write_models("ticks", 0, _models(), 200)
    manifest = _newest_manifest(store)
    _rewrite(manifest, 2, _ipc(STATES[0]))  # same shape, other numbers: every other check passes
    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems)
    assert got.manifest.offset == 100 and "MAC does not verify" in problems[0].reason
    assert len(json.loads(_get(_newest_manifest(store)))[MAC_FIELD]) == 64
    assert CheckpointStore(str(tmp_path)).latest("ticks", 0).manifest.offset == 200  # keyless: the hash only


# -- pruning and failed writes cover every data file --------------------------------------------------------------
class Recording(FailingWrites):
    """The local filesystem, recording deletions, and failing writes whose file name ends in ``fail_suffix``."""

    def __init__(self):
        super().__init__()
        self.deleted: list[str] = []
        self.fail_suffix = None

    def delete_file(self, path):
        self.deleted.append(os.path.basename(path))
        super().delete_file(path)

    def open_output_stream(self, path, metadata):
        if self.fail_suffix and path.endswith(self.fail_suffix):
            raise OSError(28, "No space left on device")
        return super().open_output_stream(path, metadata)


def test_pruning_deletes_a_manifest_before_all_its_data_files(tmp_path):
    handler = Recording()
    store = CheckpointStore(str(tmp_path), keep=1, filesystem=pafs.PyFileSystem(handler))
    first = store.write_models("ticks", 0, _models(), 100)
    second = store.write_models("ticks", 0, _models(), 200)
    assert _ls(store) == sorted(f"{second.name}{ext}" for ext in (".json", ".arrow", ".1.arrow", ".2.arrow"))
    gone = [n for n in handler.deleted if n.startswith(first.name)]
    assert gone[0] == f"{first.name}.json" and sorted(gone[1:]) == sorted(
        f"{first.name}{ext}" for ext in (".arrow", ".1.arrow", ".2.arrow"))
    assert store.latest("ticks", 0).manifest == second


def test_a_write_that_fails_on_a_candidates_file_leaves_nothing_behind(tmp_path):
    handler = Recording()
    store = CheckpointStore(str(tmp_path), filesystem=pafs.PyFileSystem(handler))
    store.write_models("ticks", 0, _models(), 100)
    before = _ls(store)
    handler.fail_suffix = ".2.arrow"  # the primary's and the first candidate's files land, the second's does not
    with pytest.raises(CheckpointError, match="No space left"):
        store.write_models("ticks", 0, _models(), 200)
    assert _ls(store) == before
    handler.fail_suffix = ".json"  # every data file lands, the manifest does not
    with pytest.raises(CheckpointError, match="No space left"):
        store.write_models("ticks", 0, _models(), 300)
    assert _ls(store) == before
    handler.fail_suffix = None
    assert store.write_models("ticks", 0, _models(), 400) == store.latest("ticks", 0).manifest


def test_orphaned_candidate_files_are_pruned_once_old(tmp_path):
    store = CheckpointStore(str(tmp_path), orphan_age_s=0)
    store.write_models("ticks", 0, _models(), 100)
    dead = store.write_models("ticks", 0, _models(), 200)
    os.unlink(f"{_folder(store)}/{dead.name}.json")  # a writer killed between its data files and its manifest
    kept = store.write_models("ticks", 0, _models(), 300)
    assert not [n for n in _ls(store) if n.startswith(dead.name)]
    assert len([n for n in _ls(store) if n.endswith(".arrow")]) == 6 and kept.offset == 300


# -- state inspect lists each model ---------------------------------------------------------------------------
def test_state_inspect_lists_each_models_rows(tmp_path, capsys):
    from pipeline.cli import main

    store = CheckpointStore(str(tmp_path / "g"))
    store.write_models("ticks", 0, _models(), 100)
    store.write("ticks", 1, STATES[0], 100, BUNDLES[0].model_version, {})
    rows = inventory_by_partition(CheckpointStore(str(tmp_path)))
    assert [[(m.model_version, m.rows, m.state) for m in r.models] for r in rows] == [
        [(b.model_version, 5, f"1x{b.shape.hidden}") for b in BUNDLES], [(BUNDLES[0].model_version, 5, "1x4")]]
    assert rows[0].bytes == sum(m.bytes for m in rows[0].models) and rows[0].model_version == "numpy-0"
    text = format_inventory(rows).splitlines()
    assert [ln.split()[:3] for ln in text if ln.startswith("    model")] == [
        ["model", "numpy-0", "5"], ["model", "numpy-1", "5"], ["model", "numpy-2", "5"]]
    assert text[1].split()[:3] == ["g/ticks/0", "100", "5"] and "(primary)" in text[2]
    assert text[5].split()[:3] == ["g/ticks/1", "100", "5"]  # one model: its one line, as before
    assert main(["state", "inspect", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [m["model_version"] for m in shown[0]["models"]] == ["numpy-0", "numpy-1", "numpy-2"]


# -- whatever the bytes: latest() returns a checkpoint whose every state imports, or the older one ------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=8)
_TOP = ["format", "topic", "partition", "offset", "rows", "model_version", "feature_spec", "layers", "hidden",
        "created_at", "data", "bytes", "sha256", "others"]
_ENTRY = ["model_version", "feature_spec", "layers", "hidden", "rows", "data", "bytes", "sha256", "extra"]
_edits = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from(_ENTRY), _json),  # model k's member
    st.tuples(st.just("set_top"), st.just(0), st.sampled_from(_TOP), _json),
    st.tuples(st.just("drop"), st.integers(0, 2), st.sampled_from(_ENTRY), st.none()),
    st.tuples(st.just("drop_top"), st.just(0), st.sampled_from(_TOP), st.none()),
    st.tuples(st.just("copy"), st.integers(0, 2), st.integers(0, 2), st.none()),  # entry a := entry b
    st.tuples(st.just("cut"), st.integers(0, 3), st.just(""), st.none()),  # keep the first n others
)
_body_edits = st.one_of(
    st.tuples(st.integers(0, 2), st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.integers(0, 2), st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.integers(0, 2), st.just("state_of"), st.integers(0, 2), st.just(0)),
    st.tuples(st.integers(0, 2), st.just("nan"), st.just(0), st.just(0)),
    st.tuples(st.integers(0, 2), st.just("late_rows"), st.just(0), st.just(0)),
)


def _entry(raw: dict, k: int):
    if k == 0:
        return raw
    others = raw.get("others")
    return others[k - 1] if isinstance(others, list) and len(others) >= k and isinstance(others[k - 1], dict) \
        else None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(_edits, max_size=3), body_edits=st.lists(_body_edits, max_size=2), resign=st.booleans())
def test_no_bytes_in_a_checkpoint_of_several_models_make_latest_raise_or_return_something_unusable(
        edits, body_edits, resign):
    """The newest checkpoint's manifest (top level, any model's entry, the list of others) and any model's data
    bytes are mutated (optionally re-signed so the checksums hold and the deeper checks are reached). latest()
    returns a checkpoint whose every model's state imports into that model, or the older one; never raises."""
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(tmp)
        store.write_models("ticks", 0, _models(), 100)
        store.write_models("ticks", 0, _models(), 200)
        manifest = _newest_manifest(store)
        raw = json.loads(_get(manifest))
        paths = [Path(manifest).with_name(e["data"]) for e in [raw, *raw["others"]]]
        bodies = [p.read_bytes() for p in paths]
        for k, kind, a, b in body_edits:
            if kind in ("flip", "truncate") and not bodies[k]:
                continue  # emptied by an earlier edit
            if kind == "flip":
                body = bytearray(bodies[k])
                body[a % len(body)] ^= b
                bodies[k] = bytes(body)
            elif kind == "truncate":
                bodies[k] = bodies[k][: a % len(bodies[k])]
            else:
                table = {"state_of": lambda: STATES[a], "nan": lambda: _with_nan(STATES[k]),
                         "late_rows": lambda: _with_last_offset(STATES[k], 300)}[kind]()
                bodies[k] = _ipc(table)
        for k, (path, body) in enumerate(zip(paths, bodies)):
            path.write_bytes(body)
            if resign:
                _entry(raw, k).update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        for kind, k, name, value in edits:
            if kind == "set_top":
                raw[name] = value
            elif kind == "drop_top":
                raw.pop(name, None)
            elif kind == "cut" and isinstance(raw.get("others"), list):
                raw["others"] = raw["others"][: int(k)]
            elif kind == "copy" and _entry(raw, k) is not None and _entry(raw, name) is not None:
                source = {key: _entry(raw, name).get(key) for key in _ENTRY[:-1]}
                _entry(raw, k).update(source)
            elif kind in ("set", "drop") and _entry(raw, k) is not None:
                if kind == "set":
                    _entry(raw, k)[name] = value
                else:
                    _entry(raw, k).pop(name, None)
        Path(manifest).write_text(json.dumps(raw, allow_nan=True))
        got = store.latest("ticks", 0, max_offset=10**6, validate=_all_rows_import)
        assert got is not None, "the untouched older checkpoint must still be found"
        assert got.manifest.offset in (100, 200) and got.states[got.manifest.model_version] is got.state
        assert [e.model_version for e in got.manifest.models] == list(got.states)
        for version, table in got.states.items():
            fc = Forecaster(BY_VERSION[version])
            assert fc.import_partition(0, table) == table.num_rows
            assert np.isfinite(fc.state.h(0)[: table.num_rows]).all()
            assert (table.column("last_offset").to_numpy() < got.manifest.offset).all()
            assert math.isfinite(got.manifest.created_at)
