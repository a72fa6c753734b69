"""The tick topics tickcast creates bound their records' CreateTime at the broker
(``message.timestamp.after.max.ms``): the record timestamp the ``ts_ahead`` check trusts is then the
broker's word too, not only the producer's."""

from __future__ import annotations

import os
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from pipeline.kafka.broker import INPUT_TOPIC_CONFIG, create_topics

T2096_MS = 3_976_300_800_000


def test_created_tick_topics_ask_the_broker_to_bound_create_time(kafka_bootstrap, monkeypatch):
    sent = []
    real = KafkaAdminClient.create_topics

    def recording(self, new_topics, *args, **kwargs):
        sent.extend(new_topics)
        return real(self, new_topics, *args, **kwargs)

    monkeypatch.setattr(KafkaAdminClient, "create_topics", recording)
    name = f"ticks-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {name: 1}, configs={name: INPUT_TOPIC_CONFIG})  # the broker accepts it
    (topic,) = sent
    assert topic.name == name and topic.topic_configs == {"message.timestamp.after.max.ms": "3600000"}


@pytest.mark.skipif(not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                    reason="the embedded broker (tansu) accepts the topic config but does not enforce it "
                           "(shared/broker.md deviations); set KAFKA_BOOTSTRAP_SERVERS to an Apache Kafka >= 3.6")
def test_apache_kafka_refuses_a_record_dated_2096_on_a_created_tick_topic(kafka_bootstrap):
    name = f"ticks-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {name: 1}, configs={name: INPUT_TOPIC_CONFIG})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, retries=0)
    try:
        with pytest.raises(KafkaError, match="(?i)timestamp"):
            producer.send(name, b'{"instrument":"A","ts":3976300800000000000,"price":1}',
                          timestamp_ms=T2096_MS).get(timeout=30)
    finally:
        producer.close()
