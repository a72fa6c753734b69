"""CatchUp: every record in [start, final target) stepped exactly once, in offset order per partition, none at
or after the target of the round that stepped it; offset holes (control records), moving targets, a growing
log, small budgets and broker errors included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.errors import KafkaConnectionError
from kafka.structs import TopicPartition

from pipeline.config import RunConfig
from pipeline.live.catchup import CatchUp, open_catchup_consumer, warmup_start_offsets
from pipeline.metrics import Metrics
from tests.support.fake_kafka import FakeBroker, FakeConsumer, FakeKafka

TOPIC = "ticks"
CONTROL = (("control", b""),)  # a record the consumer never returns (a transaction marker): a hole in offsets


class HoleyConsumer(FakeConsumer):
    """Like Kafka's consumer on a transactional or compacted topic: control records are not returned, and the
    position moves past them. ``extra``: a poll returns that many records more than asked for (a client that
    hands out what it has buffered): the reader must not rely on the budget being kept. ``stale``: each poll
    hands the record before the position out again first (a fetch answered from an older position)."""

    extra = 0
    stale = False

    def poll(self, timeout_ms=0, max_records=None):
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        out, room = {}, (max_records or 500) + self.extra
        for tp in sorted(self.assigned - self.paused):
            log = self.broker.topics[tp.topic][tp.partition]
            pos, got = self.positions.get(tp, 0), []
            if self.stale and pos > 0 and log[pos - 1].headers != CONTROL:
                got.append(log[pos - 1])
            while pos < len(log) and len(got) < room:
                if log[pos].headers != CONTROL:
                    got.append(log[pos])
                pos += 1
            self.positions[tp] = pos
            if got:
                out[tp], room = got, room - len(got)
        return out


class HoleyKafka(FakeKafka):
    extra = 0
    stale = False

    def consumer(self, **config):
        c = HoleyConsumer(self.broker, **config)
        c.extra, c.stale = self.extra, self.stale
        self.consumers.append(c)
        return c


def append(broker, partition, control: bool, ts: int = 0):
    broker.append(TOPIC, partition, b"k", b"v", headers=CONTROL if control else None, timestamp=ts)


def data_offsets(broker, tp, lo, hi):
    return [r.offset for r in broker.topics[tp.topic][tp.partition][lo:hi] if r.headers != CONTROL]


def new_catchup(kafka, metrics=None):
    return CatchUp(lambda: kafka.consumer(group_id=None), metrics or Metrics(), candidate="cand")


log_st = st.lists(st.booleans(), max_size=30)  # per record: a control record?


@settings(max_examples=300, deadline=None)
@given(logs=st.lists(log_st, min_size=1, max_size=3), moving_rounds=st.integers(0, 25), extra=st.integers(0, 3),
       stale=st.booleans(), data=st.data())
def test_every_record_before_the_final_target_is_stepped_once_in_order(logs, moving_rounds, extra, stale, data):
    broker = FakeBroker({TOPIC: len(logs)})
    for p, log in enumerate(logs):
        for control in log:
            append(broker, p, control)
    kafka = HoleyKafka(broker)
    kafka.extra, kafka.stale = extra, stale
    metrics = Metrics()
    cu = new_catchup(kafka, metrics)
    tps = [TopicPartition(TOPIC, p) for p in range(len(logs))]
    start = {tp: data.draw(st.integers(0, broker.end(tp)), label=f"start {tp.partition}") for tp in tps}
    for tp in tps:
        cu.begin(tp, start[tp])
    targets = {tp: data.draw(st.integers(start[tp], broker.end(tp)), label=f"target {tp.partition}") for tp in tps}
    stepped: dict = {tp: [] for tp in tps}
    finished_at: dict = {}
    for rnd in range(10_000):
        if not cu.pending():
            break
        moving = rnd < moving_rounds
        shown = dict(targets)
        if moving:  # the primary reads on: the log grows, targets move, a target may be unknown this round
            if data.draw(st.booleans(), label="grow"):
                tp = data.draw(st.sampled_from(tps))
                append(broker, tp.partition, data.draw(st.booleans(), label="control"))
            tp = data.draw(st.sampled_from(tps))
            targets[tp] = data.draw(st.integers(targets[tp], broker.end(tp)), label="target")
            shown = {tp: t for tp, t in targets.items() if data.draw(st.integers(0, 4), label="shown")}
            if kafka.consumers and data.draw(st.integers(0, 7), label="broker error") == 0:
                kafka.consumers[-1].poll_errors.append(KafkaConnectionError("down"))
        else:
            assert rnd < moving_rounds + sum(map(len, logs)) + 30, "no progress with targets standing still"
        budget = data.draw(st.integers(1, 6), label="max_records")

        def step(records, shown=shown, budget=budget):
            assert 0 < len(records) <= budget
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                assert tp in cu.pending() and r.offset < shown[tp], "stepped a record at or after its target"
                stepped[tp].append(r.offset)

        before = cu.pending()
        done = cu.advance(shown, step, budget)
        assert done <= before and done.isdisjoint(cu.pending())
        for tp in done:
            finished_at[tp] = shown[tp]
    assert not cu.pending() and set(finished_at) == set(tps)
    for tp in tps:
        assert stepped[tp] == data_offsets(broker, tp, start[tp], finished_at[tp]), \
            "not every record before the target stepped exactly once, in order"
    assert metrics.registry.get_sample_value("tickcast_candidate_catchup_records_total", {"candidate": "cand"}) \
        == sum(map(len, stepped.values()))
    assert metrics.registry.get_sample_value("tickcast_candidate_catchup_partitions", {"candidate": "cand"}) == 0
    assert all(c.closed for c in kafka.consumers), "an idle catch-up keeps no consumer open"


def plain_topic(n: int, partitions: int = 1) -> FakeBroker:
    broker = FakeBroker({TOPIC: partitions})
    for p in range(partitions):
        for i in range(n):
            append(broker, p, False, ts=i * 1000)
    return broker


def collect(into: list):
    return lambda records: into.extend((r.partition, r.offset) for r in records)


def test_records_a_failing_step_did_not_take_are_read_again():
    broker = plain_topic(6)
    cu = new_catchup(FakeKafka(broker))
    tp = TopicPartition(TOPIC, 0)
    cu.begin(tp, 1)
    seen: list = []

    def failing(records):
        raise RuntimeError("step failed")

    try:
        cu.advance({tp: 5}, failing, 3)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a failing step is the caller's to see")
    while cu.pending():
        cu.advance({tp: 5}, collect(seen), 3)
    assert seen == [(0, 1), (0, 2), (0, 3), (0, 4)]


def test_a_cancelled_partition_is_never_read_again_and_the_last_one_closes_the_consumer():
    broker = plain_topic(10, partitions=2)
    kafka = FakeKafka(broker)
    metrics = Metrics()
    cu = new_catchup(kafka, metrics)
    a, b = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    cu.begin(a, 0)
    cu.begin(b, 0)
    assert metrics.registry.get_sample_value("tickcast_candidate_catchup_partitions", {"candidate": "cand"}) == 2
    seen: list = []
    cu.advance({a: 10, b: 10}, collect(seen), 2)
    cu.cancel(a)
    assert cu.pending() == {b}
    assert metrics.registry.get_sample_value("tickcast_candidate_catchup_partitions", {"candidate": "cand"}) == 1
    before = [x for x in seen if x[0] == 0]
    while cu.pending():
        cu.advance({a: 10, b: 10}, collect(seen), 3)
    assert [x for x in seen if x[0] == 0] == before
    assert [o for p, o in seen if p == 1] == list(range(10))
    assert kafka.consumers[-1].closed and not cu.pending()
    cu.begin(a, 8)  # opens a consumer again
    assert cu.advance({a: 10}, collect(seen), 5) == {a} and seen[-2:] == [(0, 8), (0, 9)]
    assert len(kafka.consumers) == 2 and kafka.consumers[-1].closed


def test_a_broker_error_is_counted_and_the_read_goes_on_at_the_next_round(caplog):
    broker = plain_topic(4)
    kafka = FakeKafka(broker)
    metrics = Metrics()
    cu = new_catchup(kafka, metrics)
    tp = TopicPartition(TOPIC, 0)
    cu.begin(tp, 0)
    kafka.on_consumer = lambda c: c.poll_errors.append(KafkaConnectionError("down"))
    seen: list = []
    assert cu.advance({tp: 4}, collect(seen), 10) == set() and seen == []
    assert metrics.registry.get_sample_value("tickcast_broker_errors_total", {"operation": "catchup"}) == 1
    assert "catch-up read failed" in caplog.text
    assert cu.advance({tp: 4}, collect(seen), 10) == {tp}
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_the_consumer_reads_like_the_main_one_without_a_group():
    kafka = FakeKafka(FakeBroker())
    cfg = RunConfig(model="m", bootstrap_servers="a:9092,b:9092", processing="exactly_once",
                    security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p",
                    ssl_cafile="ca.pem")
    conf = open_catchup_consumer(kafka, cfg).config
    assert conf["group_id"] is None and conf["enable_auto_commit"] is False
    assert conf["isolation_level"] == "read_committed"
    assert conf["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert {k: conf[k] for k in cfg.kafka_security()} == cfg.kafka_security()
    cfg = RunConfig(model="m", processing="at_least_once")
    assert open_catchup_consumer(kafka, cfg).config["isolation_level"] == "read_uncommitted"


@given(n=st.integers(0, 20), until_s=st.integers(0, 25), warmup_s=st.integers(1, 25))
def test_the_start_is_the_first_record_stamped_within_the_warmup_window(n, until_s, warmup_s):
    broker = plain_topic(n)  # record i stamped i seconds
    tp = TopicPartition(TOPIC, 0)
    since = until_s - warmup_s
    expected = next((i for i in range(n) if i >= since), None)
    consumer = FakeKafka(broker).consumer(group_id=None)
    assert warmup_start_offsets(consumer, [tp], until_s * 1000, f"{warmup_s}s") == {tp: expected}


def test_start_offsets_through_the_catchup_leaves_its_reads_in_place():
    broker = plain_topic(10)
    cu = new_catchup(FakeKafka(broker))
    a = TopicPartition(TOPIC, 0)
    cu.begin(a, 0)
    seen: list = []
    cu.advance({a: 10}, collect(seen), 2)
    assert cu.start_offsets([a], 9000, "3s") == {a: 6}  # the probe unassigns the consumer ...
    while cu.pending():
        cu.advance({a: 10}, collect(seen), 3)
    assert [o for _, o in seen] == list(range(10))  # ... and the read goes on where it was
