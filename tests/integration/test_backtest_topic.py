"""Backtests over a topic: exact time ranges from every partition, the live pipeline's numbers,
determinism, and a live group's offsets left alone."""

from __future__ import annotations

import json
import signal
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import create_topics
from tests.support.cli import tickcast
from tests.support.faults import wait_drained
from tests.support.live import RunProcess
from tests.support.readers import read_all, read_committed

DAY_NS = 86_400 * 10**9
DAY0 = np.datetime64("2026-03-02", "ns").astype(np.int64)
PARTITIONS = 3


@pytest.fixture(scope="module")
def three_days(kafka_bootstrap):
    """3 days of ticks over 3 partitions, record timestamp = event time, produced by an independent client."""
    topic = f"days-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: PARTITIONS})
    ticks = generate_ticks(9, 2400, seed=17, bad_fraction=0.0)
    ts = DAY0 + np.arange(ticks.num_rows, dtype=np.int64) * (3 * DAY_NS // ticks.num_rows)
    ticks = ticks.set_column(ticks.schema.get_field_index("ts"), "ts", pa.array(ts))
    p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for row in ticks.to_pylist():
        body = {"v": 1, **{k: v for k, v in row.items() if v is not None}}
        p.produce(topic, key=row["instrument"].encode(), value=json.dumps(body).encode(),
                  timestamp=row["ts"] // 1_000_000)
    assert p.flush(30) == 0
    return topic, ticks


def _records(bootstrap, topic):
    return read_all(bootstrap, topic, PARTITIONS, timeout=3)


def test_one_days_range_reads_exactly_that_days_records_from_every_partition(kafka_bootstrap, three_days, bundle,
                                                                              tmp_path, kafka_client):
    topic, _ = three_days
    records = _records(kafka_bootstrap, topic)
    lo, hi = (DAY0 + DAY_NS) // 1_000_000, (DAY0 + 2 * DAY_NS) // 1_000_000
    want = {(m.partition(), m.offset()) for m in records if lo <= m.timestamp()[1] < hi}
    assert {p for p, _ in want} == set(range(PARTITIONS)), "the fixture should spread the day over all partitions"
    out = tmp_path / "bt"
    tickcast("backtest", "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--from", "2026-03-03",
             "--to", "2026-03-04", "--model", str(bundle.path), "--out", str(out), "--no-plots", "--quiet",
             "--kafka-client", kafka_client)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == len(want)
    f = pq.read_table(out / "forecasts.parquet")
    got = set(zip(f.column("partition").to_pylist(), f.column("offset").to_pylist()))
    assert got == want
    ts = f.column("ts").to_numpy()
    assert ts.min() >= DAY0 + DAY_NS and ts.max() < DAY0 + 2 * DAY_NS


def test_topic_backtest_equals_the_live_pipeline_and_leaves_its_group_alone(kafka_bootstrap, three_days, bundle,
                                                                            tmp_path):
    topic, ticks = three_days
    u = uuid.uuid4().hex[:8]
    tout, dlq, group = f"bt-out-{u}", f"bt-dlq-{u}", f"bt-live-{u}"
    create_topics(kafka_bootstrap, {tout: 1, dlq: 1})
    live = RunProcess.start(kafka_bootstrap, str(bundle.path), topic, tout, dlq, group)
    try:
        wait_drained(kafka_bootstrap, tout, ticks.num_rows, timeout=120)
    finally:
        assert live.stop(signal.SIGTERM) == 0
    live_out = {(json.loads(m.value())["partition"], json.loads(m.value())["offset"]): json.loads(m.value())["forecast"]
                for m in read_committed(kafka_bootstrap, tout, 1, timeout=3)}

    def committed():
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
        offs = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        c.close()
        return [(tp.partition, tp.offset) for tp in offs]

    before = committed()
    assert sum(o for _, o in before) == ticks.num_rows
    runs = []
    for i in range(2):
        out = tmp_path / f"bt{i}"
        tickcast("backtest", "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--model", str(bundle.path),
                 "--out", str(out), "--no-plots", "--quiet", "--max-batch-ticks", str(50 + 450 * i))
        runs.append(out)
    assert committed() == before, "a backtest moved a live group's offsets"
    f = pq.read_table(runs[0] / "forecasts.parquet")
    got = dict(zip(zip(f.column("partition").to_pylist(), f.column("offset").to_pylist()),
                   f.column("forecast").to_pylist()))
    assert got.keys() == live_out.keys()
    scale = bundle.normalisation.target_std
    for key, value in got.items():
        assert value / scale == pytest.approx(live_out[key] / scale, rel=1e-5, abs=1e-5), key
    # Deterministic: the same backtest again (here with another micro-batch size, even) gives the same bytes.
    again = tmp_path / "bt-again"
    tickcast("backtest", "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--model", str(bundle.path),
             "--out", str(again), "--no-plots", "--quiet", "--max-batch-ticks", "50")
    assert (again / "forecasts.parquet").read_bytes() == (runs[0] / "forecasts.parquet").read_bytes()


def test_train_from_a_topics_time_range(kafka_bootstrap, three_days, tmp_path):
    topic, _ = three_days
    out = tmp_path / "model"
    proc = tickcast("train", "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--from", "2026-03-02",
                    "--to", "2026-03-03", "--epochs", "1", "--hidden", "8", "--window", "32", "--out", str(out))
    assert "training on 800 of 800 ticks" in proc.stderr
    meta = json.loads((out / "bundle.json").read_text())
    assert f"kafka://{kafka_bootstrap}/{topic}" in json.dumps(meta)
