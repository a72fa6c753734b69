"""kafka-python's names in librdkafka's terms, for the adapter in ``pipeline.kafka.confluent``: client options
(``consumer_config``, ``producer_config``) and errors (``kafka_error``).

Options: each kafka-python keyword argument the runtime passes has a librdkafka property; one without is refused
(TypeError), so a new runtime option cannot be dropped quietly. Errors: librdkafka's broker codes are the Kafka
protocol's, the numbers ``kafka.errors.for_code`` knows; its local codes (negative) map to the kafka-python class
of the same meaning, so retries and ``publish_error_reason`` judge both clients alike.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import confluent_kafka as ck
from kafka import errors as kerr

LIBRDKAFKA_LOG = logging.getLogger("tickcast.kafka")  # librdkafka's own log lines
_E = ck.KafkaError
# librdkafka's local error codes (negative) -> the kafka-python class of the same meaning. Broker codes (positive)
# are Kafka protocol codes, the same numbers kafka.errors.for_code knows.
LOCAL_ERRORS = {
    _E._TIMED_OUT: kerr.KafkaTimeoutError, _E._MSG_TIMED_OUT: kerr.KafkaTimeoutError,
    _E._TRANSPORT: kerr.KafkaConnectionError, _E._ALL_BROKERS_DOWN: kerr.KafkaConnectionError,
    _E._RESOLVE: kerr.KafkaConnectionError, _E._FENCED: kerr.ProducerFencedError,
    _E._STATE: kerr.IllegalStateError, _E._UNKNOWN_TOPIC: kerr.UnknownTopicOrPartitionError,
    _E._UNKNOWN_PARTITION: kerr.UnknownTopicOrPartitionError, _E._ASSIGNMENT_LOST: kerr.CommitFailedError,
}
# A commit refused because the group moved on: kafka-python raises CommitFailedError for these.
COMMIT_REFUSED = {_E.REBALANCE_IN_PROGRESS, _E.ILLEGAL_GENERATION, _E.UNKNOWN_MEMBER_ID, _E._ASSIGNMENT_LOST}


def kafka_error(err: ck.KafkaError, commit: bool = False) -> kerr.KafkaError:
    """The kafka.errors exception for a librdkafka error (``commit``: a commit's refusal is CommitFailedError)."""
    code = err.code()
    text = f"{err.name()}: {err.str()}"
    if commit and code in COMMIT_REFUSED:
        return kerr.CommitFailedError(text)
    if code in LOCAL_ERRORS:
        return LOCAL_ERRORS[code](text)
    if code > 0:
        return kerr.for_code(code)(text)
    exc = kerr.KafkaError(text)  # another local error: librdkafka says whether it is worth retrying
    exc.retriable = err.retriable() and not err.fatal()
    exc.fatal = err.fatal()  # the client instance cannot go on (e.g. a static member fenced)
    return exc


def raise_kafka_error(exc: ck.KafkaException, commit: bool = False):
    err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    if err is None:
        raise kerr.KafkaError(str(exc)) from None
    raise kafka_error(err, commit) from None


_COMMON = {"bootstrap_servers": "bootstrap.servers", "client_id": "client.id",
           "security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanism",
           "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
           "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
           "ssl_keyfile": "ssl.key.location", "ssl_password": "ssl.key.password"}
_CONSUMER = {**_COMMON, "group_id": "group.id", "group_instance_id": "group.instance.id",
             "enable_auto_commit": "enable.auto.commit",
             "isolation_level": "isolation.level", "auto_offset_reset": "auto.offset.reset",
             "max_partition_fetch_bytes": "max.partition.fetch.bytes", "session_timeout_ms": "session.timeout.ms",
             "heartbeat_interval_ms": "heartbeat.interval.ms", "fetch_max_wait_ms": "fetch.wait.max.ms",
             "request_timeout_ms": "socket.timeout.ms"}
_PRODUCER = {**_COMMON, "acks": "acks", "linger_ms": "linger.ms", "retries": "retries",
             "max_in_flight_requests_per_connection": "max.in.flight", "batch_size": "batch.size",
             "enable_idempotence": "enable.idempotence", "transactional_id": "transactional.id",
             "transaction_timeout_ms": "transaction.timeout.ms", "request_timeout_ms": "request.timeout.ms",
             "allow_auto_create_topics": "allow.auto.create.topics", "delivery_timeout_ms": "message.timeout.ms"}
# Handled by the adapter itself (not librdkafka properties).
_CONSUMER_OWN = {"max_poll_records", "fetch_max_bytes"}
_PRODUCER_OWN = {"max_block_ms", "partitioner"}


def _translate(config: dict, table: dict, own: set, what: str) -> dict:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in own or value is None:
            continue
        if key not in table:
            raise TypeError(f"the confluent {what} has no translation for kafka-python option {key!r}")
        if key == "bootstrap_servers" and not isinstance(value, str):
            value = ",".join(value)
        out[table[key]] = value
    return out


def consumer_config(config: dict) -> dict:
    """librdkafka consumer properties for kafka-python ``KafkaConsumer`` keyword arguments."""
    out = _translate(config, _CONSUMER, _CONSUMER_OWN, "consumer")
    fetch = config.get("fetch_max_bytes")
    if fetch:
        # fetch_max_bytes is the runtime's memory cap: librdkafka's prefetch queue gets the same bound.
        out.update({"fetch.max.bytes": fetch, "queued.max.messages.kbytes": max(1, fetch // 1024),
                    "receive.message.max.bytes": max(100_000_000, fetch + 512)})
    out.setdefault("enable.auto.commit", True)
    if "group.id" not in out:
        # No group (manual assignment only): confluent-kafka insists on a group.id; one of its own, never joined
        # or committed to, so no real group is touched.
        out["group.id"] = f"tickcast-no-group-{uuid.uuid4().hex}"
        out["enable.auto.commit"] = False
    out["enable.auto.offset.store"] = False  # offsets are committed by hand, explicitly
    out["logger"] = LIBRDKAFKA_LOG
    return out


def producer_config(config: dict) -> dict:
    """librdkafka producer properties for kafka-python ``KafkaProducer`` keyword arguments."""
    out = _translate(config, _PRODUCER, _PRODUCER_OWN, "producer")
    # kafka-python's key partitioner is the Java client's murmur2 rule: librdkafka's murmur2_random is the same.
    out["partitioner"] = "murmur2_random"
    out.setdefault("message.max.bytes", 1_048_576)  # kafka-python's max_request_size: the same size refusals
    out.setdefault("message.timeout.ms", 120_000)  # kafka-python's delivery_timeout_ms
    if "request.timeout.ms" in out:
        out["message.timeout.ms"] = max(out["message.timeout.ms"], out["request.timeout.ms"] + 1)
    if "transaction.timeout.ms" in out:  # librdkafka: a record may not outlive its transaction
        out["message.timeout.ms"] = min(out["message.timeout.ms"], out["transaction.timeout.ms"])
    out["logger"] = LIBRDKAFKA_LOG
    return out
