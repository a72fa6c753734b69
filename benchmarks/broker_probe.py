"""What a paced load costs the load generator and the embedded broker: ``python -m benchmarks.broker_probe
[SECONDS]`` (from the repository root; default 90); ``--latency MODE RATE``: probe 3 only.

Two probes, each with a fresh embedded broker, 4,000 ticks a second (the soak's rate):

1. the load generator alone: CPU of the sending process, kafka-python's producer paced one message at a
   time (the load generator before) against ``benchmarks.e2e.produce_paced`` (librdkafka, bursts every 2 ms);
2. the broker's CPU every 10 seconds while a caught-up consumer reads the topic being produced, with the
   load generator gathering 5 ms and 100 ms of ticks into each record batch (librdkafka's ``linger.ms``).

3. ``--latency MODE RATE``: the loop's p50/p99 (``benchmarks.e2e.measure_latency``, 15 s, sequential, cores
   pinned, a fresh broker each) under each of the two load generators, alternated, two rounds: does the
   load's shape (one message at a time, or a burst every 2 ms) move the latency?

Why it exists: these two effects kept the 10-minute soak and drain from running at the rate asked
(docs/benchmarks.md, "The load generator and the broker's record batches").
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import benchmarks.e2e as e2e
from benchmarks.e2e import produce_paced
from pipeline import logs
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import EmbeddedBroker, create_topics
from pipeline.kafka.replay import encode_ticks

RATE = 4000


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kafka_python_paced(bootstrap: str, topic: str, messages, rate: float) -> None:
    """The load generator before: kafka-python, one message at a time, sleeping until each is due."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=512 * 1024, acks=1)
    started = time.monotonic()
    for i, (k, v, ts) in enumerate(messages):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        p.send(topic, key=k, value=v, timestamp_ms=ts)
    p.flush()
    p.close()


def kafka_python_load(bootstrap: str, topic: str, messages, rate: float | None = None, stop=None,
                      cpus: set[int] | None = None, linger_ms: int = 5) -> None:
    """``benchmarks.e2e.produce_ticks``'s signature around the old load generator (a spawned process imports it)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    _kafka_python_paced(bootstrap, topic, messages, rate)


def latency_under_each_generator(mode: str, rate: float, rounds: int = 2) -> None:
    from benchmarks.workload import bench_bundle  # noqa: PLC0415

    bundle = bench_bundle(1, 32)
    generators = (("librdkafka, bursts every 2 ms", e2e.produce_ticks), ("kafka-python, one by one", kafka_python_load))
    try:
        for _ in range(rounds):
            for name, produce in generators:
                e2e.produce_ticks = produce  # measure_latency's load generator, for this run
                u = uuid.uuid4().hex[:6]
                topics = {f"lat-{u}": 1, f"out-{u}": 1, f"dlq-{u}": 1}
                with e2e.phase_broker(True, "", True, topics) as (bootstrap, cpus):
                    lat = e2e.measure_latency(bundle, bootstrap, *topics, rate, 15, 1000, mode, 5000, 1, cpus)
                print(f"  {mode}, {name:<30} {rate:,.0f} ticks/s: {lat['ticks']:,} ticks, p50 {lat['p50_ms']:.1f} ms, "
                      f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms, {lat['mean_batch_ticks']:.0f} a batch",
                      flush=True)
    finally:
        e2e.produce_ticks = generators[0][1]


def generator_cpu(messages, send) -> tuple[float, float]:
    """(messages a second reached, CPU share of this process) for one paced send of ``messages``."""
    with EmbeddedBroker() as b:
        create_topics(b.bootstrap, {"t": 1})
        t0, c0 = time.monotonic(), time.process_time()
        send(b.bootstrap, "t", messages, RATE)
        elapsed = time.monotonic() - t0
        return len(messages) / elapsed, (time.process_time() - c0) / elapsed


def broker_cpu_under_tail_reads(messages, linger_ms: int, printer=print) -> list[float]:
    """The broker's CPU share per 10 s while ``messages`` are produced at RATE and a consumer reads at the tail."""
    with EmbeddedBroker() as b:
        create_topics(b.bootstrap, {"t": 1})
        stop = threading.Event()

        def read() -> None:
            c = KafkaConsumer(bootstrap_servers=b.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
            tp = TopicPartition("t", 0)
            c.assign([tp])
            c.seek_to_beginning(tp)
            while not stop.is_set():
                c.poll(100)
            c.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sender = threading.Thread(target=produce_paced, args=(b.bootstrap, "t", messages, RATE, None, None,
                                                                linger_ms))
        sender.start()
        shares, last = [], _cpu_seconds(b.proc.pid)
        while sender.is_alive():
            sender.join(10)
            now = _cpu_seconds(b.proc.pid)
            shares.append((now - last) / 10)
            last = now
            printer(f"    linger {linger_ms:>3} ms, {10 * len(shares):>4} s: broker {100 * shares[-1]:.0f} % of a core")
        stop.set()
        reader.join(10)
        return shares


def main(argv: list[str] | None = None) -> int:
    logs.configure("text", "warning")
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--latency"]:
        latency_under_each_generator(args[1], float(args[2]))
        return 0
    seconds = int(args[0]) if args else 90
    messages = encode_ticks(generate_ticks(1000, RATE * seconds, seed=3, bad_fraction=0.0))
    print(f"load generator alone, {RATE:,} ticks/s for {seconds} s:")
    for name, send in (("kafka-python, paced one by one", _kafka_python_paced),
                       ("librdkafka, bursts every 2 ms", produce_paced)):
        rate, share = generator_cpu(messages, send)
        print(f"  {name:<32} {rate:>7,.0f} msgs/s, {100 * share:.0f} % of a core "
              f"({1e6 * share / rate:.0f} us of CPU a message)")
    print(f"broker CPU while a caught-up consumer reads, {RATE:,} ticks/s for {seconds} s:")
    for linger_ms in (5, 100):
        shares = broker_cpu_under_tail_reads(messages, linger_ms)
        print(f"  linger {linger_ms} ms: first 10 s {100 * shares[0]:.0f} %, last full 10 s "
              f"{100 * shares[-2 if len(shares) > 1 else -1]:.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
