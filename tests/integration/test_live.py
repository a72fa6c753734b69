"""The live pipeline against a real broker over TCP, with `tickcast run` as a real process."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid

import pyarrow as pa
import pytest

from kafka.partitioner.default import murmur2

from operators.forecaster import Forecaster
from pipeline.wire.forecasts import decode_forecast_message
from pipeline.wire.schemas import FORECAST_MESSAGE_SCHEMA
from pipeline.files.synthetic import generate_ticks
from tests.support.live import RunProcess, produce, tick_messages
from tests.support.readers import read_all


def _names(prefix: str) -> tuple[str, str, str, str]:
    u = uuid.uuid4().hex[:8]
    return f"{prefix}-in-{u}", f"{prefix}-out-{u}", f"{prefix}-dlq-{u}", f"{prefix}-g-{u}"


@pytest.fixture
def topics(kafka_bootstrap):
    from pipeline.kafka.broker import create_topics

    def make(prefix: str, partitions: int = 1):
        tin, tout, dlq, group = _names(prefix)
        create_topics(kafka_bootstrap, {tin: partitions, tout: 1, dlq: 1})
        return tin, tout, dlq, group

    return make


def _offline_forecasts(bundle, ticks: pa.Table) -> dict[int, float]:
    """The file backtest's numbers: the operator over the whole table in one batch, by row."""
    res = Forecaster(bundle).step(ticks)
    return dict(zip(res.rows.tolist(), res.forecasts.tolist()))


def _assert_equal_to_offline(bundle, ticks: pa.Table, messages) -> None:
    """Each forecast (input on one partition, so offset = row) equals the one-process file backtest's."""
    expected = _offline_forecasts(bundle, ticks)
    scale = bundle.normalisation.target_std
    got = {json.loads(m.value())["offset"]: json.loads(m.value())["forecast"] for m in messages}
    assert got.keys() == expected.keys()
    for row, value in got.items():
        assert value / scale == pytest.approx(expected[row] / scale, rel=1e-5, abs=1e-5), row


@pytest.mark.parametrize("max_batch_ticks, n_ticks, kafka_client, static", [
    (1, 300, "kafka-python", False), (37, 2000, "kafka-python", True), (5000, 2000, "kafka-python", False),
    (37, 2000, "confluent", True)])  # batch sizes, the client and the membership are independent
def test_forecasts_through_kafka_equal_the_file_backtest(kafka_bootstrap, topics, bundle, max_batch_ticks, n_ticks,
                                                         kafka_client, static):
    tin, tout, dlq, group = topics("e2e")
    ticks = generate_ticks(12, n_ticks, seed=max_batch_ticks, bad_fraction=0.0)
    membership = ["--group-instance-id", f"{group}-member-0"] if static else []
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group,
                           "--max-batch-ticks", str(max_batch_ticks), "--kafka-client", kafka_client, *membership)
    try:
        assert run.wait_for("starting")["kafka_client"] == kafka_client
        produce(kafka_bootstrap, tin, tick_messages(ticks), partition=0)
        got = read_all(kafka_bootstrap, tout, 1, expected=n_ticks)
        assert len(got) == n_ticks
    finally:
        assert run.stop() == 0
    expected = _offline_forecasts(bundle, ticks)
    scale = bundle.normalisation.target_std
    for msg in got:
        body = json.loads(msg.value())
        assert msg.key().decode() == body["instrument"]
        assert body["model_version"] == bundle.model_version and body["partition"] == 0
        row = body["offset"]  # one input partition: the offset is the row of the tick
        assert body["ts"] == ticks.column("ts")[row].as_py()
        assert body["instrument"] == ticks.column("instrument")[row].as_py()
        assert abs(body["forecast"] - expected[row]) <= 1e-5 * scale, (row, body["forecast"], expected[row])
    assert sorted(json.loads(m.value())["offset"] for m in got) == list(range(n_ticks))


def _read_arrow_forecasts(bootstrap: str, topic: str, partitions: int, expected: int):
    """(partition, headers, table) of every Arrow forecast message until ``expected`` forecasts (read_committed)."""
    msgs = read_all(bootstrap, topic, partitions, expected=expected, isolation="read_committed",
                    weight=lambda msg: decode_forecast_message(msg.value()).num_rows)
    return [(msg.partition(), dict(msg.headers() or []), decode_forecast_message(msg.value())) for msg in msgs]


def _batches_settled(run: RunProcess, ticks: int, timeout: float = 60.0) -> int:
    """The number of micro-batches the process formed, once all ``ticks`` are accounted in its metrics."""
    deadline = time.monotonic() + timeout
    while run.metric("tickcast_batch_ticks_sum") < ticks:
        assert time.monotonic() < deadline, f"the batches' metrics never accounted {ticks} ticks"
        time.sleep(0.2)
    return int(run.metric("tickcast_batch_ticks_count"))


