"""Running the real live loop (``Runner.run``) on a thread against the in-memory Kafka fakes: a broker with
ticks on two partitions, a runner made from flags, and what it published."""

from __future__ import annotations

import json
import threading
import time
import zlib

import numpy as np
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.config import RunConfig
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.replay import encode_ticks
from pipeline.live.runner import Runner
from pipeline.metrics import Metrics
from tests.support.bundles import in_target_units
from tests.support.fake_kafka import FakeBroker, FakeKafka

TP0, TP1 = TopicPartition("ticks", 0), TopicPartition("ticks", 1)
TICKS = encode_ticks(generate_ticks(6, 1000, seed=5, bad_fraction=0.0))


def new_broker() -> FakeBroker:
    return FakeBroker({"ticks": 2, "forecasts": 1, "forecasts.shadow": 1, "ticks.dlq": 1})


def feed(broker: FakeBroker, n: int = 400, start: int = 0) -> None:
    """Valid ticks ``start`` to ``start + n`` of 6 instruments, each instrument on one partition (by key)."""
    for key, value, ts_ms in TICKS[start:start + n]:
        broker.append("ticks", zlib.crc32(key) % 2, key, value, timestamp=ts_ms)


def make_runner(bundle, broker: FakeBroker, store=None, candidates=(), **flags) -> tuple[Runner, FakeKafka]:
    fake = FakeKafka(broker)
    cfg = RunConfig.load(env={}, flags={"model": "m", "group_id": "g", "checkpoint_uri": "", "status_interval_s": 0,
                                        **flags})
    return Runner(cfg, bundle, Metrics(CollectorRegistry()), kafka_clients=fake, store=store,
                  candidates=candidates), fake


def run_until(runner: Runner, done, timeout_s: float = 60.0) -> int:
    """Run the loop on a thread until ``done()``; stop it; its exit code."""
    code = []
    thread = threading.Thread(target=lambda: code.append(runner.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    reached = done()
    runner.request_stop()
    thread.join(30)
    assert reached, "the loop did not get there"
    assert code, "the loop did not stop"
    return code[0]


def all_committed(broker: FakeBroker):
    return lambda: all(broker.committed.get(TopicPartition("ticks", p)) == broker.end(TopicPartition("ticks", p))
                       for p in range(2))


def forecasts(broker: FakeBroker, topic: str = "forecasts") -> dict[tuple[int, int], float]:
    """Published forecasts by source (partition, offset); a duplicate fails."""
    out = {}
    for r in broker.records(topic):
        m = json.loads(r.value)
        source = (m["partition"], m["offset"])
        assert source not in out, f"forecast for {source} published twice"
        out[source] = m["forecast"]
    return out


def reference(bundle, n: int = 400) -> dict[tuple[int, int], float]:
    """What a sequential run without faults publishes for the same input."""
    broker = new_broker()
    feed(broker, n)
    runner, _ = make_runner(bundle, broker, max_batches_in_flight=1)
    assert run_until(runner, all_committed(broker)) == 0
    return forecasts(broker)


def assert_same_forecasts(bundle, got: dict, expected: dict) -> None:
    """The same sources, and the same numbers to float32 tolerance (batches may be cut differently)."""
    assert got.keys() == expected.keys()
    keys = sorted(expected)
    np.testing.assert_allclose(in_target_units(bundle, [got[k] for k in keys]),
                               in_target_units(bundle, [expected[k] for k in keys]), rtol=1e-5, atol=1e-5)


def sample(runner: Runner, name: str, **labels) -> float | None:
    return runner.metrics.registry.get_sample_value(name, labels)
