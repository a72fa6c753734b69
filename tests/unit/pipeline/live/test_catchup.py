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
    position moves past them."""

    def poll(self, timeout_ms=0, max_records=None):
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        out, room = {}, max_records or 500
        for tp in sorted(self.assigned - self.paused):
            log = self.broker.topics[tp.topic][tp.partition]
            pos, got = self.positions.get(tp, 0), []
            while pos < len(log) and len(got) < room:
                if log[pos].headers != CONTROL:
                    got.append(log[pos])
                pos += 1
            self.positions[tp] = pos
            if got:
                out[tp], room = got, room - len(got)
        return out


class HoleyKafka(FakeKafka):
    def consumer(self, **config):
        c = HoleyConsumer(self.broker, **config)
        self.consumers.append(c)
        return c


def append(broker, partition, control: bool, ts: int = 0):
    broker.append(TOPIC, partition, b"k", b"v", headers=CONTROL if control else None, timestamp=ts)


def data_offsets(broker, tp, lo, hi):
    return [r.offset for r in broker.topics[tp.topic][tp.partition][lo:hi] if r.headers != CONTROL]


def new_catchup(kafka, metrics=None):
    return CatchUp(lambda: kafka.consumer(group_id=None), metrics or Metrics(), candidate="cand")


log_st = st.lists(st.booleans(), max_size=30)  # per record: a control record?


@settings(max_examples=200, deadline=None)
@given(logs=st.lists(log_st, min_size=1, max_size=3), moving_rounds=st.integers(0, 25), data=st.data())
def test_every_record_before_the_final_target_is_stepped_once_in_order(logs, moving_rounds, data):
    broker = FakeBroker({TOPIC: len(logs)})
    for p, log in enumerate(logs):
        for control in log:
            append(broker, p, control)
    kafka = HoleyKafka(broker)
    metrics = Metrics()
    cu = new_catchup(kafka, metrics)
    tps = [TopicPartition(TOPIC, p) for p in range(len(logs))]
    start = {tp: data.draw(st.integers(0, broker.end(tp)), label=f"start {tp.partition}") for tp in tps}
    for tp in tps:
        cu.begin(tp, start[tp])
    targets = dict(start)
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
