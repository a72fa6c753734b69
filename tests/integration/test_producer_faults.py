"""Producer-side faults against a real broker: a dead letter too large, a broker stall longer than the
transaction timeout, an output topic that does not exist yet. Each ends with the forecasts of an undisturbed
run and every dead letter present (reference and assertions from tests/support/faults.py).

Tansu 0.6 (the embedded broker) ignores topic configs on create (``max.message.bytes`` is not stored, a 3 MB
record is accepted) and creates any topic a Metadata request names, whatever ``allow_auto_topic_creation``
says. So the size refusal used here is the closest real one, the producer's ``max_request_size`` (1 MiB: a
dead letter of a 1.5 MB input message), and the missing-topic test runs only against an external Kafka
(``KAFKA_BOOTSTRAP_SERVERS``, with ``auto.create.topics.enable=false``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from confluent_kafka import Producer

from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import create_topics
from tests.support.faults import (
    assert_exactly_the_reference,
    reference,
    run_args,
    wait_drained,
)
from tests.support.live import RunProcess, produce, tick_messages
from tests.support.readers import read_all, read_committed


def _produce_large(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    """One big message, compressed on the wire (small for the broker, 1.5 MB once the consumer has it)."""
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 10_000_000, "compression.type": "gzip"})
    errors = []
    p.produce(topic, key=key, value=value, partition=0, on_delivery=lambda err, _m: err and errors.append(err))
    assert p.flush(30) == 0 and not errors, errors


@pytest.mark.parametrize("processing", ["at_least_once", "exactly_once"])
def test_dead_letter_over_max_request_size_goes_out_cut_and_nothing_stalls(kafka_bootstrap, bundle, tmp_path,
                                                                           processing):
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq, group = f"big-in-{u}", f"big-out-{u}", f"big-dlq-{u}", f"big-g-{u}"
    create_topics(kafka_bootstrap, {tin: 1, tout: 1, dlq: 1})
    messages = tick_messages(generate_ticks(6, 600, seed=5, bad_fraction=0.01))
    big = b"{" + b" " * 1_500_000  # not a tick (oversized_value), 1.5 MB: over the producer's 1 MiB max_request_size
    store = tmp_path / "ckpt"
    args = (run_args(store, f"tx-{u}") if processing == "exactly_once" else
            ["--checkpoint-uri", str(store), "--checkpoint-every-batches", "3", "--max-batch-ticks", "150"])
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, *args)
    try:
        produce(kafka_bootstrap, tin, messages[:300], partition=0)
        _produce_large(kafka_bootstrap, tin, b"BIG", big)
        produce(kafka_bootstrap, tin, messages[300:], partition=0)
        inputs = read_all(kafka_bootstrap, tin, 1, timeout=3)
        assert len(inputs) == len(messages) + 1
        forecasts_ref, states_ref, dead_ref = reference(bundle, inputs, 1)
        wait_drained(kafka_bootstrap, tout, len(forecasts_ref), timeout=120)
        assert run.wait_metric("tickcast_dead_letters_truncated_total", lambda v: v >= 1) == 1
        assert run.proc.poll() is None, "the operator exited on a dead letter it could not send whole"
        run.wait_for("dead letter too large for its topic or the producer; sending it cut")
    finally:
        assert run.stop(signal.SIGTERM) == 0
    assert_exactly_the_reference(bundle, kafka_bootstrap, tin, tout, dlq, store, group, forecasts_ref, states_ref,
                                 dead_ref, 1)
    cut = [m for m in read_committed(kafka_bootstrap, dlq, 1, timeout=3) if m.key() == b"BIG"]
    assert len(cut) == 1
    headers = dict(cut[0].headers())
    assert cut[0].value() == big[:1024]
    assert headers["tickcast.truncated"] == b"true" and headers["tickcast.original_size"] == str(len(big)).encode()
    assert headers["tickcast.reason"] == b"oversized_value"
    assert headers["tickcast.source"] == f"{tin}/0/300".encode()


@pytest.mark.slow
def test_broker_stall_longer_than_the_transaction_timeout_loses_and_duplicates_nothing(bundle, tmp_path):
    """Every byte between the clients and the broker is held for 25 s (connections stay open) while a wave of
    ticks is processed with exactly-once; the transaction timeout is 8 s. The run rides it out: nothing
    fenced for good, nothing lost or doubled, liveness true throughout."""
    import urllib.request

    from tests.support.proxy import broker_behind_proxy

    with broker_behind_proxy() as proxy:
        bootstrap = proxy.address
        u = uuid.uuid4().hex[:8]
        tin, tout, dlq, group = f"stall-in-{u}", f"stall-out-{u}", f"stall-dlq-{u}", f"stall-g-{u}"
        create_topics(bootstrap, {tin: 2, tout: 1, dlq: 1})
        messages = tick_messages(generate_ticks(10, 2400, seed=43, bad_fraction=0.005))
        store = tmp_path / "ckpt"
        run = RunProcess.start(bootstrap, str(bundle.path), tin, tout, dlq, group, *run_args(store, f"tx-{u}"),
                               "--request-timeout-ms", "3000", "--transaction-timeout-ms", "8000")
        try:
            produce(bootstrap, tin, messages[:800])
            wait_drained(bootstrap, tout, 700, timeout=90)
            produce(bootstrap, tin, messages[800:1600])
            proxy.stall()
            base = run.metrics_url.rsplit("/", 1)[0]
            healthz = []
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                    healthz.append(resp.status)
                time.sleep(1)
            proxy.resume()
            assert set(healthz) == {200}, "liveness must stay true while the loop waits out the broker"
            produce(bootstrap, tin, messages[1600:])
            inputs = read_all(bootstrap, tin, 2, timeout=3)
            assert len(inputs) == len(messages)
            forecasts_ref, states_ref, dead_ref = reference(bundle, inputs, 2)
            wait_drained(bootstrap, tout, len(forecasts_ref), timeout=180)
            time.sleep(2)
            assert run.proc.poll() is None, "the operator exited instead of riding out the stall"
            assert not [ln for ln in run.lines if ln.get("event") == "stopping"]
        finally:
            code = run.stop(signal.SIGTERM)
        assert code == 0, "".join(run.raw)[-3000:]
        assert_exactly_the_reference(bundle, bootstrap, tin, tout, dlq, store, group, forecasts_ref, states_ref,
                                     dead_ref, 2)


@pytest.mark.skipif(not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                    reason="tansu creates any topic a Metadata request names: needs a Kafka with "
                           "auto.create.topics.enable=false (KAFKA_BOOTSTRAP_SERVERS)")
def test_output_topic_missing_at_start_is_waited_out_then_created(kafka_bootstrap, bundle, tmp_path):
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq, group = f"miss-in-{u}", f"miss-out-{u}", f"miss-dlq-{u}", f"miss-g-{u}"
    create_topics(kafka_bootstrap, {tin: 1, dlq: 1})  # no output topic yet
    messages = tick_messages(generate_ticks(5, 400, seed=7, bad_fraction=0.0))
    store = tmp_path / "ckpt"
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, "--checkpoint-uri", str(store),
                           "--checkpoint-every-batches", "2")
    try:
        produce(kafka_bootstrap, tin, messages, partition=0)
        run.wait_for("topic does not exist (or has no leader); waiting for it, nothing is committed", timeout=60)
        assert run.scrape("/readyz")[0] == 503 and run.scrape("/healthz")[0] == 200
        assert run.metric("tickcast_publish_errors_total", reason="topic_missing") >= 1
        assert run.metric("tickcast_offset_commits_total") == 0
        create_topics(kafka_bootstrap, {tout: 1})
        inputs = read_all(kafka_bootstrap, tin, 1, timeout=3)
        forecasts_ref, states_ref, dead_ref = reference(bundle, inputs, 1)
        wait_drained(kafka_bootstrap, tout, len(forecasts_ref), timeout=90)
        assert run.scrape("/readyz")[0] == 200
    finally:
        assert run.stop(signal.SIGTERM) == 0
    assert_exactly_the_reference(bundle, kafka_bootstrap, tin, tout, dlq, store, group, forecasts_ref, states_ref,
                                 dead_ref, 1)
