"""Checkpoints of per-partition operator state, through pyarrow.fs.

A checkpoint of one input partition is, in ``ROOT/<topic>/<partition>/``:

- ``<offset:020d>-<created_ns>-<writer>.arrow``: the partition's state rows of
  the primary model (Arrow IPC file, as
  :meth:`operators.forecaster.Forecaster.export_partition` gives them);
- ``<offset:020d>-<created_ns>-<writer>.<k>.arrow``, k = 1, 2, ...: the state
  rows of each other model (candidates) stepped over the same records, when
  the run has any;
- ``<offset:020d>-<created_ns>-<writer>.json``: the manifest, written *last*:
  the input offset every model's state reflects (the next offset to read),
  the creation time, and per model its version, feature spec, state shape,
  row count, byte size and SHA-256 of its data file
  (:mod:`pipeline.checkpoint_format`: format 1 for one model, 2 for several).

So every model's state in one checkpoint is at the same offset, and a model
promoted from candidate to primary finds its own state there.

The API:

- ``store.write(topic, partition, state, offset, model_version, feature_spec) -> Manifest``: one model (a
  format-1 checkpoint, as before);
- ``store.write_models(topic, partition, models: Sequence[ModelState], offset) -> Manifest``: several, the
  first the primary; ``ModelState(model_version, state, feature_spec)``; distinct versions;
- ``store.latest(topic, partition, max_offset=None, ...) -> Loaded | None``: ``loaded.state`` and
  ``loaded.manifest.model_version`` / ``.rows`` / ... are the primary's (as before); ``loaded.states`` maps
  every model version to its table, ``loaded.manifest.models`` lists every model's :class:`ModelEntry`,
  the primary first; ``loaded.manifest.model(version)`` finds one.

``ROOT`` is a local directory or any URI pyarrow.fs understands (``s3://``,
``gs://``, ``hdfs://``, ``file://``). Paths below it are joined on the URI's
*path* (:func:`join_uri`), so query options such as
``s3://bucket/prefix?endpoint_override=host:9000&scheme=http&region=r`` and
credentials in the user info survive; URIs are redacted (:func:`redact_uri`)
wherever they are shown. Credentials may also come from the environment as
pyarrow's filesystems read them.

What makes a checkpoint valid, on a local disk and on an object store alike:

- On a local disk every file is written to a temporary name with mode 0600,
  fsynced, renamed into place, and the directory fsynced: a crash never leaves a
  half-written file under a final name, and a manifest that survived a power
  cut has its data beside it.
- An object store has no atomic rename (pyarrow's ``move`` on S3 is copy +
  delete) and its listing may lag behind its writes. So nothing relies on
  rename or on the listing: files are written under their final names (an
  object appears whole or not at all; where a store shows partial files, a
  torn one fails its checks), the data file first and the manifest last, and
  the manifest carries the data's size and SHA-256. A checkpoint
  *is* its manifest: a data file without one is ignored (and pruned once it is
  older than ``orphan_age_s``), and a listed manifest is trusted only after the
  data it names has been read back with that size and checksum, and every
  manifest field has been checked
  (:func:`pipeline.checkpoint_format.check_manifest`): types; topic and
  partition equal to the directory it sits in; the data a plain file name
  beside it; every row's ``last_offset`` below the manifest's offset; finite
  state; schema metadata that import can use. A checkpoint that fails any
  check is reported and the next older one is tried; nothing read from the
  store can make :meth:`CheckpointStore.latest` raise or loop.
- Every check applies to every model's data file: a checkpoint one of whose
  files is missing, torn or fails a check is unusable as a whole (its models'
  states are only consistent together). Pruning deletes a manifest before
  all its data files.
- Two members may briefly both write one partition during a rebalance (the
  old owner's revoke checkpoint, or a member that lost the group but does not
  know it yet). Each writer's names are unique (creation time plus a random
  writer id), so the two never overwrite each other's files, and each
  checkpoint is complete and self-checking on its own. The operator is
  deterministic, so any valid checkpoint labelled with offset X holds the state
  of the partition's records before X, whoever wrote it; the reader takes the
  newest offset not past the group's committed offset. Pruning by either
  writer keeps the ``keep`` newest, deleting a manifest before its data, so a
  reader racing a prune finds a complete checkpoint or a missing one (skipped),
  never a torn one.

Errors: :class:`CheckpointError` when the store cannot be opened or written;
:class:`StoreUnavailable` (a subclass) when it cannot be *read* for reasons
that are not the checkpoint's (network, permissions): callers retry those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from operators.errors import TickcastError
from pipeline.checkpoint_format import (FORMAT, FORMAT_SEVERAL, MAC_FIELD, MIN_KEY_BYTES, Manifest, ModelEntry,
                                        authenticate, check_manifest, check_state, checkpoint_stem, data_name,
                                        join_uri, manifest_mac, path_segment, redact_uri, scrub_uri)

log = logging.getLogger(__name__)

# Data errors a checkpoint's bytes can provoke while being read or checked: each means "skip it".
DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, pa.ArrowException)


class CheckpointError(TickcastError):
    """A checkpoint store cannot be opened, or a checkpoint cannot be written."""


class StoreUnavailable(CheckpointError):
    """The store could not be read (network, permissions): not the checkpoint's fault; retry later."""


