"""The checkpoint store on a local directory and on a real S3 endpoint (moto's server over HTTP):
writes, verification, fallback, pruning, races between two writers, failing storage; and the runner's
recovery decisions that depend on it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import threading

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.structs import TopicPartition

from operators.forecaster import Forecaster
from pipeline.checkpoint import (
    CheckpointError,
    CheckpointStore,
    Problem,
    StoreUnavailable,
    group_store,
    join_uri,
    redact_uri,
)
from pipeline.checkpoint_format import path_segment
from pipeline.files.synthetic import generate_ticks
from tests.support.faults import failing_first
from tests.support.s3 import s3_server  # noqa: F401 - the session's S3 endpoint (fixture)

BACKENDS = ["local", "s3"]


@pytest.fixture
def state(bundle) -> pa.Table:
    fc = Forecaster(bundle)
    fc.step(generate_ticks(20, 2_000, seed=5, bad_fraction=0.0))
    return fc.export_partition(0)


@pytest.fixture(params=BACKENDS)
def root(request, tmp_path) -> str:
    """A store root: a local directory, or ``s3://KEY:SECRET@bucket/ckpt?endpoint_override=...`` on moto."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_server").bucket()


def _write(store, state, offset, topic="ticks", partition=0):
    return store.write(topic, partition, state, offset, "v1", {"features": ["a"]})


