"""CatchUp against the broker, under each client library: a transactional topic (its commit markers leave
holes in the offsets) read up to a target that moves, every record before it stepped once, in order, none at
or after it. (The embedded broker does not hide aborted records from a read_committed reader, see
tests/support/txlog.py, so the transactions here all commit.)"""

from __future__ import annotations

import uuid

from kafka import KafkaProducer
from kafka.structs import TopicPartition

from pipeline.config import RunConfig
from pipeline.kafka.clients import make_clients
from pipeline.live.catchup import CatchUp, open_catchup_consumer
from pipeline.metrics import Metrics


def _transactions(bootstrap: str, topic: str) -> list[bytes]:
    """Five committed transactions of three records on partition 0 (offsets 4t..4t+2, a marker at 4t+3); the
    values, in order."""
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    p.init_transactions()
    committed = []
    for t in range(5):
        p.begin_transaction()
        values = [f"t{t}-{i}".encode() for i in range(3)]
        for v in values:
            p.send(topic, v, key=b"k", partition=0)
        p.commit_transaction()
        committed += values
    p.close()
    return committed


def _read(cu: CatchUp, tp: TopicPartition, target: int, seen: list, rounds: int = 600) -> None:
    def step(records):
        for r in records:
            assert r.offset < target, "stepped a record at or after the target"
            seen.append((r.offset, r.value))

    for _ in range(rounds):
        if cu.advance({tp: target}, step, 2):
            return
    raise AssertionError(f"did not reach offset {target}; at {cu.position(tp)}")


def test_a_transactional_topic_is_read_to_a_moving_target_once_and_in_order(kafka_bootstrap, topic_factory,
                                                                            kafka_client):
    topic = topic_factory(1, prefix="catchup")
    committed = _transactions(kafka_bootstrap, topic)
    cfg = RunConfig(model="m", bootstrap_servers=kafka_bootstrap, processing="exactly_once",
                    kafka_client=kafka_client)
    clients = make_clients(kafka_client)
    metrics = Metrics()
    cu = CatchUp(lambda: open_catchup_consumer(clients, cfg), metrics, candidate="cand")
    tp = TopicPartition(topic, 0)
    end = 5 * 4  # five transactions of three records and a marker each
    seen: list = []
    cu.begin(tp, 0)
    _read(cu, tp, 6, seen)  # inside the second transaction
    assert [v for _, v in seen] == committed[:5]
    assert cu.pending() == set()
    cu.begin(tp, 6)
    _read(cu, tp, 12, seen)  # the last offset before the target is a marker: reached without a record at 11
    assert [v for _, v in seen] == committed[:9]
    cu.begin(tp, 12)
    _read(cu, tp, end, seen)
    offsets = [o for o, _ in seen]
    assert [v for _, v in seen] == committed and offsets == sorted(set(offsets))
    assert metrics.registry.get_sample_value("tickcast_candidate_catchup_records_total",
                                             {"candidate": "cand"}) == len(committed)
    cu.close()
