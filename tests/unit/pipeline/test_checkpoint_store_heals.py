"""The checkpoint store heals and can authenticate: a failed write leaves nothing behind (temporaries,
partial files, data without a manifest), a full disk works again once space returns (a filesystem that
fills, and a real small tmpfs), the writer refuses what restore would refuse, and with a key a manifest
whose HMAC does not verify is skipped as tampered."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from operators.forecaster import Forecaster
from pipeline import checkpoint as checkpoint_module
from pipeline.checkpoint import CheckpointError, CheckpointStore, Problem, group_store
from pipeline.checkpoint_format import MAC_FIELD
from pipeline.config import ConfigError, RunConfig
from pipeline.files.synthetic import generate_ticks

KEY = b"k" * 32
T2096_NS = 3_976_300_800_000_000_000  # 2096-01-01


@pytest.fixture
def state(bundle) -> pa.Table:
    fc = Forecaster(bundle)
    fc.step(generate_ticks(50, 3_000, seed=5, bad_fraction=0.0))
    return fc.export_partition(0)


def _write(store, state, offset):
    return store.write("ticks", 0, state, offset, "v1", {"features": ["a"]})


def _files(root: str) -> dict[str, int]:
    """Every file under ``root`` (relative path -> size)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = os.path.getsize(path)
    return out


# -- a filesystem that fills ----------------------------------------------------------------------------------
class _Filling:
    """A writable file object that stores bytes until the filesystem's capacity, then raises ENOSPC
    having written what fitted (a partial file, as a real disk leaves it)."""

    def __init__(self, fs: "FillingDisk", path: str):
        self.fs, self.path = fs, path
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        room = self.fs.capacity - self.fs.used()
        self.f.write(data[:max(room, 0)])
        self.f.flush()
        if len(data) > room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.f.close()
            self.closed = True

    def flush(self) -> None:
        self.f.flush()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.f.tell()


class FillingDisk(pafs.FileSystemHandler):
    """The local filesystem under ``root`` with a capacity in bytes: writes beyond it fail with ENOSPC."""

    def __init__(self, root: str, capacity: int):
        self.root, self.capacity = root, capacity
        self.fs = pafs.LocalFileSystem()

    def used(self) -> int:
        return sum(_files(self.root).values())

    def get_type_name(self): return "filling-local"
    def normalize_path(self, path): return path
    def equals(self, other): return self is other
    def get_file_info(self, paths): return self.fs.get_file_info(paths)
    def get_file_info_selector(self, selector): return self.fs.get_file_info(selector)
    def create_dir(self, path, recursive): self.fs.create_dir(path, recursive=recursive)
    def delete_dir(self, path): self.fs.delete_dir(path)
    def delete_dir_contents(self, path, missing_dir_ok=False): self.fs.delete_dir_contents(path, missing_dir_ok)
    def delete_root_dir_contents(self): raise OSError("refused")
    def delete_file(self, path): self.fs.delete_file(path)
    def move(self, src, dest): self.fs.move(src, dest)
    def copy_file(self, src, dest): self.fs.copy_file(src, dest)
    def open_input_stream(self, path): return self.fs.open_input_stream(path)
    def open_input_file(self, path): return self.fs.open_input_file(path)
    def open_append_stream(self, path, metadata): raise OSError("not used")

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_Filling(self, path), mode="w")


def test_a_full_filesystem_keeps_no_partial_file_and_recovers_when_space_returns(tmp_path, state):
    """The disk fills while a checkpoint is written: the write fails, what it wrote is gone (the disk holds
    exactly what it held before), and once space returns the next write succeeds without any other help."""
    root = str(tmp_path / "store")
    os.makedirs(root)
    disk = FillingDisk(root, capacity=10**9)
    store = CheckpointStore(root, filesystem=pafs.PyFileSystem(disk))
    _write(store, state, 100)
    one = disk.used()
    before = _files(root)
    disk.capacity = one + one // 2  # room for half a checkpoint more: the next data file is cut off
    with pytest.raises(CheckpointError, match="No space left"):
        _write(store, state, 200)
    assert _files(root) == before, "the failed write left files behind"
    with pytest.raises(CheckpointError, match="No space left"):  # still full: fails the same, still clean
        _write(store, state, 300)
    assert _files(root) == before
    disk.capacity = 2 * one + 4096  # space returns (another tenant deleted something)
    _write(store, state, 400)
    assert store.latest("ticks", 0).manifest.offset == 400


