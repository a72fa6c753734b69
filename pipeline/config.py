"""One typed configuration for `tickcast run`: TOML file, then environment, then flags.

Precedence, lowest to highest: defaults < config file (TOML) < environment
variables (``TICKCAST_<KEY>``, upper case) < command-line flags. Unknown keys
are refused with the nearest known key; every value is checked, and a bad one
is reported in one line that names the key, the source and how to fix it.
Secrets (passwords) are never printed: :meth:`RunConfig.redacted` masks them.
The checks live in :mod:`pipeline.config_checks`.

Candidate models (``candidates``) come as TOML tables, ``[[candidates]]`` with
``model = "DIR"``, as ``TICKCAST_CANDIDATES=DIR,DIR``, or as ``--candidate DIR``
(repeatable); each source replaces the list of the one before.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import tomllib
from fractions import Fraction
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from operators.errors import TickcastError
from pipeline.ranges import MAX_DATE_NS, MAX_DURATION_NS, UNITS_NS, format_ns


class ConfigError(TickcastError):
    """A flag, environment variable or config value is invalid."""


# Ticks per micro-batch, for every command and library function that cuts ticks into batches (`run`,
# `backtest`, `walkforward`, `demo`). Forecasts do not depend on it (batch invariance); it bounds a live
# batch's latency and memory, and a file backtest's per-batch overhead.
DEFAULT_MAX_BATCH_TICKS = 5_000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)\s*$")
# Kafka's rule for a group.instance.id (its topic-name rule): the brokers and both clients refuse anything else.
_GROUP_INSTANCE_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._-]{1,249}")


def parse_duration_ns(text: str, what: str = "duration", lo_ns: int = 1, hi_ns: int = MAX_DURATION_NS) -> int:
    """'500ms', '30s', '15m', '2h', '1d' -> nanoseconds, refused in one line outside ``lo_ns``..``hi_ns`` (by
    default 1 ns to 3650 days: a duration added to a time must stay inside int64 nanoseconds, year 2262)."""
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"{what} {text!r} is not a duration; write a number and a unit, e.g. 30s, 15m, 2h, 1d")
    number, unit = m.group(1), m.group(2)
    # Exact arithmetic: '0.5ns' is not silently 0, '200000d' is not a float that overflows int64 later.
    value = Fraction(number) * UNITS_NS[unit]
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    if value < lo_ns or value > hi_ns:
        raise ConfigError(f"{what} = {text!r} is outside {format_ns(lo_ns)}..{format_ns(hi_ns)}")
    if value.denominator != 1:
        raise ConfigError(f"{what} = {text!r} is not a whole number of nanoseconds")
    return int(value)


def parse_date_ns(text: str, what: str = "date") -> int:
    """'1990-01-01' (UTC midnight) -> nanoseconds since the epoch, after 1970-01-01 and before 2200-01-01."""
    import datetime as dt

    try:
        day = dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a date; write YYYY-MM-DD (UTC), e.g. 1990-01-01") from None
    ns = (day - dt.date(1970, 1, 1)).days * 86_400_000_000_000
    if ns <= 0:
        raise ConfigError(f"{what} must be after 1970-01-01, got {text!r}")
    if ns >= MAX_DATE_NS:
        raise ConfigError(f"{what} must be before 2200-01-01, got {text!r}")
    return ns


def parse_time_ns(text: str | None, flag: str) -> int | None:
    """An ISO 8601 UTC time ('2013-10-09', '2013-10-09T14:30') -> nanoseconds since the epoch; None stays None."""
    import numpy as np  # noqa: PLC0415 - config stays importable without numpy

    if text is None:
        return None
    try:
        return int(np.datetime64(text.rstrip("Z"), "ns").astype(np.int64))
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not an ISO 8601 time; write e.g. 2013-10-09 or 2013-10-09T14:30") from None


def parse_mapping(text: str | None) -> dict[str, str]:
    """'price=last,ts=time' -> {'price': 'last', 'ts': 'time'} (canonical name = source name)."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part or not part.split("=", 1)[0].strip() or not part.split("=", 1)[1].strip():
            raise ConfigError(f"--map entry {part!r} is not canonical=source, e.g. --map price=last,ts=time")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True)
class Candidate:
    """A model stepped beside the primary over the same ticks, its forecasts going to the shadow topic."""

    model: str  # bundle directory

    @classmethod
    def parse(cls, value: Any, where: str) -> "Candidate":
        """From a TOML table (``{"model": "DIR"}``) or a bundle directory (env, flags); ValueError saying why not."""
        if isinstance(value, str):
            value = {"model": value}
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a table with model = \"DIR\" or a bundle directory, got "
                             f"{type(value).__name__}")
        known = [f.name for f in fields(cls)]
        for key in value:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                raise ValueError(f"{where} has unknown key {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                                       f"; it takes {', '.join(known)}"))
        model = value.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"{where} needs model = \"DIR\" (a bundle directory)")
        return cls(model=model)


