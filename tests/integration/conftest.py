"""A real Kafka-protocol broker for the session: external (KAFKA_BOOTSTRAP_SERVERS) or embedded."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.support.s3 import s3_server  # noqa: F401 - a real S3 endpoint (moto's server) for the session


@pytest.fixture(scope="session")
def kafka_bootstrap():
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from pipeline.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


# The Kafka client libraries `tickcast run` can use (kafka_client); the guarantee tests run under each.
KAFKA_CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request) -> str:
    """Each client in turn; a test passes ``"--kafka-client", kafka_client`` to `tickcast run`."""
    return request.param


@pytest.fixture
def topic_factory(kafka_bootstrap):
    from pipeline.kafka.broker import create_topics

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topics(kafka_bootstrap, {name: partitions})
        return name

    return make
