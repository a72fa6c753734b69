"""What a paced load costs the load generator and the embedded broker: ``python -m benchmarks.broker_probe
[SECONDS]`` (from the repository root; default 90).

Two probes, each with a fresh embedded broker, 4,000 ticks a second (the soak's rate):

1. the load generator alone: CPU of the sending process, kafka-python's producer paced one message at a
   time (the load generator before) against ``benchmarks.e2e._produce_paced`` (librdkafka, bursts every 2 ms);
2. the broker's CPU every 10 seconds while a caught-up consumer reads the topic being produced, with the
   load generator gathering 5 ms and 100 ms of ticks into each record batch (librdkafka's ``linger.ms``).

Why it exists: these two effects kept the 10-minute soak and drain from running at the rate asked
(docs/benchmarks.md, "The load generator and the broker's record batches").
"""

from __future__ import annotations

import os
import sys
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from benchmarks.e2e import _produce_paced
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
        sender = threading.Thread(target=_produce_paced, args=(b.bootstrap, "t", messages, RATE, None, None,
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
    seconds = int(args[0]) if args else 90
    messages = encode_ticks(generate_ticks(1000, RATE * seconds, seed=3, bad_fraction=0.0))
    print(f"load generator alone, {RATE:,} ticks/s for {seconds} s:")
    for name, send in (("kafka-python, paced one by one", _kafka_python_paced),
                       ("librdkafka, bursts every 2 ms", _produce_paced)):
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