def test_a_manifest_that_cannot_be_written_takes_its_data_file_with_it(tmp_path, state):
    """Room for the data file, not for the manifest: the data file is deleted (nothing names it)."""
    root = str(tmp_path / "store")
    os.makedirs(root)
    disk = FillingDisk(root, capacity=10**9)
    store = CheckpointStore(root, filesystem=pafs.PyFileSystem(disk))
    _write(store, state, 100)
    before = _files(root)
    data_bytes = max(size for name, size in before.items() if name.endswith(".arrow"))
    disk.capacity = disk.used() + data_bytes + 10  # the data fits, its manifest does not
    with pytest.raises(CheckpointError, match="No space left"):
        _write(store, state, 200)
    assert _files(root) == before


class _ENOSPCAfter:
    """``os`` for pipeline.checkpoint, except that ``write`` fails with ENOSPC once ``limit`` bytes are
    written (having written what fitted): the local path's temporary file, fsync and rename."""

    def __init__(self, limit: int):
        self.limit, self.written = limit, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data) -> int:
        room = self.limit - self.written
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[:room]))
        self.written += n
        return n


def test_local_temporary_files_are_removed_when_the_disk_fills(tmp_path, state, monkeypatch):
    root = str(tmp_path / "store")
    store = CheckpointStore(root)
    _write(store, state, 100)
    before = _files(root)
    monkeypatch.setattr(checkpoint_module, "os", _ENOSPCAfter(limit=1000))
    with pytest.raises(CheckpointError, match="No space left"):
        _write(store, state, 200)
    assert _files(root) == before, "a .tmp- file (or a data file without manifest) stayed behind"
    monkeypatch.undo()
    _write(store, state, 300)
    assert store.latest("ticks", 0).manifest.offset == 300