@pytest.mark.parametrize("processing", ["at_least_once", "exactly_once"])
def test_arrow_output_carries_every_forecast_on_its_instruments_partition(kafka_bootstrap, bundle, processing):
    from pipeline.kafka.broker import create_topics

    tin, tout, dlq, group = _names("arrow")
    create_topics(kafka_bootstrap, {tin: 1, tout: 3, dlq: 1})
    n = 3000
    ticks = generate_ticks(12, n, seed=11, bad_fraction=0.0)
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, "--output-format", "arrow",
                           "--processing", processing, "--max-batch-ticks", "400")
    try:
        produce(kafka_bootstrap, tin, tick_messages(ticks), partition=0)
        got = _read_arrow_forecasts(kafka_bootstrap, tout, 3, n)
        batches = _batches_settled(run, n)
    finally:
        assert run.stop() == 0
    # How the ticks fell into batches depends on timing; what a batch publishes does not: one message per
    # output partition it has forecasts for (400 rows fit in one), so never more than 3 a batch.
    assert len(got) <= 3 * batches, f"{len(got)} messages from {batches} batches: a message per forecast?"
    assert len(got) < n, "a message carries a batch's forecasts, not one each"
    for _, headers, table in got:
        assert headers["content-type"] == b"application/vnd.apache.arrow.stream"
        assert table.schema.remove_metadata() == FORECAST_MESSAGE_SCHEMA
        meta = table.schema.metadata
        assert meta[b"model_version"].decode() == bundle.model_version
        assert int(meta[b"horizon_ticks"]) == bundle.horizon and meta[b"v"] == b"1"
    everything = pa.concat_tables([t.append_column("out_partition", pa.array([p] * t.num_rows, pa.int32()))
                                   for p, _, t in got]).to_pylist()
    assert sorted(r["offset"] for r in everything) == list(range(n)), "each tick's forecast once"
    expected = _offline_forecasts(bundle, ticks)
    scale = bundle.normalisation.target_std
    placed: dict[str, set] = {}
    last_offset: dict[str, int] = {}
    for r in everything:  # messages in partition order as read: each instrument's rows stay in tick order
        row = r["offset"]
        assert (r["instrument"], r["ts"], r["topic"], r["partition"]) == (
            ticks.column("instrument")[row].as_py(), ticks.column("ts")[row].as_py(), tin, 0)
        assert abs(r["forecast"] - expected[row]) <= 1e-5 * scale, (row, r["forecast"], expected[row])
        placed.setdefault(r["instrument"], set()).add(r["out_partition"])
        assert row > last_offset.get(r["instrument"], -1), "an instrument's forecasts in tick order"
        last_offset[r["instrument"]] = row
    # The partition a JSON message keyed by the instrument goes to (the Java client's murmur2).
    for name, parts in placed.items():
        assert parts == {(murmur2(name.encode()) & 0x7FFFFFFF) % 3}, (name, parts)
    assert len({next(iter(v)) for v in placed.values()}) > 1, "12 instruments spread over the 3 partitions"


BAD_MESSAGES = [
    ("bad_utf8", b"A", b'{"ts": 1, "price": "\xff\xfe"}'),
    ("bad_json", b"A", b'{"ts": 1700000000000000000, "price": '),
    ("not_an_object", b"A", b"[1, 2, 3]"),
    ("missing_field", b"A", b'{"v": 1, "instrument": "A", "price": 10.0}'),
    ("wrong_type", b"A", b'{"v": 1, "instrument": "A", "ts": "noon", "price": 10.0}'),
    ("unknown_schema_version", b"A", b'{"v": 9, "instrument": "A", "ts": 1700000000000000000, "price": 10.0}'),
    ("key_mismatch", b"B", b'{"v": 1, "instrument": "A", "ts": 1700000000000000000, "price": 10.0}'),
    ("oversized_key", b"K" * 300, b'{"v": 1, "ts": 1700000000000000000, "price": 10.0}'),
    ("oversized_value", b"A", b'{"v": 1, "pad": "' + b"x" * 5000 + b'"}'),
    ("bad_json", b"A", b'{"v": 1, "instrument": "A", "ts": 1700000000000000000, "price": NaN}'),  # not JSON
    ("bad_json", b"A", b'{"v": 1, "instrument": "A", "ts": 1700000000000000000, "price": Infinity}'),
    ("non_finite_price", b"A", b'{"v": 1, "instrument": "A", "ts": 1700000000000000000, "price": 1e400}'),
    ("non_positive_price", b"A", b'{"v": 1, "instrument": "A", "ts": 1700000000000000000, "price": -3.5}'),
    ("negative_size", b"A", b'{"v": 1, "instrument": "A", "ts": 1700000000000000000, "price": 1.0, "size": -1}'),
    ("bad_timestamp", b"A", b'{"v": 1, "instrument": "A", "ts": -5, "price": 10.0}'),
    ("ts_ahead", b"A", b'{"v": 1, "instrument": "A", "ts": 9000000000000000000, "price": 10.0}'),
    ("ts_ahead", b"A", b'{"v": 1, "instrument": "A", "ts": 4070908800000000000, "price": 10.0}'),  # 2099
    ("ts_unit_ms", b"A", b'{"v": 1, "instrument": "A", "ts": 1700000000000, "price": 10.0}'),
    ("out_of_order", b"A", b'{"v": 1, "instrument": "A", "ts": 1600000000000000000, "price": 10.0}'),
    ("bad_json", b"A", None),
]