# -- files, through the store's own filesystem (the same code for a directory and a bucket) -----------------
def _ls(store, suffix, topic="ticks", partition=0) -> list[str]:
    infos = store.fs.get_file_info(pafs.FileSelector(store._dir(topic, partition), allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def _newest(store, suffix) -> str:
    return _ls(store, suffix)[-1]


def _get(store, path) -> bytes:
    with store.fs.open_input_stream(path) as f:
        return f.read()


def _put(store, path, data: bytes) -> None:
    with store.fs.open_output_stream(path) as f:
        f.write(data)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _resign(store, manifest_path, body: bytes | None = None, **fields) -> None:
    """Rewrite a checkpoint consistently (data, then a manifest with its size and checksum), with changes:
    what an attacker or a buggy writer could produce that checksums alone do not catch."""
    raw = json.loads(_get(store, manifest_path))
    if body is not None:
        _put(store, f"{manifest_path.rsplit('/', 1)[0]}/{raw['data']}", body)
        raw.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    raw.update(fields)
    _put(store, manifest_path, json.dumps(raw).encode())


# -- the basics, on both backends ---------------------------------------------------------------------------
def test_roundtrip_keeps_rows_metadata_and_offset(root, state):
    store = CheckpointStore(root)
    m = _write(store, state, 1234)
    got = store.latest("ticks", 0)
    assert got.manifest == m and m.offset == 1234 and m.rows == state.num_rows == 20
    assert got.state.equals(state) and got.state.schema.metadata == state.schema.metadata


def test_keep_last_k(root, state):
    store = CheckpointStore(root, keep=2)
    for off in (10, 20, 30, 40):
        _write(store, state, off)
    names = [p.rsplit("/", 1)[1] for p in _ls(store, "")]
    assert len(names) == 4 and {n.split("-")[0] for n in names} == {"0" * 18 + "30", "0" * 18 + "40"}
    assert store.latest("ticks", 0).manifest.offset == 40


def test_file_uri(tmp_path, state):
    store = CheckpointStore(f"file://{tmp_path}")
    _write(store, state, 10)
    assert len(list((tmp_path / "ticks" / "0").iterdir())) == 2 and store.latest("ticks", 0).manifest.offset == 10


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete_data", "garbage_manifest"])
def test_damaged_latest_falls_back_to_previous(root, state, damage):
    store = CheckpointStore(root)
    _write(store, state, 100)
    _write(store, state, 200)
    data, manifest = _newest(store, ".arrow"), _newest(store, ".json")
    if damage == "corrupt":
        raw = bytearray(_get(store, data))
        raw[len(raw) // 2] ^= 0xFF
        _put(store, data, bytes(raw))
    elif damage == "truncate":
        _put(store, data, _get(store, data)[:100])
    elif damage == "delete_data":  # also what a lagging listing looks like: a manifest whose data is not there
        store.fs.delete_file(data)
    else:
        _put(store, manifest, b"{not json")
    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems)
    assert got.manifest.offset == 100 and got.state.equals(state)
    assert len(problems) == 1 and problems[0].path == manifest


def test_resigned_data_whose_arrow_footer_is_broken_is_skipped_not_store_trouble(root, state):
    """pyarrow reports a broken IPC footer in in-memory bytes as a plain OSError ("Verification of
    flatbuffer-encoded Footer failed", "Read out of bounds"); that is the file's fault, not the store's, so
    the checkpoint is skipped like a corrupt one instead of the restore being retried forever."""
    store = CheckpointStore(root)
    _write(store, state, 100)
    _write(store, state, 200)
    body = bytearray(_get(store, _newest(store, ".arrow")))
    body[-60] = 0xFF  # inside the footer
    _resign(store, _newest(store, ".json"), bytes(body))
    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems)
    assert got.manifest.offset == 100 and len(problems) == 1 and "not Arrow IPC" in problems[0].reason


def test_data_without_manifest_is_ignored_and_max_offset_respected(root, state):
    store = CheckpointStore(root)
    _write(store, state, 100)
    _write(store, state, 300)
    store.fs.delete_file(_newest(store, ".json"))  # a write that died between data and manifest
    assert store.latest("ticks", 0).manifest.offset == 100
    _write(store, state, 500)
    assert store.latest("ticks", 0, max_offset=499).manifest.offset == 100
    assert store.latest("ticks", 0, max_offset=99) is None
    assert store.latest("other", 3) is None


def test_orphan_data_files_are_pruned(root, state):
    """A data file whose manifest never came (a writer killed in between) is deleted by a later write once
    older than orphan_age_s; a complete checkpoint never is."""
    store = CheckpointStore(root, keep=3, orphan_age_s=0)
    _write(store, state, 100)
    _write(store, state, 200)
    orphan = _newest(store, ".arrow")
    store.fs.delete_file(_newest(store, ".json"))
    _write(store, state, 300)
    arrows = _ls(store, ".arrow")
    assert orphan not in arrows and len(arrows) == 2 and len(_ls(store, ".json")) == 2
    assert [store.load(p).manifest.offset for p in _ls(store, ".json")] == [100, 300]


def test_young_orphans_are_left_alone(root, state):
    """Within orphan_age_s a data file without a manifest may be another writer's checkpoint in progress."""
    store = CheckpointStore(root, orphan_age_s=3600)
    _write(store, state, 100)
    store.fs.delete_file(_newest(store, ".json"))
    _write(store, state, 200)
    assert len(_ls(store, ".arrow")) == 2


def test_inventory_lists_good_and_bad(root, state):
    store = CheckpointStore(root)
    _write(store, state, 1, partition=0)
    _write(store, state, 2, partition=1)
    manifest = _ls(store, ".json", partition=1)[-1]
    body = json.loads(_get(store, manifest))
    body["sha256"] = "0" * 64
    _put(store, manifest, json.dumps(body).encode())
    inv = store.inventory()
    assert [(m.partition if m else None, problem is None) for _, m, problem in inv] == [(0, True), (None, False)]
    assert "checksum" in inv[1][2]


def test_tampered_checkpoint_with_a_valid_checksum_is_refused_not_used(root, bundle, bundle2, state):
    """Someone rewrites a checkpoint and its manifest consistently, but the rows do not fit the model:
    the checks refuse it and recovery falls back to the older good one."""
    from operators.state import StateTable

    store = CheckpointStore(root)
    _write(store, state, 100)
    other = Forecaster(bundle2)
    other.step(generate_ticks(5, 300, seed=1, bad_fraction=0.0))
    _write(store, other.export_partition(0), 200)  # 2 layers: not this 1-layer model's state
    renamed = state.rename_columns([c if c != "h0" else "payload" for c in state.column_names])
    _write(store, renamed.replace_schema_metadata(state.schema.metadata), 300)

    table = StateTable(Forecaster(bundle).state.shape)

    def check(loaded):
        table.check_rows(loaded.state)

    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems, validate=check)
    assert got.manifest.offset == 100
    assert len(problems) == 2 and all("do not match this model" in p.reason for p in problems), problems


# -- every manifest field is checked (issue 10, defect 10) ------------------------------------------------
def _with_last_offset(state: pa.Table, value: int) -> pa.Table:
    i = state.column_names.index("last_offset")
    return state.set_column(i, "last_offset", pa.array(np.full(state.num_rows, value, dtype=np.int64)))


