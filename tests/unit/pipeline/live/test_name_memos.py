"""The name-keyed memos of a run (the forecast encoder's JSON names, the output partitioner's placements) follow
the state table: under instrument churn with ``expire_after`` their size stays near the live instruments,
however many names have come and gone (a serving process that runs for weeks must not grow with them)."""

from __future__ import annotations

import json

from pipeline.live.clients import CachingPartitioner
from pipeline.wire.forecasts import JsonNames
from tests.support.fake_kafka import FakeBroker
from tests.support.live_loop import make_runner, run_until

T0 = 1_767_225_600_000_000_000
SEC = 1_000_000_000
GENERATIONS, PER_GENERATION = 60, 20  # 1,200 names; a generation ticks during its one second of event time


class Cluster:
    """The metadata question kafka-python's producer asks its partitioner."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def partitions_for_topic(self, topic):
        return set(range(self.counts[topic]))


def test_the_partitioner_memoises_only_its_cached_topics_and_forgets_what_it_is_told():
    p = CachingPartitioner(cached_topics=frozenset({"forecasts"}))
    cluster = Cluster({"forecasts": 3, "ticks.dlq": 3})
    keys = [f"K{i}".encode() for i in range(500)]
    placed = {k: p.partition("ticks.dlq", None, k, None, None, cluster) for k in keys}
    assert len(p) == 0, "dead-letter keys (any bytes) are not memoised"
    assert {k: p.partition("forecasts", None, k, None, None, cluster) for k in keys} == placed
    assert len(p) == 500
    p.forget("forecasts", keys[:400])
    assert len(p) == 100
    assert {k: p.partition("forecasts", None, k, None, None, cluster) for k in keys} == placed


def test_json_names_forget_drops_exactly_the_names_given():
    names = JsonNames()
    cache = names.lookup(["A", 'B"', "C"])
    assert cache['B"'] == json.dumps('B"')
    names.forget(["A", "C", "never seen"])
    assert len(names) == 1 and names.lookup(["B\""]) == {'B"': '"B\\""'}


def _churn(broker: FakeBroker) -> int:
    """Generation g's names tick twice at event second g (and a malformed message with a key of its own):
    names come and go, as order ids or short-lived contracts do."""
    n = 0
    for g in range(GENERATIONS):
        for i in range(PER_GENERATION):
            name = f"G{g:03d}-{i:02d}"
            for k in range(2):
                ts = T0 + g * SEC + k
                value = {"v": 1, "instrument": name, "ts": ts, "price": 100.0 + k, "size": 1.0}
                broker.append("ticks", i % 2, name.encode(), json.dumps(value).encode(), timestamp=ts // 1_000_000)
                n += 1
        broker.append("ticks", g % 2, f"BAD-{g}".encode(), b"{not json", timestamp=(T0 + g * SEC) // 1_000_000)
        n += 1
    return n


def test_under_churn_with_expiry_the_name_memos_stay_near_the_live_instruments(bundle):
    broker = FakeBroker({"ticks": 2, "forecasts": 3, "ticks.dlq": 1})
    total = _churn(broker)
    runner, fake = make_runner(bundle, broker, expire_after="2s", max_batch_ticks=50)
    cluster = Cluster({"forecasts": 3, "ticks.dlq": 1})

    def partition_as_kafka_python_does(producer):
        send = producer.send

        def placed(topic, key=None, value=None, headers=None, partition=None):
            if partition is None and key is not None:
                partition = runner.partitioner.partition(topic, None, key, None, value, cluster)
            return send(topic, key=key, value=value, headers=headers, partition=partition)

        producer.send = placed

    fake.on_producer = partition_as_kafka_python_does
    peak = {"names": 0, "placements": 0, "rows": 0}

    def done() -> bool:
        for k, v in (("names", len(runner.json_names)), ("placements", len(runner.partitioner)),
                     ("rows", len(runner.forecaster.state))):
            peak[k] = max(peak[k], v)
        return runner.stats.ticks >= total

    assert run_until(runner, done) == 0
    assert runner.forecaster.expired_total > GENERATIONS * PER_GENERATION // 2, "the churn expired names"
    # Rows idle for expire_after plus its grace (4 s of event time) go: some 5 generations live at once.
    live_bound = 8 * PER_GENERATION
    assert peak["rows"] <= live_bound
    assert len(runner.json_names) <= live_bound and peak["names"] <= live_bound + 50, peak
    assert len(runner.partitioner) <= live_bound and peak["placements"] <= live_bound + 50, peak
    assert len(runner.scorer) <= live_bound
