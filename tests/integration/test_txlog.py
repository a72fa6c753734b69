"""The read_committed reader of the exactly-once tests, against the broker: it must hide what a
Kafka read_committed reader hides, or those tests prove nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

from kafka import KafkaProducer

from pipeline.kafka.broker import create_topics
from tests.support.txlog import read_committed


def _producer(bootstrap: str, tid: str) -> KafkaProducer:
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    p.init_transactions()
    return p


def test_committed_records_only_aborted_and_killed_transactions_hidden(kafka_bootstrap):
    topic, tid = f"txlog-{uuid.uuid4().hex[:8]}", f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 2})
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    plain.send(topic, b"plain", partition=1)
    plain.flush()
    plain.close()
    p = _producer(kafka_bootstrap, tid)
    p.begin_transaction()
    p.send(topic, b"c1", partition=0)
    p.send(topic, b"c2", partition=1)
    p.commit_transaction()
    p.begin_transaction()
    p.send(topic, b"a1", partition=0)
    p.send(topic, b"a2", partition=1)
    p.flush()
    p.abort_transaction()
    p.close()
    # A producer SIGKILLed inside a transaction whose records reached the broker.
    child = ("import os, signal\nfrom kafka import KafkaProducer\n"
             f"p = KafkaProducer(bootstrap_servers={kafka_bootstrap!r}, transactional_id={tid!r})\n"
             "p.init_transactions()\np.begin_transaction()\n"
             f"p.send({topic!r}, b'k1', partition=0)\np.send({topic!r}, b'k2', partition=1)\np.flush()\n"
             "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", child], timeout=60).returncode == -signal.SIGKILL
    p = _producer(kafka_bootstrap, tid)  # its successor
    p.begin_transaction()
    p.send(topic, b"n1", partition=0)
    p.commit_transaction()
    # Another transactional producer's transaction left open: never returned.
    other = _producer(kafka_bootstrap, f"{tid}-other")
    other.begin_transaction()
    other.send(topic, b"open", partition=0)
    other.flush()
    p.begin_transaction()
    p.send(topic, b"n2", partition=1)
    p.commit_transaction()
    got = [(r.partition(), r.value()) for r in read_committed(kafka_bootstrap, topic, 2, timeout=3)]
    other.abort_transaction()
    other.close()
    p.close()
    assert got == [(0, b"c1"), (0, b"n1"), (1, b"plain"), (1, b"c2"), (1, b"n2")]