def _opt(default: Any, help: str, *, secret: bool = False, choices: tuple[str, ...] = (), flag: str = "") -> Any:
    meta = {"help": help, "secret": secret, "choices": choices, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Every key of `tickcast run`; the help text is what `--help` prints."""

    model: str = _opt("", "model bundle directory (from `tickcast train`)")
    bootstrap_servers: str = _opt("localhost:9092", "Kafka bootstrap servers, comma-separated host:port")
    input_topics: list[str] = _opt(["ticks"], "topic(s) to read ticks from, comma-separated")
    output_topic: str = _opt("forecasts", "topic to publish forecasts to")
    dead_letter_topic: str = _opt("ticks.dlq", "topic for messages that are not valid ticks")
    candidates: list[Candidate] = _opt([], "candidate model bundle directory, stepped beside the primary over the "
                                       "same ticks with its own state, its forecasts going to shadow_topic; "
                                       "repeat for several (config file: [[candidates]] tables with "
                                       "model = \"DIR\"; environment: comma-separated)", flag="--candidate")
    shadow_topic: str = _opt("", "topic for the candidates' forecasts (empty: <output_topic>.shadow); never an "
                             "input, output or dead-letter topic")
    group_id: str = _opt("tickcast", "Kafka consumer group id")
    group_instance_id: str = _opt("", "static group membership: this process's stable member id (e.g. the pod "
                                  "name), unique in the group; restarted with the same id it gets its partitions "
                                  "back without waiting out its session or a rebalance, and a clean stop keeps "
                                  "them for session_timeout_ms. Empty: dynamic membership")
    auto_offset_reset: str = _opt("earliest", "where a new group starts", choices=("earliest", "latest"))
    max_batch_ticks: int = _opt(DEFAULT_MAX_BATCH_TICKS, "a micro-batch closes at this many ticks ...")
    max_batch_ms: int = _opt(50, "... or when its measured work would end this many milliseconds after its first "
                             "tick's receipt, whichever first; also caps a batch's ticks by the step time per tick")
    max_batches_in_flight: int = _opt(1, "batches stepped but not yet committed: 1, one batch at a time; 2 overlaps "
                                      "the next batch's poll, decode and step with this one's acknowledgements (or "
                                      "transaction commit)")
    output_mode: str = _opt("every_tick", "publish a forecast for every tick, or only the last per instrument "
                            "per batch", choices=("every_tick", "last_per_instrument"))
    output_format: str = _opt("json", "forecast messages: json (one per forecast, keyed by instrument) or arrow "
                              "(a batch's forecasts per output partition as one Arrow IPC stream; far fewer "
                              "messages, the same partition for each instrument)", choices=("json", "arrow"))
    processing: str = _opt("at_least_once", "delivery guarantee: at_least_once (publish, then commit) or "
                           "exactly_once (forecasts and offsets in one Kafka transaction per batch)",
                           choices=("at_least_once", "exactly_once"))
    transactional_id: str = _opt("", "exactly_once: this process's stable transactional id (empty: "
                                 "<group_id>-<hostname>); keep it across restarts, unique per process")
    checkpoint_uri: str = _opt("checkpoints", "where partition state checkpoints go: a directory or a pyarrow.fs "
                               "URI (s3://bucket/prefix, file:///path); empty: no checkpoints")
    checkpoint_interval_s: float = _opt(60.0, "write checkpoints at least this often, in seconds (0: only on "
                                        "revoke and shutdown, and every checkpoint_every_batches)")
    checkpoint_every_batches: int = _opt(0, "also write checkpoints every this many batches (0: off)")
    checkpoint_keep: int = _opt(3, "checkpoints kept per partition")
    checkpoint_key_file: str = _opt("", "file holding an HMAC-SHA256 key (at least 16 bytes) that signs checkpoint "
                                    "manifests; with it, unsigned or mis-signed checkpoints are refused as "
                                    "tampered. Empty: the SHA-256 in the manifest detects corruption only")
    max_instruments: int = _opt(1_000_000, "instruments this process holds state for; ticks of a new instrument "
                                "beyond it go to the dead-letter topic as instrument_limit (0: no limit)")
    on_model_change: str = _opt("refuse", "a checkpoint from another model version: refuse to start, or "
                                "warmup (rebuild state by replaying warmup_window of input silently)",
                                choices=("refuse", "warmup"))
    warmup: str = _opt("", "for partitions without a usable checkpoint: replay this much input before the "
                       "committed offset silently to build state, e.g. 30m (empty: start from zero state)")
    reset_gap: str = _opt("", "start an instrument afresh after an event-time gap this long, e.g. 30m (empty: never)")
    expire_after: str = _opt("", "reclaim instruments idle this long, e.g. 1d (empty: never)")
    ts_floor: str = _opt("1990-01-01", "refuse ticks with an event time before this UTC date (bad_timestamp, or "
                         "ts_unit_s/_ms/_us when the value is a time in that unit)")
    max_ts_ahead: str = _opt("5m", "refuse ticks whose event time is more than this after the record's own "
                             "Kafka timestamp (ts_ahead)")
    kafka_client: str = _opt("kafka-python", "Kafka client library: kafka-python (pure Python) or confluent "
                             "(librdkafka through confluent-kafka, pip install 'tickcast[confluent]': about 10x cheaper "
                             "per produced message, fetches on a native thread)", choices=("kafka-python", "confluent"))
    engine: str = _opt("auto", "what steps the model: kernel (NumPy), keras (the model's own layers run by Keras; "
                       "needs TensorFlow) or auto (the kernel when it computes every layer, else keras; the log "
                       "says which and why)", choices=("auto", "kernel", "keras"))
    metrics_address: str = _opt("127.0.0.1:9108", "host:port for /metrics, /healthz, /readyz (port 0: any free)")
    status_interval_s: float = _opt(5.0, "seconds between one-line status reports (0: off)")
    log_format: str = _opt("text", "log lines as key=value text or JSON", choices=("text", "json"))
    log_level: str = _opt("info", "log level", choices=("debug", "info", "warning", "error"))
    shutdown_timeout_s: float = _opt(20.0, "on SIGTERM, the whole shutdown (flush, commit, checkpoint, close) ends "
                                     "within this many seconds")
    fetch_max_bytes: int = _opt(16 * 1024 * 1024, "bound on bytes the consumer fetches ahead (memory cap)")
    request_timeout_ms: int = _opt(30000, "Kafka request timeout; a transaction call waits at most twice this")
    transaction_timeout_ms: int = _opt(90000, "exactly_once: the broker aborts (and fences) a transaction open this "
                                       "long; must exceed the longest bounded wait, 2 x request_timeout_ms "
                                       "(and stay within the broker's transaction.max.timeout.ms)")
    session_timeout_ms: int = _opt(10000, "consumer group session timeout: how soon a dead member's partitions move")
    fetch_max_wait_ms: int = _opt(10, "longest the broker holds a fetch waiting for new ticks (latency bound)")
    security_protocol: str = _opt("PLAINTEXT", "Kafka security protocol",
                                  choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = _opt("", "SASL mechanism", choices=("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_username: str = _opt("", "SASL user name")
    sasl_password: str = _opt("", "SASL password (prefer TICKCAST_SASL_PASSWORD or sasl_password_file)", secret=True)
    sasl_password_file: str = _opt("", "file holding the SASL password")
    ssl_cafile: str = _opt("", "CA bundle to verify the brokers")
    ssl_certfile: str = _opt("", "client certificate (mutual TLS)")
    ssl_keyfile: str = _opt("", "client private key (mutual TLS)")
    ssl_password: str = _opt("", "password of the client key", secret=True)

    # -- loading ------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def load(cls, file: str | Path | None = None, env: dict[str, str] | None = None,
             flags: dict[str, Any] | None = None, check: bool = True) -> "RunConfig":
        values: dict[str, tuple[Any, str]] = {}
        if file:
            for k, v in _read_toml(Path(file)).items():
                values[k] = (v, f"{file}")
        env = os.environ if env is None else env
        for k in cls.keys():
            name = f"TICKCAST_{k.upper()}"
            if name in env:
                values[k] = (env[name], f"env {name}")
        flag_names = {f.name: f.metadata.get("flag") or f"--{f.name.replace('_', '-')}" for f in fields(cls)}
        for k, v in (flags or {}).items():
            if v is not None:
                values[k] = (v, flag_names.get(k, f"--{k.replace('_', '-')}"))
        kwargs, problems = {}, []
        types = {f.name: f for f in fields(cls)}
        for k, (v, source) in values.items():
            if k not in types:
                near = difflib.get_close_matches(k, cls.keys(), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                problems.append(f"unknown config key {k!r} in {source}{hint}")
                continue
            try:
                kwargs[k] = _coerce(types[k], v, source)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))
        cfg = cls(**kwargs)
        if check:
            cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ConfigError listing every problem, one line each (see :meth:`problems`)."""
        problems = self.problems()
        if problems:
            raise ConfigError("\n".join(problems))

    def problems(self) -> list[str]:
        """Every way this config would keep the run from starting or working, one line each; [] when none
        (:func:`pipeline.config_checks.problems`)."""
        from pipeline.config_checks import problems  # noqa: PLC0415 - it reads this module's parsers

        return problems(self)

    def _range_problems(self) -> list[str]:
        from pipeline.config_checks import range_problems  # noqa: PLC0415

        return range_problems(self)

    def checkpoint_key(self) -> bytes | None:
        """The checkpoint HMAC key (the key file's bytes, one trailing newline dropped), or None without one."""
        if not self.checkpoint_key_file:
            return None
        try:
            key = Path(self.checkpoint_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"checkpoint_key_file {self.checkpoint_key_file!r} cannot be read: "
                              f"{exc.strerror or exc}") from None
        key = key[:-1] if key.endswith(b"\n") else key
        if len(key) < 16:
            raise ConfigError(f"checkpoint_key_file {self.checkpoint_key_file!r} holds {len(key)} bytes; an HMAC "
                              f"key needs at least 16 (e.g. head -c 32 /dev/urandom > FILE)")
        return key

    @property
    def shadow_output_topic(self) -> str:
        """Where candidates' forecasts go: ``shadow_topic``, or ``<output_topic>.shadow`` when it is empty."""
        return self.shadow_topic or f"{self.output_topic}.shadow"

    @property
    def longest_bounded_wait_ms(self) -> int:
        """The longest the loop waits on one broker call before giving up on it (``pipeline.waiting.bounded``)."""
        return 2 * self.request_timeout_ms

    def redacted(self) -> dict[str, Any]:
        """The config as a dict, with secrets masked (for logs and `config check`)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else value
        out["candidates"] = [dataclasses.asdict(c) for c in self.candidates]
        out["shadow_topic"] = self.shadow_output_topic
        if self.checkpoint_uri:  # s3://KEY:SECRET@bucket/... and secret query options
            from pipeline.checkpoint import redact_uri  # noqa: PLC0415 - config stays importable alone

            out["checkpoint_uri"] = redact_uri(self.checkpoint_uri)
        return out

    # -- what the Kafka clients get -------------------------------------------------
    @classmethod
    def load_kafka_security(cls, file: str | Path | None = None) -> dict[str, Any]:
        """:meth:`kafka_security` of the config file and environment, for a command that only produces
        (``tickcast replay``); only the security settings' problems are refused."""
        cfg = cls.load(file, check=False)
        keys = {"security_protocol", "sasl_mechanism", "sasl_password_file", "ssl_cafile", "ssl_certfile",
                "ssl_keyfile", "give"}
        problems = [p for p in cfg.problems() if p.split(" ", 1)[0] in keys]
        if problems:
            raise ConfigError("\n".join(problems))
        return cfg.kafka_security()

    def kafka_security(self) -> dict[str, Any]:
        """Security settings passed through to both consumer and producer."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            password = self.sasl_password
            if self.sasl_password_file:
                password = Path(self.sasl_password_file).read_text().strip()
            opts.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                        sasl_plain_password=password)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
                if getattr(self, key):
                    opts[key] = getattr(self, key)
        return opts


KAFKA_CLIENTS = ("kafka-python", "confluent")


def check_kafka_client(name: str, what: str = "kafka_client") -> None:
    """A known client whose library is installed; ConfigError in one line otherwise."""
    if name not in KAFKA_CLIENTS:
        raise ConfigError(f"{what} {name!r} is not one of 'kafka-python', 'confluent'")
    if name == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
        raise ConfigError(f"{what} confluent needs the confluent-kafka package; install it with "
                          f"pip install 'tickcast[confluent]', or use kafka-python")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept keys at the top level or under a [tickcast] table.
    if isinstance(data.get("tickcast"), dict):
        data = {**{k: v for k, v in data.items() if k != "tickcast"}, **data["tickcast"]}
    return data


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "list[Candidate]":
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ConfigError(f"candidates from {source} must be [[candidates]] tables or bundle directories, "
                                  f"got {type(value).__name__}")
            try:
                return [Candidate.parse(v, f"candidate {i} from {source}") for i, v in enumerate(items, start=1)]
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if kind == "list[str]":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            raise ValueError
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        shown = "***" if f.metadata.get("secret") else repr(value)
        raise ConfigError(f"{f.name} from {source} must be {kind.replace('list[str]', 'a list of strings')}, "
                          f"got {shown}") from None
