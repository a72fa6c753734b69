"""What one checkpoint is on storage, and the checks a read one must pass before it is used.

Store URIs joined on their path and redacted for display (:func:`join_uri`,
:func:`redact_uri`); the layout (``<topic segment>/<partition>/<name>.json``
beside ``<name>.arrow``, and ``<name>.<k>.arrow`` for the k-th other model,
:func:`path_segment` for the folder names); the :class:`Manifest` and
:class:`ModelEntry` records; and :func:`check_manifest` / :func:`check_state`,
which turn anything read from a store into a trusted manifest and state or a
ValueError saying what is wrong. The rules they enforce are written down in
:mod:`pipeline.checkpoint`, next to the store that writes and reads these files.

Two manifest formats, both read:

- format 1, one model: ``format, topic, partition, offset, created_at`` and
  the model's ``model_version, feature_spec, layers, hidden, rows, data,
  bytes, sha256`` (what every checkpoint was before several models ran);
- format 2, several models at the same offset: format 1's members for the
  *primary* (the model that published when it was written), plus ``others``,
  a list of 1 to ``MAX_MODELS - 1`` objects with the same eight model members,
  one per other model, the k-th (from 1) with its data in ``<name>.<k>.arrow``;
  every model version appears once.

A checkpoint of one model is written in format 1, byte for byte as before, so a
build that reads only format 1 still restores it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT = 1  # one model
FORMAT_SEVERAL = 2  # the primary as in format 1, the other models in "others"
MAX_MODELS = 32  # models in one checkpoint: a bound on the files one manifest makes a reader fetch
_INT64_MAX = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def join_uri(uri: str, *parts: str) -> str:
    """``uri`` with path segments appended on its *path*: query and user info survive.

    >>> join_uri("s3://b/p?region=x", "g")
    's3://b/p/g?region=x'
    """
    if "://" not in uri:
        return str(Path(uri, *parts))
    split = urlsplit(uri)
    path = "/".join([split.path.rstrip("/"), *parts])
    return urlunsplit(split._replace(path=path if path.startswith("/") else "/" + path))


_SECRET_QUERY = re.compile(r"secret|token|password|credential|key", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` fit for a log line: user info and secret-looking query values masked."""
    if "://" not in uri:
        return uri
    split = urlsplit(uri)
    netloc = split.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = split.query
    if query:
        query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe=":*")
    return urlunsplit(split._replace(netloc=netloc, query=query))


def scrub_uri(text: str, uri: str) -> str:
    """``text`` (an error message that may quote ``uri``) without the URI's credentials."""
    text = text.replace(uri, redact_uri(uri))
    if "://" in uri:
        netloc = urlsplit(uri).netloc
        if "@" in netloc:
            userinfo = netloc.rsplit("@", 1)[0]
            for secret in {userinfo, *userinfo.split(":")} - {""}:
                text = text.replace(secret, "***")
    return text


def path_segment(name: str) -> str:
    """A name (group id, topic) as one flat, unsurprising path segment.

    Names that are already ``[A-Za-z0-9._-]``, short, and not ``.``/``..`` stay as they are (every Kafka
    topic, most group ids); anything else is replaced character-wise and gets a hash of the original, so
    two different names never share a folder."""
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "._-" else "_" for ch in name)
    if safe == name and name not in ("", ".", "..") and len(name) <= 100:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe.strip('.')[:80] or 'x'}-{digest}"



@dataclass(frozen=True)
class ModelEntry:
    """One model's state in a checkpoint: its data file (beside the manifest) and what describes it."""

    model_version: str
    feature_spec: dict
    layers: int
    hidden: int
    rows: int
    data: str  # file name of the model's state table, beside the manifest
    bytes: int
    sha256: str


_ENTRY_FIELDS = tuple(f.name for f in fields(ModelEntry))


@dataclass(frozen=True)
class Manifest:
    """A checkpoint of one partition at one offset. The fields after ``offset`` (but ``created_at``) describe
    the primary model, as format 1 did; ``others`` the other models' states at the same offset."""

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
    others: tuple[ModelEntry, ...] = ()  # format 2: every other model's entry (format 1: none)

    @property
    def name(self) -> str:
        return self.data.rsplit(".", 1)[0]

    @property
    def primary(self) -> ModelEntry:
        return ModelEntry(**{k: getattr(self, k) for k in _ENTRY_FIELDS})

    @property
    def models(self) -> tuple[ModelEntry, ...]:
        """Every model's entry, the primary first."""
        return (self.primary, *self.others)

    def model(self, version: str) -> ModelEntry | None:
        return next((m for m in self.models if m.model_version == version), None)

    @property
    def total_bytes(self) -> int:
        """Bytes of every data file of the checkpoint."""
        return sum(m.bytes for m in self.models)

    def to_json(self) -> dict:
        """The members written to storage (format 1 has no ``others``)."""
        raw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "others"}
        if self.others:
            raw["others"] = [{k: getattr(m, k) for k in _ENTRY_FIELDS} for m in self.others]
        return raw


