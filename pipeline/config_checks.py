"""Every way a :class:`pipeline.config.RunConfig` can be wrong, one line each: choices, ranges (one table,
:mod:`pipeline.ranges`), and the rules across keys (topics, timeouts, security, candidates)."""

from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path

from pipeline.config import (_GROUP_INSTANCE_ID, KAFKA_CLIENTS, ConfigError, RunConfig, check_kafka_client,
                             parse_date_ns, parse_duration_ns)
from pipeline.ranges import MAX_CANDIDATES, RANGES


def problems(cfg: RunConfig) -> list[str]:
    """Every way ``cfg`` would keep the run from starting or working, one line each; [] when none."""
    out: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            out.append(f"{f.name} = {value!r} is not one of {', '.join(repr(c) for c in choices)}")
    out += range_problems(cfg)
    if not cfg.model:
        out.append("no model bundle given; set --model DIR (or model = \"DIR\" in the config file)")
    if not cfg.input_topics or any(not t for t in cfg.input_topics):
        out.append("input_topics is empty; name at least one topic, e.g. --input-topics ticks")
    if cfg.output_topic in cfg.input_topics or cfg.dead_letter_topic in cfg.input_topics:
        out.append("output_topic and dead_letter_topic must differ from the input topics")
    out += candidate_problems(cfg)
    if cfg.group_instance_id and not _GROUP_INSTANCE_ID.fullmatch(cfg.group_instance_id):
        out.append(f"group_instance_id = {cfg.group_instance_id!r} must be 1-249 characters of ASCII "
                   f"letters, digits, '.', '_' and '-', and not '.' or '..'")
    if cfg.transaction_timeout_ms <= cfg.longest_bounded_wait_ms:
        out.append(f"transaction_timeout_ms = {cfg.transaction_timeout_ms} must exceed the longest bounded "
                   f"broker wait, 2 x request_timeout_ms = {cfg.longest_bounded_wait_ms}: otherwise a "
                   f"stalled call gets the transaction aborted and the producer fenced first; raise "
                   f"transaction_timeout_ms or lower request_timeout_ms")
    if cfg.request_timeout_ms <= cfg.fetch_max_wait_ms:  # kafka-python refuses it (KafkaConfigurationError)
        out.append(f"request_timeout_ms = {cfg.request_timeout_ms} must exceed fetch_max_wait_ms = "
                   f"{cfg.fetch_max_wait_ms}: a fetch the broker holds would time out")
    if cfg.processing == "exactly_once" and not cfg.checkpoint_uri:
        out.append("processing = exactly_once needs checkpoint_uri (state must survive a restart for "
                   "replayed forecasts to equal the first ones)")
    if cfg.on_model_change == "warmup" and not cfg.warmup:
        out.append("on_model_change = warmup needs warmup = DURATION (how much input to replay), e.g. 30m")
    try:
        parse_date_ns(cfg.ts_floor, "ts_floor")
    except ConfigError as exc:
        out.append(str(exc))
    try:
        if cfg.kafka_client in KAFKA_CLIENTS:  # an unknown one is said above, with the choices
            check_kafka_client(cfg.kafka_client)
    except ConfigError as exc:
        out.append(str(exc))
    host, _, port = cfg.metrics_address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        out.append(f"metrics_address {cfg.metrics_address!r} is not host:port, e.g. 127.0.0.1:9108")
    if cfg.security_protocol.startswith("SASL") and not cfg.sasl_mechanism:
        out.append(f"security_protocol {cfg.security_protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256 "
                   "or SCRAM-SHA-512)")
    if cfg.sasl_password and cfg.sasl_password_file:
        out.append("give sasl_password or sasl_password_file, not both")
    try:
        cfg.checkpoint_key()
    except ConfigError as exc:
        out.append(str(exc))
    for name in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(cfg, name)
        if path and not Path(path).is_file():
            out.append(f"{name} {path!r} does not exist or is not a file")
    return out


def candidate_problems(cfg: RunConfig) -> list[str]:
    """The candidate models (at most MAX_CANDIDATES, each bundle directory once, the primary's included) and the
    shadow topic their forecasts go to (a valid topic name, none of the run's other topics). Without candidates
    and without shadow_topic set, nothing is checked: a config that does not use them is never refused for them."""
    out: list[str] = []
    if len(cfg.candidates) > MAX_CANDIDATES:
        out.append(f"candidates: {len(cfg.candidates)} given, at most {MAX_CANDIDATES} (every candidate steps "
                   f"every batch again)")
    seen = {os.path.realpath(cfg.model): "the primary model (model)"} if cfg.model else {}
    for i, candidate in enumerate(cfg.candidates, start=1):
        where = os.path.realpath(candidate.model)
        if where in seen:
            out.append(f"candidate {i} ({candidate.model}) is the bundle directory of {seen[where]}; give each "
                       f"model once")
        seen.setdefault(where, f"candidate {i}")
    if not cfg.candidates and not cfg.shadow_topic:
        return out
    shadow = cfg.shadow_output_topic
    named = f"shadow_topic {shadow!r}" + ("" if cfg.shadow_topic else " (the default: <output_topic>.shadow)")
    clash = next((what for what, topics in (("an input topic", cfg.input_topics), ("the output_topic", [cfg.output_topic]),
                                            ("the dead_letter_topic", [cfg.dead_letter_topic])) if shadow in topics), None)
    if clash:
        out.append(f"{named} is also {clash}; the candidates' forecasts need a topic of their own: set "
                   f"shadow_topic = \"NAME\"")
    elif not _GROUP_INSTANCE_ID.fullmatch(shadow):  # Kafka's rule for topic names
        out.append(f"{named} is not a Kafka topic name: 1-249 characters of ASCII letters, digits, '.', '_' and "
                   f"'-', and not '.' or '..'")
    return out


def range_problems(cfg: RunConfig) -> list[str]:
    """Each key of :data:`RANGES` that is not finite or lies outside its range (durations: parsed first)."""
    out = []
    for name, r in RANGES.items():
        value = getattr(cfg, name)
        if r.unit == "duration":
            if value:
                try:
                    parse_duration_ns(value, name, int(r.lo), int(r.hi))
                except ConfigError as exc:
                    out.append(str(exc))
            continue
        if not math.isfinite(value):
            out.append(f"{name} = {value!r} is not a finite number; give {r.describe()}")
        elif not r.lo <= value <= r.hi:
            out.append(f"{name} = {value!r} is outside {r.describe()} ({r.why})")
    return out
