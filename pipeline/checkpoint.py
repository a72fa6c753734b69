"""Checkpoints of per-partition operator state, through pyarrow.fs.

A checkpoint of one input partition is two files in
``ROOT/<topic>/<partition>/``:

- ``<offset:020d>-<created_ns>.arrow``: the partition's state rows (Arrow IPC
  file, as :meth:`operators.forecaster.Forecaster.export_partition` gives them);
- ``<offset:020d>-<created_ns>.json``: the manifest, written *last*: the input
  offset the state reflects (the next offset to read), row count, model
  version, feature spec, state shape, creation time, byte size and SHA-256 of
  the data file.

Both are written to a temporary name and renamed into place, so a crash never
leaves a half-written file under a final name; a data file without a manifest
is ignored. Readers trust nothing: the newest manifest whose data file has the
recorded size and checksum and parses wins; anything else is reported and the
next older one is tried. The newest ``keep`` checkpoints per partition are kept.

``ROOT`` is a local directory or any URI pyarrow.fs understands (``s3://``,
``gs://``, ``hdfs://``, ``file://``); credentials come from the environment as
pyarrow's filesystems read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from operators.errors import TickcastError

log = logging.getLogger(__name__)

FORMAT = 1


class CheckpointError(TickcastError):
    """A checkpoint store cannot be opened, or a checkpoint cannot be written."""


@dataclass(frozen=True)
class Manifest:
    format: int
    topic: str
    partition: int
    offset: int  # next input offset to read: the state reflects every record before it
    rows: int
    model_version: str
    feature_spec: dict
    layers: int
    hidden: int
    created_at: float  # unix seconds
    data: str  # file name of the state, beside the manifest
    bytes: int
    sha256: str

    @property
    def name(self) -> str:
        return self.data.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Loaded:
    manifest: Manifest
    state: pa.Table


@dataclass(frozen=True)
class Problem:
    """A checkpoint that could not be used, and why."""

    path: str
    reason: str


def _safe(topic: str) -> str:
    # Kafka topic names are [a-zA-Z0-9._-]; keep the path flat and unsurprising anyway.
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in topic)


class CheckpointStore:
    def __init__(self, uri: str, keep: int = 3, filesystem: pafs.FileSystem | None = None):
        if keep < 1:
            raise CheckpointError(f"checkpoint_keep must be >= 1, got {keep}")
        self.uri = uri
        self.keep = keep
        if filesystem is not None:
            self.fs, self.root = filesystem, uri.rstrip("/")
        elif "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                raise CheckpointError(f"checkpoint store {uri!r}: {exc}") from None
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).absolute())

    # -- paths ----------------------------------------------------------------------------
    def _dir(self, topic: str, partition: int) -> str:
        return f"{self.root}/{_safe(topic)}/{partition}"

    # -- writing ----------------------------------------------------------------------------
    def write(self, topic: str, partition: int, state: pa.Table, offset: int, model_version: str,
              feature_spec: dict) -> Manifest:
        """Write one partition's checkpoint atomically, then prune old ones. Raises CheckpointError."""
        meta = state.schema.metadata or {}
        created = time.time_ns()
        name = f"{offset:020d}-{created}"
        folder = self._dir(topic, partition)
        try:
            self.fs.create_dir(folder, recursive=True)
            sink = pa.BufferOutputStream()
            with ipc.new_file(sink, state.schema) as writer:
                writer.write_table(state)
            body = sink.getvalue()
            manifest = Manifest(FORMAT, topic, partition, int(offset), state.num_rows, model_version, feature_spec,
                                int(meta.get(b"layers", 0)), int(meta.get(b"hidden", 0)), created / 1e9,
                                f"{name}.arrow", body.size, hashlib.sha256(body).hexdigest())
            self._put(f"{folder}/{name}.arrow", body)
            self._put(f"{folder}/{name}.json", json.dumps(asdict(manifest), sort_keys=True).encode())
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointError(f"cannot write checkpoint of {topic}/{partition} to {folder}: {exc}") from None
        self._prune(folder)
        return manifest

    def _put(self, path: str, data) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def _prune(self, folder: str) -> None:
        try:
            manifests = self._manifest_paths(folder)
            for path in manifests[: max(0, len(manifests) - self.keep)]:
                base = path[: -len(".json")]
                for victim in (path, f"{base}.arrow"):  # manifest first: never a manifest without data
                    try:
                        self.fs.delete_file(victim)
                    except FileNotFoundError:
                        pass
            # Leftovers of writes that died before the rename, older than a minute.
            cutoff = time.time() - 60
            for info in self.fs.get_file_info(pafs.FileSelector(folder)):
                if ".tmp-" in info.base_name and info.mtime is not None and info.mtime.timestamp() < cutoff:
                    self.fs.delete_file(info.path)
        except (OSError, pa.ArrowException) as exc:
            log.warning("pruning old checkpoints failed", extra={"folder": folder, "error": str(exc)})

    # -- reading ----------------------------------------------------------------------------
    def _manifest_paths(self, folder: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except (OSError, pa.ArrowException):
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json"))

    def load(self, manifest_path: str) -> Loaded:
        """Read and verify one checkpoint; raises ValueError saying what is wrong."""
        try:
            with self.fs.open_input_stream(manifest_path) as f:
                raw = json.loads(f.read())
            manifest = Manifest(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"unreadable manifest: {exc}") from None
        if manifest.format != FORMAT:
            raise ValueError(f"checkpoint format {manifest.format}, this build reads {FORMAT}")
        data_path = f"{manifest_path.rsplit('/', 1)[0]}/{manifest.data}"
        try:
            with self.fs.open_input_stream(data_path) as f:
                body = f.read()
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"data file missing or unreadable: {exc}") from None
        if len(body) != manifest.bytes:
            raise ValueError(f"data file is {len(body)} bytes, manifest says {manifest.bytes} (truncated?)")
        if hashlib.sha256(body).hexdigest() != manifest.sha256:
            raise ValueError("data file checksum does not match the manifest (corrupt)")
        try:
            state = ipc.open_file(pa.py_buffer(body)).read_all()
        except pa.ArrowException as exc:
            raise ValueError(f"data file is not Arrow IPC: {exc}") from None
        if state.num_rows != manifest.rows:
            raise ValueError(f"data file has {state.num_rows} rows, manifest says {manifest.rows}")
        return Loaded(manifest, state)

    def latest(self, topic: str, partition: int, max_offset: int | None = None,
               problems: list[Problem] | None = None, validate=None) -> Loaded | None:
        """The newest valid checkpoint of a partition (at most ``max_offset``), or None.

        ``validate(loaded)`` may refuse a checkpoint by raising ValueError (e.g. rows this model cannot
        serve). Unusable checkpoints on the way are logged and appended to ``problems``.
        """
        for path in reversed(self._manifest_paths(self._dir(topic, partition))):
            try:
                loaded = self.load(path)
                if validate is not None:
                    validate(loaded)
            except ValueError as exc:
                log.warning("skipping unusable checkpoint", extra={"path": path, "reason": str(exc)})
                if problems is not None:
                    problems.append(Problem(path, str(exc)))
                continue
            if max_offset is not None and loaded.manifest.offset > max_offset:
                log.info("skipping checkpoint ahead of the committed offset",
                         extra={"path": path, "offset": loaded.manifest.offset, "committed": max_offset})
                continue
            return loaded
        return None

    def inventory(self) -> list[tuple[str, Manifest | None, str | None]]:
        """Every checkpoint under the root: (manifest path, manifest or None, problem or None)."""
        out = []
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointError(f"cannot list {self.uri}: {exc}") from None
        for path in sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json")):
            try:
                out.append((path, self.load(path).manifest, None))
            except ValueError as exc:
                out.append((path, None, str(exc)))
        return out
