"""The checkpoint store on real files: atomic writes, verification, fallback, pruning, failing storage."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from operators.forecaster import Forecaster
from pipeline.checkpoint import CheckpointError, CheckpointStore, Problem
from pipeline.synthetic import generate_ticks


@pytest.fixture
def state(bundle) -> pa.Table:
    fc = Forecaster(bundle)
    fc.step(generate_ticks(20, 2_000, seed=5, bad_fraction=0.0))
    return fc.export_partition(0)


def _write(store, state, offset, topic="ticks", partition=0):
    return store.write(topic, partition, state, offset, "v1", {"features": ["a"]})


def test_roundtrip_keeps_rows_metadata_and_offset(tmp_path, state):
    store = CheckpointStore(str(tmp_path))
    m = _write(store, state, 1234)
    got = store.latest("ticks", 0)
    assert got.manifest == m and m.offset == 1234 and m.rows == state.num_rows == 20
    assert got.state.equals(state) and got.state.schema.metadata == state.schema.metadata


def test_file_uri_and_keep_last_k(tmp_path, state):
    store = CheckpointStore(f"file://{tmp_path}", keep=2)
    for off in (10, 20, 30, 40):
        _write(store, state, off)
    files = sorted(p.name for p in (tmp_path / "ticks" / "0").iterdir())
    assert len(files) == 4 and [f.split("-")[0] for f in files][::2] == ["0" * 18 + "30", "0" * 18 + "40"]
    assert store.latest("ticks", 0).manifest.offset == 40


def _newest(tmp_path, suffix):
    return sorted((tmp_path / "ticks" / "0").glob(f"*{suffix}"))[-1]


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete_data", "garbage_manifest"])
def test_damaged_latest_falls_back_to_previous(tmp_path, state, damage):
    store = CheckpointStore(str(tmp_path))
    _write(store, state, 100)
    _write(store, state, 200)
    data, manifest = _newest(tmp_path, ".arrow"), _newest(tmp_path, ".json")
    if damage == "corrupt":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "delete_data":
        data.unlink()
    else:
        manifest.write_text("{not json")
    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems)
    assert got.manifest.offset == 100 and got.state.equals(state)
    assert len(problems) == 1 and problems[0].path.endswith(manifest.name)


def test_data_without_manifest_is_ignored_and_max_offset_respected(tmp_path, state):
    store = CheckpointStore(str(tmp_path))
    _write(store, state, 100)
    _write(store, state, 300)
    _newest(tmp_path, ".json").unlink()  # a write that died between data and manifest
    assert store.latest("ticks", 0).manifest.offset == 100
    _write(store, state, 500)
    assert store.latest("ticks", 0, max_offset=499).manifest.offset == 100
    assert store.latest("ticks", 0, max_offset=99) is None
    assert store.latest("other", 3) is None


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


def test_inventory_lists_good_and_bad(tmp_path, state):
    store = CheckpointStore(str(tmp_path))
    _write(store, state, 1, partition=0)
    _write(store, state, 2, partition=1)
    manifest = _newest(tmp_path, ".json")
    body = json.loads(manifest.read_text())
    body["sha256"] = "0" * 64
    manifest.write_text(json.dumps(body))
    inv = store.inventory()
    assert [(m.partition if m else None, problem is None) for _, m, problem in inv] == [(None, False), (1, True)]
    assert "checksum" in inv[0][2]


def test_bad_uri_and_keep_are_one_line_errors():
    with pytest.raises(CheckpointError, match="checkpoint_keep"):
        CheckpointStore("/tmp/x", keep=0)
    with pytest.raises(CheckpointError, match="nosuchscheme"):
        CheckpointStore("nosuchscheme://bucket/x")


def test_tampered_checkpoint_with_a_valid_checksum_is_refused_not_used(tmp_path, bundle, bundle2, state):
    """Someone rewrites a checkpoint and its manifest consistently, but the rows do not fit the model:
    the schema check refuses it and recovery falls back to the older good one."""
    from operators.state import StateTable

    store = CheckpointStore(str(tmp_path))
    _write(store, state, 100)
    other = Forecaster(bundle2)
    other.step(generate_ticks(5, 300, seed=1, bad_fraction=0.0))
    _write(store, other.export_partition(0), 200)  # 2 layers: not this 1-layer model's state
    renamed = state.rename_columns([c if c != "h0" else "payload" for c in state.column_names])
    _write(store, renamed, 300)

    table = StateTable(Forecaster(bundle).state.shape)

    def check(loaded):
        table.check_rows(loaded.state)

    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems, validate=check)
    assert got.manifest.offset == 100
    assert len(problems) == 2 and all("do not match this model" in p.reason for p in problems)