def test_bad_input_goes_to_the_dead_letter_topic_and_valid_ticks_around_it_are_forecast(
        kafka_bootstrap, topics, bundle, kafka_client):
    tin, tout, dlq, group = topics("bad")
    good = [(b"A", json.dumps({"v": 1, "instrument": "A", "ts": 1_700_000_000_000_000_000 + i,
                               "price": 10.0 + i / 100, "size": 5}).encode()) for i in range(len(BAD_MESSAGES) + 1)]
    stream = [good[0]]
    for (_, key, value), g in zip(BAD_MESSAGES, good[1:]):
        stream += [(key, value), g]
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, "--max-batch-ticks", "1000",
                           "--kafka-client", kafka_client)
    try:
        assert run.wait_for("starting")["kafka_client"] == kafka_client
        produce(kafka_bootstrap, tin, stream, partition=0)
        dead = read_all(kafka_bootstrap, dlq, 1, expected=len(BAD_MESSAGES))
        forecasts = read_all(kafka_bootstrap, tout, 1, expected=len(good))
        # The counters are updated once the batch settles: wait until they account every bad message.
        run.wait_metric("tickcast_dead_letters_total", lambda v: v >= len(BAD_MESSAGES))
        counts = {reason: run.metric("tickcast_dead_letters_total", reason=reason)
                  for reason in {r for r, _, _ in BAD_MESSAGES}}
        assert run.proc.poll() is None, "the consumer must survive every bad message"
    finally:
        assert run.stop() == 0
    assert len(forecasts) == len(good)
    assert sorted(json.loads(m.value())["ts"] for m in forecasts) == [json.loads(v)["ts"] for _, v in good]
    assert len(dead) == len(BAD_MESSAGES)
    by_offset = {m.offset(): m for m in dead}
    source_offsets = sorted(int(dict(m.headers())["tickcast.source"].decode().rsplit("/", 1)[1]) for m in dead)
    assert source_offsets == [2 * i + 1 for i in range(len(BAD_MESSAGES))]
    for m in by_offset.values():
        headers = dict(m.headers())
        src = int(headers["tickcast.source"].decode().rsplit("/", 1)[1])
        reason, key, value = BAD_MESSAGES[(src - 1) // 2]
        assert headers["tickcast.reason"].decode() == reason, (src, headers)
        assert m.key() == key and (m.value() or b"") == (value or b""), "original bytes kept"
    expected = {}
    for r, _, _ in BAD_MESSAGES:
        expected[r] = expected.get(r, 0) + 1
    assert counts == expected


def test_sigterm_commits_what_was_published_and_a_restart_resumes_there(kafka_bootstrap, topics, bundle, tmp_path):
    """Checkpoint on shutdown, restore on start: the restarted process continues the same state."""
    tin, tout, dlq, group = topics("resume")
    ticks = generate_ticks(5, 1200, seed=5, bad_fraction=0.0)
    msgs = tick_messages(ticks)
    store = ["--checkpoint-uri", str(tmp_path / "ckpt")]
    first = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, *store)
    try:
        produce(kafka_bootstrap, tin, msgs[:700], partition=0)
        assert len(read_all(kafka_bootstrap, tout, 1, expected=700)) == 700
    finally:
        started = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 25
    stopped = first.wait_for("stopped")
    assert stopped["ticks"] == 700
    second = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, *store)
    try:
        restored = second.wait_for("partition restored from checkpoint")
        assert (restored["checkpoint_offset"], restored["committed"], restored["replay"]) == (700, 700, 0)
        assert restored["rows"] == 5
        produce(kafka_bootstrap, tin, msgs[700:], partition=0)
        out = read_all(kafka_bootstrap, tout, 1, expected=1200, timeout=60)
    finally:
        assert second.stop(signal.SIGINT) == 0
    offsets = sorted(json.loads(m.value())["offset"] for m in out)
    assert offsets == list(range(1200)), "no gaps and no tick forecast twice across the restart"
    assert second.wait_for("stopped")["ticks"] == 500
    _assert_equal_to_offline(bundle, ticks, out)