def test_a_failed_write_also_prunes_the_leftovers_of_older_failures(tmp_path, state, monkeypatch):
    """Leftovers of a process killed mid-write are pruned by the next attempt, successful or not."""
    root = str(tmp_path / "store")
    store = CheckpointStore(root, orphan_age_s=0)
    _write(store, state, 100)
    folder = store._dir("ticks", 0)
    dead = f"{folder}/00000000000000000150-1-dead00.arrow.tmp-{uuid.uuid4().hex[:8]}"
    with open(dead, "wb") as f:
        f.write(b"x" * 5000)
    os.utime(dead, (1, 1))
    monkeypatch.setattr(checkpoint_module, "os", _ENOSPCAfter(limit=0))
    with pytest.raises(CheckpointError):
        _write(store, state, 200)
    monkeypatch.undo()
    assert not os.path.exists(dead)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 512 KiB tmpfs (root only; skipped, saying why, where mounting is not permitted)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield str(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_a_real_full_tmpfs_recovers_when_space_returns(small_tmpfs, state):
    root = os.path.join(small_tmpfs, "store")
    store = CheckpointStore(root)
    _write(store, state, 100)
    before = _files(root)
    filler = os.path.join(small_tmpfs, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # another writer fills the disk to the last byte
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(CheckpointError, match="No space left"):
        _write(store, state, 200)
    assert _files(root) == before, "the failed write left files behind on the full disk"
    os.unlink(filler)  # space returns
    _write(store, state, 300)
    assert store.latest("ticks", 0).manifest.offset == 300


# -- the writer applies the reader's checks -------------------------------------------------------------------
def _with_nan_h0(state: pa.Table) -> pa.Table:
    i = state.column_names.index("h0")
    flat = state.column("h0").combine_chunks().flatten().to_numpy().copy()
    flat[3] = np.nan
    width = state.schema.field("h0").type.list_size
    return state.set_column(i, state.schema.field("h0"), pa.FixedSizeListArray.from_arrays(pa.array(flat), width))


@pytest.mark.parametrize("bad", ["nan_in_h0", "rows_past_the_offset"])
def test_the_writer_refuses_what_restore_would_refuse(tmp_path, state, bad):
    store = CheckpointStore(str(tmp_path / "store"))
    _write(store, state, 10_000)
    if bad == "nan_in_h0":
        table, offset, why = _with_nan_h0(state), 20_000, "NaN"
    else:  # rows that saw offsets the checkpoint claims not to reflect
        i = state.column_names.index("last_offset")
        table = state.set_column(i, "last_offset", pa.array(np.full(state.num_rows, 25_000, dtype=np.int64)))
        offset, why = 20_000, "last_offset"
    with pytest.raises(CheckpointError, match=why):
        _write(store, table, offset)
    assert store.latest("ticks", 0).manifest.offset == 10_000  # nothing unusable was written over it
    assert all(problem is None for _, _, problem in store.inventory())


# -- authenticated checkpoints --------------------------------------------------------------------------------
def _forge_last_ts(store, manifest_path: str, ts_ns: int) -> None:
    """Rewrite the data file with every row's last_ts moved, and the manifest's size and SHA-256 with it
    (the MAC, if any, left as it was: the forger has no key)."""
    with store.fs.open_input_stream(manifest_path) as f:
        raw = json.loads(f.read())
    data_path = f"{manifest_path.rsplit('/', 1)[0]}/{raw['data']}"
    with store.fs.open_input_file(data_path) as f:
        table = pa.ipc.open_file(f).read_all()
    i = table.column_names.index("last_ts")
    table = table.set_column(i, "last_ts", pa.array(np.full(table.num_rows, ts_ns, dtype=np.int64)))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    body = sink.getvalue().to_pybytes()
    with store.fs.open_output_stream(data_path) as f:
        f.write(body)
    raw.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    with store.fs.open_output_stream(manifest_path) as f:
        f.write(json.dumps(raw).encode())


def _newest_manifest(store) -> str:
    infos = store.fs.get_file_info(pafs.FileSelector(store._dir("ticks", 0)))
    return sorted(i.path for i in infos if i.base_name.endswith(".json"))[-1]


def test_with_a_key_a_rewritten_last_ts_with_a_recomputed_hash_is_refused_as_tampered(tmp_path, state):
    root = str(tmp_path / "store")
    store = CheckpointStore(root, key=KEY)
    _write(store, state, 100)
    _write(store, state, 200)
    _forge_last_ts(store, _newest_manifest(store), T2096_NS)
    problems: list[Problem] = []
    got = store.latest("ticks", 0, problems=problems)
    assert got.manifest.offset == 100  # the older, untouched checkpoint
    assert len(problems) == 1 and "MAC does not verify" in problems[0].reason
    assert int(np.max(got.state.column("last_ts").to_numpy())) < T2096_NS


def test_without_a_key_the_hash_detects_corruption_only(tmp_path, state):
    """What the README says: with no key, a consistent rewrite (size and hash recomputed) is accepted."""
    store = CheckpointStore(str(tmp_path / "store"))
    _write(store, state, 100)
    _forge_last_ts(store, _newest_manifest(store), T2096_NS)
    assert int(np.max(store.latest("ticks", 0).state.column("last_ts").to_numpy())) == T2096_NS


def test_with_a_key_unsigned_and_other_keys_checkpoints_are_refused(tmp_path, state):
    root = str(tmp_path / "store")
    _write(CheckpointStore(root), state, 100)  # unsigned
    _write(CheckpointStore(root, key=b"another key, 32 bytes long......"), state, 200)
    problems: list[Problem] = []
    assert CheckpointStore(root, key=KEY).latest("ticks", 0, problems=problems) is None
    assert [("no MAC" in p.reason, "does not verify" in p.reason) for p in problems] == [(False, True), (True, False)]
    signed = CheckpointStore(root, key=KEY)
    _write(signed, state, 300)
    assert signed.latest("ticks", 0).manifest.offset == 300
    assert CheckpointStore(root).latest("ticks", 0).manifest.offset == 300  # a keyless reader ignores the MAC
    with signed.fs.open_input_stream(_newest_manifest(signed)) as f:
        assert len(json.loads(f.read())[MAC_FIELD]) == 64


def test_the_key_comes_from_a_file_named_in_the_environment(tmp_path, bundle):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    cfg = RunConfig.load(env={"TICKCAST_MODEL": "m", "TICKCAST_CHECKPOINT_KEY_FILE": str(key_file)})
    assert cfg.checkpoint_key() == KEY
    assert group_store(str(tmp_path / "s"), "g", key=cfg.checkpoint_key()).key == KEY
    key_file.write_bytes(b"short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        RunConfig.load(env={"TICKCAST_MODEL": "m", "TICKCAST_CHECKPOINT_KEY_FILE": str(key_file)})
    with pytest.raises(ConfigError, match="cannot be read"):
        RunConfig.load(env={"TICKCAST_MODEL": "m", "TICKCAST_CHECKPOINT_KEY_FILE": str(tmp_path / "none")})