def _with_nan_state(state: pa.Table) -> pa.Table:
    i = state.column_names.index("h0")
    flat = state.column("h0").combine_chunks().flatten().to_numpy().copy()
    flat[3] = np.nan
    hidden = state.schema.field("h0").type.list_size
    return state.set_column(i, state.schema.field("h0"), pa.FixedSizeListArray.from_arrays(pa.array(flat), hidden))


def _with_meta(state: pa.Table, **changes: str) -> pa.Table:
    meta = dict(state.schema.metadata)
    meta.update({k.encode(): v.encode() for k, v in changes.items()})
    return state.replace_schema_metadata(meta)


def _with_names_past_their_data(state: pa.Table) -> pa.Table:
    """The instrument column with a string offset far past its data buffer: an Arrow IPC file that reads, but
    whose first compute kernel over the column reads out of bounds (a segfault in ``pc.unique``)."""
    names = state.column("instrument").combine_chunks()
    offsets = np.frombuffer(names.buffers()[1], dtype=np.int32)[:len(names) + 1].copy()
    offsets[1] = 1 << 30
    bad = pa.Array.from_buffers(pa.string(), len(names), [None, pa.py_buffer(offsets.tobytes()), names.buffers()[2]])
    return state.set_column(state.column_names.index("instrument"), state.schema.field("instrument"), bad)


