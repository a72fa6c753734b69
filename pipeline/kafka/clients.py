"""Where Kafka clients come from: a factory per client library, the seam between tickcast and the library.

``KafkaClients`` makes kafka-python's clients; ``pipeline.kafka.confluent.ConfluentClients`` makes librdkafka
ones behind the same methods (``kafka_client = confluent``, chosen by ``make_clients``);
``tests/support/fake_kafka`` makes in-memory ones, so the real loop runs without a broker.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer


class KafkaClients:
    """Makes the run's Kafka clients: kafka-python's ``KafkaConsumer`` and ``KafkaProducer``."""

    def consumer(self, **config) -> Any:
        return KafkaConsumer(**config)

    def producer(self, **config) -> Any:
        return KafkaProducer(**config)


def make_clients(kind: str = "kafka-python") -> Any:
    """The factory for ``kafka_client``: kafka-python's (the default) or librdkafka's (``confluent``)."""
    if kind == "confluent":
        from pipeline.kafka.confluent import ConfluentClients  # noqa: PLC0415 - an optional dependency

        return ConfluentClients()
    return KafkaClients()
