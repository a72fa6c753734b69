"""Publish a tick table to a topic: keyed by instrument, paced by event time.

Each tick becomes one schema-v1 JSON message (see ``pipeline.wire.ticks``) whose
Kafka timestamp is the tick's event time (ms). With ``speed`` X > 0 the gaps
between ticks are replayed X times faster than they happened; with 0 the
ticks go out as fast as the producer takes them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from kafka import KafkaProducer
from tqdm import tqdm

from operators.validation import NUMERIC_COLUMNS
from pipeline.waiting import pause


@dataclass(frozen=True)
class ReplayStats:
    messages: int
    seconds: float


def encode_ticks(ticks: pa.Table) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp_ms) per tick, schema v1."""
    names = ticks.column("instrument").to_pylist()
    ts = ticks.column("ts").to_pylist()
    cols = {c: ticks.column(c).to_pylist() for c in NUMERIC_COLUMNS if c in ticks.schema.names}
    quoted = {n: json.dumps(n) for n in set(names) if n is not None}
    out = []
    for i, (name, t) in enumerate(zip(names, ts)):
        parts = [f'"v":1,"instrument":{quoted[name]}' if name is not None else '"v":1', f'"ts":{t}']
        for c, values in cols.items():
            v = values[i]
            if v is not None:
                parts.append(f'"{c}":{_number(v)}')
        out.append(((name or "").encode(), ("{" + ",".join(parts) + "}").encode(),
                    max(int(t) // 1_000_000, 0) if t is not None else None))
    return out


def _number(v: float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return repr(v)


def replay(ticks: pa.Table, topic: str, producer: KafkaProducer, speed: float = 0.0, progress: bool = True,
           stop=None) -> ReplayStats:
    messages = encode_ticks(ticks)
    ts = ticks.column("ts").to_numpy(zero_copy_only=False).astype(np.float64)
    t0_event = np.nanmin(ts) if len(ts) else 0.0
    started = time.monotonic()
    sent = 0
    with tqdm(total=len(messages), unit="tick", unit_scale=True, disable=not progress, desc=f"replay -> {topic}",
              mininterval=0.5) as bar:
        for i, (key, value, ts_ms) in enumerate(messages):
            if stop is not None and stop.is_set():
                break
            if speed > 0 and np.isfinite(ts[i]):
                due = started + (ts[i] - t0_event) / 1e9 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    producer.flush()
                    if not pause(delay, stop=stop):
                        break
            producer.send(topic, key=key, value=value, timestamp_ms=ts_ms)
            sent += 1
            if i % 1000 == 999:
                bar.update(1000)
        producer.flush()
        bar.update(sent - bar.n)
    return ReplayStats(sent, time.monotonic() - started)


def replay_to_kafka(ticks: pa.Table, topic: str, bootstrap_servers: str, *, speed: float,
                    progress: bool = True, security: dict | None = None,
                    kafka_client: str = "kafka-python") -> ReplayStats:
    """``tickcast replay``: :func:`replay` through a producer of its own (acks=all; kafka-python's or
    librdkafka's, ``kafka_client``), closed afterwards."""
    from kafka.errors import KafkaError  # noqa: PLC0415

    from pipeline.config import ConfigError  # noqa: PLC0415
    from pipeline.kafka.tls import check_tls  # noqa: PLC0415
    from pipeline.kafka.clients import make_clients  # noqa: PLC0415

    check_tls(bootstrap_servers, security or {})
    try:
        producer = make_clients(kafka_client).producer(bootstrap_servers=bootstrap_servers.split(","), acks="all", linger_ms=5,
                                 batch_size=256 * 1024, **(security or {}))
    except KafkaError as exc:
        raise ConfigError(f"cannot reach Kafka at {bootstrap_servers}: {exc}; is the broker running?") from None
    try:
        return replay(ticks, topic, producer, speed=speed, progress=progress)
    finally:
        producer.close(timeout=10)