def test_without_checkpoints_a_restart_says_loudly_that_state_is_empty(kafka_bootstrap, topics, bundle):
    tin, tout, dlq, group = topics("nockpt")
    msgs = tick_messages(generate_ticks(5, 300, seed=6, bad_fraction=0.0))
    off = ["--checkpoint-uri", ""]
    first = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, *off)
    try:
        produce(kafka_bootstrap, tin, msgs[:200], partition=0)
        assert len(read_all(kafka_bootstrap, tout, 1, expected=200)) == 200
    finally:
        assert first.stop(signal.SIGTERM) == 0
    second = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, *off)
    try:
        warn = second.wait_for("partition assigned with EMPTY state: its instruments start from zero state")
        assert warn["level"] == "warning" and warn["committed"] == 200
        assert "checkpoints are off" in warn["why"]
        produce(kafka_bootstrap, tin, msgs[200:], partition=0)
        out = read_all(kafka_bootstrap, tout, 1, expected=300, timeout=60)
    finally:
        assert second.stop(signal.SIGINT) == 0
    assert sorted(json.loads(m.value())["offset"] for m in out) == list(range(300))


def test_two_consumers_in_one_group_split_the_partitions(kafka_bootstrap, topics, bundle):
    tin, tout, dlq, group = topics("split", partitions=4)
    a = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group)
    b = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pa_, pb = a.metric("tickcast_assigned_partitions"), b.metric("tickcast_assigned_partitions")
            if pa_ + pb == 4 and pa_ > 0 and pb > 0:
                break
            time.sleep(0.5)
        assert (pa_, pb) in {(1, 3), (2, 2), (3, 1)}, (pa_, pb)
        ticks = generate_ticks(40, 2000, seed=9, bad_fraction=0.0)
        msgs = tick_messages(ticks)
        for p in range(4):
            produce(kafka_bootstrap, tin, msgs[p::4], partition=p)
        out = read_all(kafka_bootstrap, tout, 1, expected=2000)
        assert len(out) == 2000
        deadline = time.monotonic() + 60
        while (ticks_a := a.metric("tickcast_ticks_received_total")) + (
                ticks_b := b.metric("tickcast_ticks_received_total")) < 2000 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert a.stop() == 0 and b.stop() == 0
    assert ticks_a > 0 and ticks_b > 0 and ticks_a + ticks_b == 2000
    parts = {json.loads(m.value())["partition"] for m in out}
    assert parts == {0, 1, 2, 3}


def test_metrics_endpoint_scrapes_and_passes_promtool(kafka_bootstrap, topics, bundle):
    tin, tout, dlq, group = topics("metrics")
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group)
    try:
        produce(kafka_bootstrap, tin, tick_messages(generate_ticks(3, 200, seed=1, bad_fraction=0.0)), partition=0)
        assert len(read_all(kafka_bootstrap, tout, 1, expected=200)) == 200
        run.wait_metric("tickcast_end_to_end_latency_seconds_count", lambda v: v >= 200)
        status, text = run.scrape("/metrics")
        health, _ = run.scrape("/healthz")
        ready, _ = run.scrape("/readyz")
        missing, _ = run.scrape("/nope")
    finally:
        assert run.stop() == 0
    assert (status, health, ready, missing) == (200, 200, 200, 404)
    for name in ("tickcast_ticks_received_total", "tickcast_forecasts_published_total",
                 "tickcast_step_duration_seconds_bucket", "tickcast_end_to_end_latency_seconds_count",
                 "tickcast_consumer_lag_records", "tickcast_state_rows", "tickcast_state_bytes",
                 "tickcast_model_info", "process_resident_memory_bytes", "tickcast_batch_ticks_bucket"):
        assert name in text, name
    assert "instrument=" not in text, "no per-instrument labels"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`); .ci/run installs it")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_unreachable_broker_is_retried_loudly_not_fatal(bundle, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = RunProcess.start(f"127.0.0.1:{port}", str(bundle.path), "in", "out", "dlq", "g",
                           "--request-timeout-ms", "3000")
    try:
        warn = run.wait_for("broker unreachable; retrying", timeout=60)
        assert warn["level"] == "warning"
        assert run.proc.poll() is None
    finally:
        assert run.stop() == 0