TAMPERING = {
    # wrong types: each raised outside latest()'s try on 3de1c82 (or was used as is)
    "offset_is_a_string": lambda s: ({"offset": "200"}, None),
    "partition_is_a_string": lambda s: ({"partition": "0"}, None),
    "rows_is_null": lambda s: ({"rows": None}, None),
    "bytes_is_a_bool": lambda s: ({"bytes": True}, None),
    "feature_spec_is_a_list": lambda s: ({"feature_spec": [1, 2]}, None),
    "offset_negative": lambda s: ({"offset": -5}, None),
    "created_at_not_finite": lambda s: ({"created_at": 1e999}, None),
    "extra_field": lambda s: ({"extra": 1}, None),
    # where it claims to belong
    "topic_of_another_directory": lambda s: ({"topic": "other"}, None),
    "partition_of_another_directory": lambda s: ({"partition": 7}, None),
    "data_outside_the_store": lambda s: ({"data": "../../outside.arrow"}, None),
    "data_of_another_checkpoint": lambda s: ({}, None),  # set below: the older checkpoint's data file
    # rows inconsistent with the manifest
    "rows_newer_than_the_offset": lambda s: ({}, _with_last_offset(s, 250)),
    "nan_in_the_state": lambda s: ({}, _with_nan_state(s)),
    "watermark_not_a_number": lambda s: ({}, _with_meta(s, **{"tickcast.watermark_ns": "soon"})),
    "layers_not_the_manifests": lambda s: ({}, _with_meta(s, layers="7")),
    # bytes that read as Arrow but break its invariants (found by the hypothesis test below, as a crash)
    "instrument_offsets_past_the_data": lambda s: ({}, _with_names_past_their_data(s)),
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_manifest_is_trusted_only_after_every_field_is_checked(root, state, how):
    store = CheckpointStore(root)
    _write(store, state, 100)
    _write(store, state, 200)
    fields, table = TAMPERING[how](state)
    if how == "data_outside_the_store":  # a perfectly valid data file, but outside the partition's folder
        _put(store, f"{store.root}/outside.arrow", _get(store, _newest(store, ".arrow")))
    if how == "data_of_another_checkpoint":  # offset 200 claiming the rows of offset 100, checksum and all
        older = _ls(store, ".arrow")[0]
        body = _get(store, older)
        fields = {"data": older.rsplit("/", 1)[1], "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    _resign(store, _newest(store, ".json"), _ipc(table) if table is not None else None, **fields)
    problems: list[Problem] = []
    got = store.latest("ticks", 0, max_offset=1000, problems=problems)
    assert got is not None and got.manifest.offset == 100, "the tampered checkpoint was used"
    assert len(problems) == 1 and problems[0].path == _newest(store, ".json")


# -- two writers on one partition (a rebalance) ---------------------------------------------------------
def test_two_writers_interleaved_between_data_and_manifest(root, state, bundle):
    """A's data lands, B writes a whole checkpoint, then A's manifest: both are complete, neither file was
    overwritten, and the reader takes the newest offset, whoever wrote it."""
    a, b = CheckpointStore(root), CheckpointStore(root)
    other = Forecaster(bundle)
    other.step(generate_ticks(7, 300, seed=9, bad_fraction=0.0))
    b_state = other.export_partition(0)
    real_put = a._put
    held: list = []
    a._put = lambda path, data: held.append((path, data)) if path.endswith(".json") else real_put(path, data)
    m_a = _write(a, state, 300)  # data written, manifest held back
    assert a.latest("ticks", 0) is None  # data without a manifest is not a checkpoint
    m_b = _write(b, b_state, 200)
    assert b.latest("ticks", 0).manifest == m_b
    real_put(*held[0])
    assert {p.rsplit("/", 1)[1] for p in _ls(a, ".json")} == {f"{m_a.name}.json", f"{m_b.name}.json"}
    got = b.latest("ticks", 0)
    assert got.manifest == m_a and got.state.equals(state)
    assert b.latest("ticks", 0, max_offset=299).state.equals(b_state)


def test_two_writers_racing_with_pruning_never_give_a_torn_checkpoint(root, state):
    """Two members write and prune (keep=1) the same partition concurrently while a third reads: every
    checkpoint a reader gets is complete and holds exactly the rows written for its offset."""
    states = {off: _with_last_offset(state, off - 1) for off in range(10, 250, 10)}
    writers = [CheckpointStore(root, keep=1), CheckpointStore(root, keep=1)]
    reader = CheckpointStore(root)
    errors: list = []
    done = threading.Event()

    def write(store, offsets):
        try:
            for off in offsets:
                _write(store, states[off], off)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    seen: list = []
    unavailable: list = []

    def read():
        while not done.is_set():
            try:
                got = reader.latest("ticks", 0)
            except StoreUnavailable:  # the endpoint failed a request (moto, reading an object being deleted):
                unavailable.append(1)  # the runtime retries these; so does this reader
                continue
            except BaseException as exc:  # noqa: BLE001 - reported below, instead of a silently dead reader
                errors.append(exc)
                return
            if got is not None:
                seen.append(got.manifest.offset)
                if not got.state.equals(states[got.manifest.offset]):
                    errors.append(AssertionError(f"offset {got.manifest.offset}: other rows"))

    offsets = sorted(states)
    threads = [threading.Thread(target=write, args=(writers[0], offsets[0::2])),
               threading.Thread(target=write, args=(writers[1], offsets[1::2]))]
    r = threading.Thread(target=read)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join()
    assert not errors, errors
    assert seen, "the reader never saw a checkpoint; the race was not exercised"
    final = reader.latest("ticks", 0)
    assert final is not None and final.manifest.offset in (offsets[-1], offsets[-2])
    assert final.state.equals(states[final.manifest.offset])


# -- paths derived from checkpoint_uri --------------------------------------------------------------------
def test_paths_join_on_the_uri_path_and_keep_the_query():
    assert join_uri("s3://b/p?region=x", "g") == "s3://b/p/g?region=x"
    assert join_uri("s3://K:S@b/p/?endpoint_override=h:9000&scheme=http", "g", "t") == \
        "s3://K:S@b/p/g/t?endpoint_override=h:9000&scheme=http"
    assert join_uri("s3://b", "g") == "s3://b/g"
    assert join_uri("/var/lib/x", "g") == "/var/lib/x/g"


def test_runner_store_on_s3_with_endpoint_in_the_query(s3_server, bundle, state):  # noqa: F811
    """The store tickcast run builds from checkpoint_uri + group_id writes under bucket/prefix/group (on
    3de1c82 the group id was appended to the query string and every write failed)."""
    from pipeline.config import RunConfig
    from pipeline.live.runner import Runner
    from pipeline.metrics import Metrics

    uri = s3_server.bucket("deploy-a")
    cfg = RunConfig.load(env={}, flags={"model": "m", "checkpoint_uri": uri, "group_id": "g1"})
    runner = Runner(cfg, bundle, Metrics())
    m = _write(runner.store, state, 42)
    bucket = uri.split("@", 1)[1].split("/", 1)[0]
    keys = [i.path for i in s3_server.filesystem().get_file_info(pafs.FileSelector(bucket, recursive=True))
            if i.type == pafs.FileType.File]
    assert sorted(keys) == sorted(f"{bucket}/deploy-a/g1/ticks/0/{m.name}{ext}" for ext in (".arrow", ".json"))


def test_group_id_is_one_safe_path_segment(tmp_path, state):
    base = tmp_path / "ckpt"
    for group in ("../../escape", "..", "a/b", "", "x" * 300, "ünï cødé"):
        store = group_store(str(base), group)
        _write(store, state, 1)
        assert os.path.dirname(store.root) == str(base), group
    assert path_segment("a/b") != path_segment("a_b")  # sanitised names cannot collide with real ones
    assert path_segment("tickcast-prod.eu_1") == "tickcast-prod.eu_1"  # ordinary names are kept as they are
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_credentials_in_the_uri_never_reach_messages_or_config_output():
    from pipeline.config import RunConfig

    uri = "s3://AKIAEXAMPLE:wJalrSECRET@bucket/prefix?region=eu-west-1&endpoint_override=h:9000"
    assert redact_uri(uri) == "s3://***@bucket/prefix?region=eu-west-1&endpoint_override=h:9000"
    assert "SECRET" not in redact_uri("gs://b/p?access_token=tokSECRET")
    cfg = RunConfig.load(env={}, flags={"model": "m", "checkpoint_uri": uri})
    shown = json.dumps(cfg.redacted())
    assert "wJalrSECRET" not in shown and "AKIAEXAMPLE" not in shown and "bucket/prefix" in shown
    with pytest.raises(CheckpointError) as err:
        CheckpointStore("nosuchscheme://AKIAEXAMPLE:wJalrSECRET@b/x")
    assert "wJalrSECRET" not in str(err.value) and "nosuchscheme" in str(err.value)
    assert "wJalrSECRET" not in repr(CheckpointStore(uri))


def test_bad_keep_is_a_one_line_error():
    with pytest.raises(CheckpointError, match="checkpoint_keep"):
        CheckpointStore("/tmp/x", keep=0)


def test_check_writable(root, tmp_path):
    how = CheckpointStore(root).check_writable()
    assert ("probe was written" in how) if root.startswith("s3://") else ("can be created under" in how)
    assert not _ls(CheckpointStore(root), "")  # nothing left behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="not a writable directory"):
        CheckpointStore(str(blocker / "ckpt")).check_writable()


def test_check_writable_on_an_unreachable_endpoint_says_so(s3_server):  # noqa: F811
    from tests.support.s3 import start_s3_server

    other = start_s3_server()
    uri = other.bucket()
    other.stop()
    with pytest.raises(CheckpointError, match="cannot write to checkpoint store s3://\\*\\*\\*@"):
        CheckpointStore(uri).check_writable()


def test_config_check_says_in_one_line_whether_it_can_write(s3_server, tmp_path, capsys):  # noqa: F811
    from pipeline.cli import main
    from tests.support.s3 import SECRET_KEY, start_s3_server

    def check(uri: str) -> tuple[int, list[str], str]:
        cfg = tmp_path / "tickcast.toml"
        cfg.write_text(f'model = "m"\ncheckpoint_uri = "{uri}"\n')
        code = main(["config", "check", str(cfg), "--ignore-env"])
        out = capsys.readouterr().out
        return code, [ln for ln in out.splitlines() if ln.startswith("checkpoint store:")], out

    code, lines, out = check(s3_server.bucket())
    assert code == 0 and len(lines) == 1 and lines[0].startswith("checkpoint store: writable: s3://***@"), out
    assert SECRET_KEY not in out
    other = start_s3_server()
    gone = other.bucket()
    other.stop()
    code, lines, out = check(gone)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("checkpoint store: NOT writable:"), out
    assert SECRET_KEY not in out


# -- local durability ---------------------------------------------------------------------------------------
def test_local_files_are_fsynced_with_their_directory_and_private(tmp_path, state, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _write(store, state, 10)
    assert synced == ["file", "dir", "file", "dir"]  # data, its rename, manifest, its rename
    folder = tmp_path / "ckpt" / "ticks" / "0"
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {oct(0o600)}
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)


def test_store_under_a_regular_file_fails_cleanly_then_recovers(tmp_path, state):
    blocker = tmp_path / "store"
    blocker.write_text("not a directory")
    store = CheckpointStore(str(blocker / "ckpt"))
    with pytest.raises(CheckpointError, match="cannot write checkpoint of ticks/0"):
        _write(store, state, 10)
    blocker.unlink()
    _write(store, state, 20)
    assert store.latest("ticks", 0).manifest.offset == 20


class FailingWrites(pafs.FileSystemHandler):
    """The local filesystem, except that writes fail while ``failing`` is set (a full or broken store)."""

    def __init__(self):
        self.fs = pafs.LocalFileSystem()
        self.failing = False

    def _check(self):
        if self.failing:
            raise OSError(28, "No space left on device")

    def get_type_name(self): return "failing-local"
    def normalize_path(self, path): return path
    def equals(self, other): return self is other
    def get_file_info(self, paths): return self.fs.get_file_info(paths)
    def get_file_info_selector(self, selector): return self.fs.get_file_info(selector)
    def create_dir(self, path, recursive): self.fs.create_dir(path, recursive=recursive)
    def delete_dir(self, path): self.fs.delete_dir(path)
    def delete_dir_contents(self, path, missing_dir_ok=False): self.fs.delete_dir_contents(path, missing_dir_ok)
    def delete_root_dir_contents(self): raise OSError("refused")
    def delete_file(self, path): self.fs.delete_file(path)
    def move(self, src, dest): self._check(); self.fs.move(src, dest)
    def copy_file(self, src, dest): self._check(); self.fs.copy_file(src, dest)
    def open_input_stream(self, path): return self.fs.open_input_stream(path)
    def open_input_file(self, path): return self.fs.open_input_file(path)
    def open_append_stream(self, path, metadata): self._check(); return self.fs.open_append_stream(path)

    def open_output_stream(self, path, metadata):
        self._check()
        return self.fs.open_output_stream(path)


def test_failing_filesystem_never_corrupts_the_last_good_checkpoint(tmp_path, state):
    handler = FailingWrites()
    store = CheckpointStore(str(tmp_path), filesystem=pafs.PyFileSystem(handler))
    _write(store, state, 100)
    handler.failing = True
    with pytest.raises(CheckpointError, match="No space left"):
        _write(store, state, 200)
    handler.failing = False
    assert store.latest("ticks", 0).manifest.offset == 100
    _write(store, state, 300)
    assert store.latest("ticks", 0).manifest.offset == 300


class UnreadableStore(FailingWrites):
    """Listing works, reading fails as a network error would (not a missing file)."""

    def open_input_stream(self, path):
        raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation")

    def open_input_file(self, path):
        raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation")


def test_a_store_that_cannot_be_read_is_unavailable_not_corrupt(tmp_path, state):
    store = CheckpointStore(str(tmp_path), filesystem=pafs.PyFileSystem(UnreadableStore()))
    _write(store, state, 100)
    problems: list[Problem] = []
    with pytest.raises(StoreUnavailable, match="NETWORK_CONNECTION"):
        store.latest("ticks", 0, problems=problems)
    assert problems == []  # nothing was written off as corrupt because the network was down


# -- whatever the bytes: latest() returns a valid checkpoint or None, and never raises ------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=8)
_FIELDS = ["format", "topic", "partition", "offset", "rows", "model_version", "feature_spec", "layers", "hidden",
           "created_at", "data", "bytes", "sha256", "others"]  # others: format 2's list of the other models
_manifest_edits = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(_FIELDS), _json),
    st.tuples(st.just("drop"), st.sampled_from(_FIELDS), st.none()),
    st.tuples(st.just("raw"), st.just(""), st.binary(max_size=200)),
)
_data_edits = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("meta"), st.sampled_from(["layers", "hidden", "tickcast.watermark_ns",
                                                "tickcast.last_sweep_ns"]), st.text(max_size=25)),
    st.tuples(st.just("value"), st.sampled_from(["h0", "c0", "last_price", "last_offset", "last_ts"]),
              st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 2**62, -1])),
)