def data_name(stem: str, k: int) -> str:
    """The data file of a checkpoint's k-th model (0: the primary)."""
    return f"{stem}.arrow" if k == 0 else f"{stem}.{k}.arrow"


def checkpoint_stem(file_name: str) -> str:
    """The checkpoint a manifest or data file belongs to: its name up to the first dot."""
    return file_name.split(".", 1)[0]

MAC_FIELD = "hmac_sha256"  # optional manifest member: HMAC-SHA256 of the other members (pipeline.checkpoint)


def manifest_mac(key: bytes, raw: dict) -> str:
    """HMAC-SHA256, hex, of a manifest's members (without ``MAC_FIELD``) as canonical JSON (sorted keys, ASCII):
    the same bytes whoever serialises the same values, so the writer's MAC verifies on the reader's parse."""
    body = json.dumps({k: v for k, v in raw.items() if k != MAC_FIELD}, sort_keys=True, ensure_ascii=True,
                      allow_nan=False, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


_HEX_MAC = re.compile(r"[0-9a-f]{64}")
MIN_KEY_BYTES = 16  # an HMAC key shorter than this is a configuration mistake


def authenticate(raw, key: bytes | None) -> None:
    """Take ``MAC_FIELD`` out of a parsed manifest; with a ``key``, ValueError unless it is there and verifies
    (without one, the MAC is ignored: the SHA-256 then detects corruption only, not tampering)."""
    mac = raw.pop(MAC_FIELD, None) if isinstance(raw, dict) else None
    if key is None:
        return
    if not isinstance(mac, str) or not _HEX_MAC.fullmatch(mac):
        raise ValueError("manifest is not authenticated (no MAC) and this store has a checkpoint key")
    try:
        expected = manifest_mac(key, raw)
    except RecursionError:
        raise ValueError("manifest nests too deep to authenticate") from None
    if not hmac.compare_digest(mac, expected):
        raise ValueError("manifest MAC does not verify with the checkpoint key (tampered, or another key)")


_ENTRY_TYPES = {"model_version": str, "feature_spec": dict, "layers": int, "hidden": int, "rows": int,
                "data": str, "bytes": int, "sha256": str}
_TYPES = {"format": int, "topic": str, "partition": int, "offset": int, "created_at": (int, float), **_ENTRY_TYPES}


def _check_types(raw: dict, types: dict, what: str) -> None:
    for key, typ in types.items():
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise ValueError(f"{what} field {key!r} is {type(value).__name__}, not {typ}")
        if isinstance(value, int) and not 0 <= value <= _INT64_MAX:
            raise ValueError(f"{what} field {key!r} = {value} is out of range")
    if not _SHA256.fullmatch(raw["sha256"]):
        raise ValueError(f"{what} field 'sha256' is not a SHA-256 hex digest")


def _check_others(others, stem: str, primary: str) -> tuple[ModelEntry, ...]:
    """Format 2's ``others``: entries of distinct model versions, the k-th with its data in ``<stem>.<k>.arrow``."""
    if not isinstance(others, list) or not 1 <= len(others) < MAX_MODELS:
        size = len(others) if isinstance(others, list) else type(others).__name__
        raise ValueError(f"manifest field 'others' must list 1 to {MAX_MODELS - 1} models, got {size}")
    seen = {primary}
    out = []
    for k, entry in enumerate(others, start=1):
        what = f"manifest model {k}"
        if not isinstance(entry, dict):
            raise ValueError(f"{what} is a JSON {type(entry).__name__}, not an object")
        if set(entry) != set(_ENTRY_FIELDS):
            missing, extra = sorted(set(_ENTRY_FIELDS) - set(entry)), sorted(set(entry) - set(_ENTRY_FIELDS))
            raise ValueError(f"{what} fields wrong: missing {missing}, unexpected {extra}")
        _check_types(entry, _ENTRY_TYPES, what)
        if entry["model_version"] in seen:
            raise ValueError(f"{what}: model version {entry['model_version'][:80]!r} appears twice")
        seen.add(entry["model_version"])
        if entry["data"] != data_name(stem, k):
            raise ValueError(f"{what} names data {entry['data'][:120]!r}; only {data_name(stem, k)} beside it is "
                             f"accepted")
        out.append(ModelEntry(**entry))
    return tuple(out)


def check_manifest(raw, manifest_path: str) -> Manifest:
    """A Manifest from parsed JSON (format 1 or 2), or ValueError naming the first field that is wrong.

    ``manifest_path`` is where it was found: ``.../<topic segment>/<partition>/<name>.json``."""
    if not isinstance(raw, dict):
        raise ValueError(f"manifest is a JSON {type(raw).__name__}, not an object")
    fmt = raw.get("format")
    if isinstance(fmt, bool) or fmt not in (FORMAT, FORMAT_SEVERAL):
        shown = fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else f"of type {type(fmt).__name__}"
        raise ValueError(f"checkpoint format {shown}, this build reads {FORMAT} and {FORMAT_SEVERAL}")
    names = set(_TYPES) | ({"others"} if fmt == FORMAT_SEVERAL else set())
    if set(raw) != names:
        missing, extra = sorted(names - set(raw)), sorted(set(raw) - names)
        raise ValueError(f"manifest fields wrong: missing {missing}, unexpected {extra}")
    _check_types(raw, _TYPES, "manifest")
    if not math.isfinite(raw["created_at"]):
        raise ValueError("manifest field 'created_at' is not finite")
    parts = manifest_path.replace("\\", "/").rsplit("/", 3)
    if len(parts) < 3:
        raise ValueError(f"manifest {manifest_path!r} is not in a <topic>/<partition>/ folder")
    topic_dir, partition_dir, file_name = parts[-3], parts[-2], parts[-1]
    if path_segment(raw["topic"]) != topic_dir or str(raw["partition"]) != partition_dir:
        raise ValueError(f"manifest says {raw['topic']}/{raw['partition']} but sits in {topic_dir}/{partition_dir}")
    stem = file_name[: -len(".json")] if file_name.endswith(".json") else file_name
    if raw["data"] != data_name(stem, 0):
        raise ValueError(f"manifest names data {raw['data'][:120]!r}; only {stem}.arrow beside it is accepted")
    others = _check_others(raw["others"], stem, raw["model_version"]) if fmt == FORMAT_SEVERAL else ()
    return Manifest(**{**{k: raw[k] for k in _TYPES}, "created_at": float(raw["created_at"])}, others=others)


def check_state(state: pa.Table, manifest: Manifest, model: ModelEntry | None = None) -> None:
    """Rows of ``model`` (default: the primary) consistent with its manifest entry and the checkpoint's offset,
    finite, with schema metadata import can use; else ValueError."""
    model = manifest.primary if model is None else model
    if state.num_rows != model.rows:
        raise ValueError(f"data file has {state.num_rows} rows, manifest says {model.rows}")
    meta = state.schema.metadata or {}
    for key, want in ((b"layers", model.layers), (b"hidden", model.hidden)):
        if meta.get(key) != str(want).encode():
            raise ValueError(f"state metadata {key.decode()} = {meta.get(key)!r}, manifest says {want}")
    for key in (b"tickcast.watermark_ns", b"tickcast.last_sweep_ns"):
        if key in meta:
            text = meta[key].decode("ascii", "replace")
            if not re.fullmatch(r"-?[0-9]{1,19}", text) or not -2**63 <= int(text) <= _INT64_MAX:
                raise ValueError(f"state metadata {key.decode()} = {meta[key][:40]!r} is not an int64")
    recent = meta.get(b"tickcast.recent_ts")
    if recent is not None and not re.fullmatch(rb"-?[0-9]{1,19}(,-?[0-9]{1,19}){0,1023}", recent):
        raise ValueError(f"state metadata tickcast.recent_ts = {recent[:40]!r} is not a list of int64s")
    if recent is not None and not all(-2**63 <= int(v) <= _INT64_MAX for v in recent.split(b",")):
        raise ValueError("state metadata tickcast.recent_ts holds a value out of int64 range")
    for column in state.column_names:
        if state.column(column).null_count:
            raise ValueError(f"state column {column!r} has nulls")
    if "last_offset" in state.column_names and state.num_rows:
        newest = pc.max(state.column("last_offset")).as_py()
        if newest is not None and newest >= manifest.offset:
            raise ValueError(f"a row's last_offset {newest} is not below the checkpoint's offset {manifest.offset}")
    for column in state.column_names:
        col = state.column(column)
        typ = col.type
        if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ):
            values = pc.list_flatten(col)
        elif pa.types.is_floating(typ):
            values = col
        else:
            continue
        if not pa.types.is_floating(values.type) or len(values) == 0:
            continue
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        data = arr.to_numpy(zero_copy_only=False)
        if column in ("last_price", "last_mid"):  # NaN: no previous tick (or quotes); an infinity is never valid
            if np.isinf(data).any():
                raise ValueError(f"state column {column!r} holds an infinity")
        elif not np.isfinite(data).all():
            raise ValueError(f"state column {column!r} holds a NaN or an infinity")