# -- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelState:
    """One model's state rows of a partition, to be checkpointed (:meth:`CheckpointStore.write_models`)."""

    model_version: str
    state: pa.Table
    feature_spec: dict


@dataclass(frozen=True)
class Loaded:
    """A verified checkpoint: ``state`` is the primary's rows; ``states`` every model's, by model version."""

    manifest: Manifest
    state: pa.Table
    path: str = ""  # the manifest's path in the store
    states: dict[str, pa.Table] = field(default_factory=dict)

    def __post_init__(self):
        if not self.states:
            object.__setattr__(self, "states", {self.manifest.model_version: self.state})


@dataclass(frozen=True)
class Problem:
    """A checkpoint that could not be used, and why."""

    path: str
    reason: str




def group_store(checkpoint_uri: str, group_id: str, keep: int = 3, key: bytes | None = None) -> "CheckpointStore":
    """The store of one consumer group: ``<checkpoint_uri>/<group segment>``, joined on the URI's path."""
    return CheckpointStore(join_uri(checkpoint_uri, path_segment(group_id)), keep, key=key)


class CheckpointStore:
    def __init__(self, uri: str, keep: int = 3, filesystem: pafs.FileSystem | None = None,
                 orphan_age_s: float = 60.0, key: bytes | None = None):
        if keep < 1:
            raise CheckpointError(f"checkpoint_keep must be >= 1, got {keep}")
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise CheckpointError(f"checkpoint key is {len(key)} bytes; give at least {MIN_KEY_BYTES}")
        self.key = key  # HMAC-SHA256 key: manifests are signed, and unsigned or mis-signed ones are refused
        self.uri = uri
        self.keep = keep
        self.orphan_age_s = orphan_age_s  # data files without a manifest older than this are a dead write
        self._writer_id = uuid.uuid4().hex[:6]
        if filesystem is not None:
            self.fs, self.root = filesystem, uri.rstrip("/")
        elif "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
                raise CheckpointError(f"checkpoint store {redact_uri(uri)}: {scrub_uri(str(exc), uri)}") from None
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).absolute())
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"CheckpointStore({redact_uri(self.uri)!r})"

    # -- paths ----------------------------------------------------------------------------
    def _dir(self, topic: str, partition: int) -> str:
        return f"{self.root}/{path_segment(topic)}/{partition}"

    # -- writing ----------------------------------------------------------------------------
    def write(self, topic: str, partition: int, state: pa.Table, offset: int, model_version: str,
              feature_spec: dict) -> Manifest:
        """Write one model's checkpoint of a partition: :meth:`write_models` with that model alone."""
        return self.write_models(topic, partition, [ModelState(model_version, state, feature_spec)], offset)

    def write_models(self, topic: str, partition: int, models: Sequence[ModelState], offset: int) -> Manifest:
        """Write one partition's checkpoint of every model in ``models`` (the first is the primary) at ``offset``:
        every data file, then the manifest that names them all; then prune old ones. Raises CheckpointError.

        What is written passes the checks :meth:`load` applies first (a checkpoint restore would refuse is
        never written: a NaN in any model's state, two models of one version). A failed write removes what
        it wrote (its temporaries, and its data files when the manifest did not follow) and prunes the
        leftovers of older failures, so a store that ran out of space holds no more than before the attempt
        and works again once space returns."""
        created = time.time_ns()
        name = f"{offset:020d}-{created}-{self._writer_id}"
        folder = self._dir(topic, partition)
        manifest_path = f"{folder}/{name}.json"
        bodies: list[pa.Buffer] = []
        try:
            if not models:
                raise ValueError("no model's state given")
            entries = []
            for k, model in enumerate(models):
                sink = pa.BufferOutputStream()
                with ipc.new_file(sink, model.state.schema) as writer:
                    writer.write_table(model.state)
                bodies.append(sink.getvalue())
                meta = model.state.schema.metadata or {}
                entries.append(ModelEntry(model.model_version, model.feature_spec, int(meta.get(b"layers", 0)),
                                          int(meta.get(b"hidden", 0)), model.state.num_rows, data_name(name, k),
                                          bodies[-1].size, hashlib.sha256(bodies[-1]).hexdigest()))
            p = entries[0]
            manifest = Manifest(FORMAT if len(entries) == 1 else FORMAT_SEVERAL, topic, partition, int(offset),
                                p.rows, p.model_version, p.feature_spec, p.layers, p.hidden, created / 1e9, p.data,
                                p.bytes, p.sha256, tuple(entries[1:]))
            raw = manifest.to_json()
            check_manifest(raw, manifest_path)  # the reader's checks, before anything is written
            for model, entry in zip(models, manifest.models):
                check_state(model.state, manifest, entry)
        except (*DATA_ERRORS, OSError) as exc:
            raise CheckpointError(f"refusing to write a checkpoint of {topic}/{partition} that restore would "
                                  f"refuse: {exc}") from None
        if self.key is not None:
            raw[MAC_FIELD] = manifest_mac(self.key, raw)
        written: list[str] = []
        try:
            self._mkdir(folder)
            for entry, body in zip(manifest.models, bodies):
                self._put(f"{folder}/{entry.data}", body)
                written.append(f"{folder}/{entry.data}")
            self._put(manifest_path, json.dumps(raw, sort_keys=True).encode())
        except (OSError, pa.ArrowException) as exc:
            for path in written:  # no manifest: the data files would only take space
                self._delete_quietly(path)
            self._prune(folder)
            raise CheckpointError(f"cannot write checkpoint of {topic}/{partition} to {folder}: {exc}") from None
        self._prune(folder)
        return manifest

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (OSError, pa.ArrowException):  # gone already, or the store is down: pruned later as an orphan
            pass

    def _mkdir(self, folder: str) -> None:
        if self._local:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        else:
            self.fs.create_dir(folder, recursive=True)

    def _put(self, path: str, data) -> None:
        """Write ``path`` whole or not at all; a failed write leaves nothing behind that it created."""
        if self._local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            # Bypass pyarrow locally: it neither fsyncs nor sets modes. 0600: state is the user's data.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                try:  # ENOSPC, EIO, ...: the partial temporary would keep the disk full
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a power cut
            finally:
                os.close(dir_fd)
            return
        # Elsewhere no temporary + move: on an object store that is a second full copy and buys nothing,
        # since the manifest, not a rename, makes a checkpoint valid.
        try:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
        except BaseException:
            self._delete_quietly(path)  # a filesystem that shows partial files: never leave one
            raise

    def _prune(self, folder: str) -> None:
        try:
            files = [i for i in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                     if i.type == pafs.FileType.File]
            manifests = sorted(i.path for i in files if i.base_name.endswith(".json"))
            stale = manifests[: max(0, len(manifests) - self.keep)]
            for path in stale:  # manifest first: never a manifest without its data
                self._delete_missing_ok(path)
            # Then every data file of those checkpoints: the primary's by name (a lagging listing may not show
            # it yet), the others' as listed (any the listing missed are deleted later as orphans).
            stale_stems = {checkpoint_stem(p.rsplit("/", 1)[1]) for p in stale}
            data = {f"{p[: -len('.json')]}.arrow" for p in stale} | {
                i.path for i in files if i.base_name.endswith(".arrow") and checkpoint_stem(i.base_name) in stale_stems}
            for path in sorted(data):
                self._delete_missing_ok(path)
            # Leftovers of writes that died: temporaries, and data files whose manifest never came (or
            # whose manifest a prune deleted just before dying), once older than orphan_age_s.
            cutoff = time.time() - self.orphan_age_s
            kept = {checkpoint_stem(p.rsplit("/", 1)[1]) for p in manifests} - stale_stems
            for info in files:
                if info.mtime is None or info.mtime.timestamp() > cutoff:
                    continue
                name = info.base_name
                orphan = name.endswith(".arrow") and checkpoint_stem(name) not in kept | stale_stems
                if ".tmp-" in name or orphan:
                    self._delete_missing_ok(info.path)
        except (OSError, pa.ArrowException) as exc:
            log.warning("pruning old checkpoints failed", extra={"folder": folder, "error": str(exc)})

    def _delete_missing_ok(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def check_writable(self) -> str:
        """Write, read back and delete a small probe under the root; CheckpointError saying why not.

        A local root that does not exist yet is not created (a check leaves nothing behind): its nearest
        existing parent must be a writable directory. Returns a few words on what was checked."""
        probe = f"{self.root}/.tickcast-probe-{uuid.uuid4().hex[:12]}"
        body = b"tickcast checkpoint store probe\n"
        if self._local and not os.path.isdir(self.root):
            parent = Path(self.root)
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise CheckpointError(f"cannot write to checkpoint store {self.root}: {parent} is not a writable "
                                      "directory")
            return f"can be created under {parent}"
        try:
            self._mkdir(self.root)
            self._put(probe, body)
            with self.fs.open_input_stream(probe) as f:
                if f.read() != body:
                    raise OSError("the probe read back differs from what was written")
            self.fs.delete_file(probe)
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointError(f"cannot write to checkpoint store {redact_uri(self.uri)}: "
                                  f"{scrub_uri(str(exc), self.uri)}") from None
        return "a probe was written, read back and deleted"

    # -- reading ----------------------------------------------------------------------------
    def _manifest_paths(self, folder: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except FileNotFoundError:
            return []
        except (OSError, pa.ArrowException) as exc:
            raise StoreUnavailable(f"cannot list {folder} in {redact_uri(self.uri)}: {exc}") from None
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json"))

    def _read(self, path: str, what: str) -> bytes:
        try:
            # A random-access file knows its size and reads it in one request; an S3 input *stream* reads
            # in small chunks, one request each (53 MiB: 15 s instead of 0.3 s against a local endpoint).
            with self.fs.open_input_file(path) as f:
                return f.read()
        except FileNotFoundError as exc:  # listed but gone (pruned meanwhile, or a lagging listing)
            raise ValueError(f"{what} missing: {exc}") from None
        except IsADirectoryError as exc:
            raise ValueError(f"{what} is a directory: {exc}") from None
        except (OSError, pa.ArrowException) as exc:
            raise StoreUnavailable(f"cannot read {path}: {exc}") from None

    def load(self, manifest_path: str) -> Loaded:
        """Read and verify one checkpoint; ValueError saying what is wrong with it, StoreUnavailable when
        the store could not be read at all."""
        raw_bytes = self._read(manifest_path, "manifest")
        try:
            raw = json.loads(raw_bytes)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"unreadable manifest: {exc}") from None
        authenticate(raw, self.key)
        manifest = check_manifest(raw, manifest_path)
        folder = manifest_path.rsplit("/", 1)[0]
        states = {}
        for k, entry in enumerate(manifest.models):
            what = "data file" if k == 0 else f"data file of model {entry.model_version[:80]!r}"
            body = self._read(f"{folder}/{entry.data}", what)
            if len(body) != entry.bytes:
                raise ValueError(f"{what} is {len(body)} bytes, manifest says {entry.bytes} (truncated?)")
            if hashlib.sha256(body).hexdigest() != entry.sha256:
                raise ValueError(f"{what} checksum does not match the manifest (corrupt)")
            try:
                state = ipc.open_file(pa.py_buffer(body)).read_all()
            except (pa.ArrowException, OSError) as exc:  # in-memory bytes: an OSError here ("Read out of bounds")
                raise ValueError(f"{what} is not Arrow IPC: {exc}") from None  # is the file's, not the store's
            try:  # reading checks buffer sizes only; offsets past their data crash the first kernel over them
                state.validate(full=True)
            except pa.ArrowException as exc:
                raise ValueError(f"{what} breaks Arrow's invariants: {exc}") from None
            try:
                check_state(state, manifest, entry)
            except ValueError as exc:
                raise ValueError(str(exc) if k == 0 else f"model {entry.model_version[:80]!r}: {exc}") from None
            states[entry.model_version] = state
        return Loaded(manifest, states[manifest.model_version], manifest_path, states)

    def latest(self, topic: str, partition: int, max_offset: int | None = None,
               problems: list[Problem] | None = None, validate=None, exclude=()) -> Loaded | None:
        """The newest valid checkpoint of a partition (at most ``max_offset``), or None.

        ``validate(loaded)`` may refuse a checkpoint by raising ValueError (e.g. rows this model cannot
        serve); manifests in ``exclude`` are passed over. Unusable checkpoints on the way are logged and
        appended to ``problems``. Whatever the store holds, this returns (each manifest is read at most
        once); it raises only StoreUnavailable, when the store cannot be listed or read."""
        for path in reversed(self._manifest_paths(self._dir(topic, partition))):
            if path in exclude:
                continue
            try:
                loaded = self.load(path)
                if loaded.manifest.topic != topic or loaded.manifest.partition != partition:
                    raise ValueError(f"manifest is for {loaded.manifest.topic}/{loaded.manifest.partition}")
                if max_offset is not None and loaded.manifest.offset > max_offset:
                    log.info("skipping checkpoint ahead of the committed offset",
                             extra={"path": path, "offset": loaded.manifest.offset, "committed": max_offset})
                    continue
                if validate is not None:
                    validate(loaded)
            except DATA_ERRORS as exc:
                reason = str(exc) or type(exc).__name__
                log.warning("skipping unusable checkpoint", extra={"path": path, "reason": reason})
                if problems is not None:
                    problems.append(Problem(path, reason))
                continue
            return loaded
        return None

    def inventory(self) -> list[tuple[str, Manifest | None, str | None]]:
        """Every checkpoint under the root: (manifest path, manifest or None, problem or None)."""
        out = []
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointError(f"cannot list {redact_uri(self.uri)}: {exc}") from None
        for path in sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json")):
            try:
                out.append((path, self.load(path).manifest, None))
            except DATA_ERRORS as exc:
                out.append((path, None, str(exc) or type(exc).__name__))
        return out