def _apply_data_edit(body: bytes, state: pa.Table, edit) -> bytes:
    kind, a, b = edit
    if kind == "flip":
        raw = bytearray(body)
        raw[a % len(raw)] ^= b
        return bytes(raw)
    if kind == "truncate":
        return body[: a % len(body)]
    if kind == "meta":
        return _ipc(_with_meta(state, **{a: b}))
    col = state.column(a)
    if pa.types.is_fixed_size_list(col.type):
        flat = col.combine_chunks().flatten().to_numpy().copy()
        flat[0] = b if not math.isfinite(b) or abs(b) < 3e38 else math.inf  # what a float32 overflow gives
        new = pa.FixedSizeListArray.from_arrays(pa.array(flat), col.type.list_size)
    else:
        values = col.to_numpy().copy()
        values[0] = b if values.dtype.kind == "f" else int(min(max(b, -2**63), 2**63 - 1)) if math.isfinite(b) else 0
        new = pa.array(values, col.type)
    return _ipc(state.set_column(state.column_names.index(a), state.schema.field(a), new))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(manifest_edits=st.lists(_manifest_edits, max_size=3), data_edits=st.lists(_data_edits, max_size=2),
       resign=st.booleans())
def test_no_bytes_in_a_checkpoint_make_latest_raise_or_return_something_unusable(bundle, state, manifest_edits,
                                                                                 data_edits, resign):
    """The newest checkpoint's manifest JSON and data bytes are mutated arbitrarily (optionally re-signed
    so the checksum holds and the deeper checks are reached). latest() returns a checkpoint that imports
    into the operator, or None; it never raises."""
    from operators.state import StateTable

    good = _with_last_offset(state, 99)
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(tmp)
        _write(store, good, 100)
        _write(store, good, 200)
        manifest_path, data_path = _newest(store, ".json"), _newest(store, ".arrow")
        body = _get(store, data_path)
        for edit in data_edits:
            body = _apply_data_edit(body, good, edit) or body
        raw_manifest = json.loads(_get(store, manifest_path))
        if resign:
            raw_manifest.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        manifest_bytes = None
        for kind, name, value in manifest_edits:
            if kind == "set":
                raw_manifest[name] = value
            elif kind == "drop":
                raw_manifest.pop(name, None)
            else:
                manifest_bytes = value
        _put(store, data_path, body)
        _put(store, manifest_path, manifest_bytes if manifest_bytes is not None else
             json.dumps(raw_manifest, allow_nan=True).encode())
        table = StateTable(Forecaster(bundle).state.shape)
        got = store.latest("ticks", 0, max_offset=10**6, validate=lambda loaded: table.check_rows(loaded.state))
        assert got is not None, "the untouched older checkpoint must still be found"
        assert got.manifest.offset in (100, 200)
        fc = Forecaster(bundle)
        assert fc.import_partition(0, got.state) == good.num_rows
        for layer in range(bundle.shape.layers):
            assert np.isfinite(fc.state.h(layer)[: good.num_rows]).all()
        assert (got.state.column("last_offset").to_numpy() < got.manifest.offset).all()


