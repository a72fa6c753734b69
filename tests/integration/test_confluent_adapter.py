"""The librdkafka adapter (pipeline/kafka/confluent.py) against a real broker, where its behaviour depends on
librdkafka itself rather than on the mapping the unit tests cover with fakes."""

from __future__ import annotations

import time

from pipeline.kafka import confluent


def test_delivery_reports_are_handed_over_when_asked_without_a_flush(kafka_bootstrap, topic_factory):
    """The pipelined loop commits a batch once its sends are acknowledged, asking without blocking while it
    collects the next batch: librdkafka completes nothing on its own, ``serve_deliveries`` must."""
    topic = topic_factory()
    producer = confluent.Producer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=2)
    try:
        producer.partitions_for(topic)
        sent = [producer.send(topic, key=b"k", value=str(i).encode()) for i in range(50)]
        time.sleep(1.0)  # acknowledged by the broker by now, but nobody asked
        assert not any(d.is_done for d in sent), "completed without being asked: the test proves nothing"
        deadline = time.monotonic() + 10
        while not all(d.is_done for d in sent) and time.monotonic() < deadline:
            producer.serve_deliveries()
            time.sleep(0.01)
        assert all(d.succeeded() for d in sent)
        assert sorted(d.offset for d in sent) == list(range(50))
    finally:
        producer.close()