# -- the runner's recovery decisions -----------------------------------------------------------------------
class FakeConsumer:
    """What Recovery.restore asks of the group's consumer, answered from fields."""

    def __init__(self, committed=None, log_start=0):
        self._committed, self.log_start = committed, log_start
        self.seeks: list = []
        self.committed_calls = 0

    def committed(self, tp, timeout_ms=None):
        self.committed_calls += 1
        return self._committed

    def beginning_offsets(self, tps):
        return {tp: self.log_start for tp in tps}

    def seek(self, tp, offset):
        self.seeks.append(offset)

    def seek_to_beginning(self, tp):
        self.seeks.append("beginning")

    def seek_to_end(self, tp):
        self.seeks.append("end")


def _runner(bundle, root, consumer, **flags):
    from prometheus_client import CollectorRegistry

    from pipeline.config import RunConfig
    from pipeline.live.runner import Runner
    from pipeline.metrics import Metrics

    cfg = RunConfig.load(env={}, flags={"model": "m", "checkpoint_uri": root, "group_id": "g", **flags})
    runner = Runner(cfg, bundle, Metrics(CollectorRegistry()))
    runner.conn.consumer = consumer
    runner.on_assigned([TP])
    return runner


def _load_failures(runner) -> float:
    return runner.metrics.registry.get_sample_value("tickcast_checkpoint_load_failures_total")


TP = TopicPartition("ticks", 0)


def test_empty_restore_forgets_where_the_old_state_stood(bundle, tmp_path):
    """Defect 9: the state was at offset 500, a rewind finds no checkpoint and no committed offset and
    starts from empty state: nothing may label a checkpoint 500 until records are stepped again."""
    from pipeline.live.partitions import Resume

    runner = _runner(bundle, str(tmp_path), FakeConsumer(committed=None))
    partition = runner.partitions.find(TP)
    partition.resume(Resume(400, checkpointed=400))
    partition.step(499)
    partition.settle(499)
    assert partition.snapshot() == 500
    runner.recovery.restore(TP)
    assert runner.partitions.find(TP).stepped_to is None
    assert runner.checkpointer.snapshots([TP]) == [], "a checkpoint would be labelled with an offset its state does not reflect"


def _bad_then_good(bundle, tmp_path, state):
    root = str(tmp_path / "ckpt")
    store = group_store(root, "g")
    spec = bundle.feature_spec.to_dict()
    store.write("ticks", 0, _with_last_offset(state, 99), 100, bundle.model_version, spec)
    store.write("ticks", 0, _with_last_offset(state, 199), 200, bundle.model_version, spec)
    return root, store


def test_a_wrong_typed_manifest_is_skipped_not_retried_forever(bundle, tmp_path, state):
    """On 3de1c82 a manifest with ``"offset": "200"`` raised outside latest()'s try: _restore_with_retry
    retried the same checkpoint until stopped. Now it is skipped, counted, and the older one restored."""
    root, store = _bad_then_good(bundle, tmp_path, state)
    _resign(store, _newest(store, ".json"), offset="200")
    runner = _runner(bundle, root, FakeConsumer(committed=300))
    waits = []
    runner.stop_event.wait = lambda s: (waits.append(s), len(waits) >= 3 and runner.stop_event.set())[0]
    assert runner.recovery.restore_with_retry([TP]) is True and waits == []
    assert runner.conn.consumer.seeks == [100] and runner.partitions.find(TP).replay_until == 300
    assert _load_failures(runner) == 1


def test_a_checkpoint_the_operator_cannot_import_is_skipped(bundle, tmp_path, state, monkeypatch):
    """Defence in depth: should the operator refuse rows the store's checks let through, the next older
    checkpoint is tried, once each, without a retry loop."""
    root, _ = _bad_then_good(bundle, tmp_path, state)
    runner = _runner(bundle, root, FakeConsumer(committed=300))
    real = runner.forecaster.import_partition
    calls = []

    def refuse_first(pid, table):
        calls.append(table.num_rows)
        if len(calls) == 1:
            raise KeyError(b"tickcast.watermark_ns")
        return real(pid, table)

    monkeypatch.setattr(runner.forecaster, "import_partition", refuse_first)
    assert runner.recovery.restore_with_retry([TP]) is True
    assert len(calls) == 2 and runner.conn.consumer.seeks == [100]
    assert _load_failures(runner) == 1


def test_store_trouble_is_retried_not_skipped(bundle, tmp_path, state, monkeypatch):
    root, _ = _bad_then_good(bundle, tmp_path, state)
    runner = _runner(bundle, root, FakeConsumer(committed=300))
    monkeypatch.setattr(runner.store, "latest", failing_first(
        2, runner.store.latest, StoreUnavailable("cannot list: AWS Error NETWORK_CONNECTION")))
    waits = []
    runner.stop_event.wait = waits.append
    assert runner.recovery.restore_with_retry([TP]) is True
    assert len(waits) == 2 and runner.conn.consumer.seeks == [200], "the newest checkpoint, once the store answered"
    assert _load_failures(runner) == 0


def test_checkpoint_older_than_the_log_start_replays_what_retention_left(bundle, tmp_path, state, caplog):
    """The newest checkpoint is at 200, retention deleted everything before 250, committed is 300: the
    checkpoint is restored, the replay starts at the log start (not at 200, which the broker no longer
    has), and a warning says how many records the state misses."""
    root, _ = _bad_then_good(bundle, tmp_path, state)
    runner = _runner(bundle, root, FakeConsumer(committed=300, log_start=250))
    runner.recovery.restore(TP)
    assert runner.conn.consumer.seeks == [250] and runner.partitions.find(TP).replay_until == 300
    assert runner.partitions.find(TP).checkpointed == 200 and runner.partitions.find(TP).stepped_to == 250
    warned = [r for r in caplog.records if "deleted by retention" in r.getMessage()]
    assert warned and warned[0].missing == 50


def test_checkpoint_behind_a_log_start_past_the_committed_offset(bundle, tmp_path, state):
    root, _ = _bad_then_good(bundle, tmp_path, state)
    runner = _runner(bundle, root, FakeConsumer(committed=300, log_start=400))
    runner.recovery.restore(TP)
    assert runner.conn.consumer.seeks == [300] and runner.partitions.find(TP).replay_until is None
