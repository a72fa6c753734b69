"""Per-message produce cost: kafka-python (the pipeline's client) against librdkafka (confluent-kafka).

    python -m benchmarks.producers [--messages N]

Same broker, same forecast-sized messages, keyed by instrument, acks=all,
timed from the first send to the last acknowledgement. Supports the choice
of output format and client discussed in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

from pipeline.kafka.broker import EmbeddedBroker, create_topics


def forecast_messages(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"SYM{i % 1000:04d}".encode(),
             (f'{{"v":1,"model_version":"0123456789ab","horizon_ticks":10,"instrument":"SYM{i % 1000:04d}",'
              f'"ts":{1_700_000_000_000_000_000 + i},"forecast":{1.2345e-5 * (i % 7)!r},"topic":"in",'
              f'"partition":0,"offset":{i}}}').encode()) for i in range(n)]


def kafka_python(bootstrap: str, topic: str, msgs) -> float:
    from kafka import KafkaProducer  # noqa: PLC0415

    from pipeline.live.clients import CachingPartitioner  # noqa: PLC0415

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, batch_size=256 * 1024,
                      max_in_flight_requests_per_connection=1, partitioner=CachingPartitioner())
    started = time.perf_counter()
    for k, v in msgs:
        p.send(topic, key=k, value=v)
    p.flush()
    elapsed = time.perf_counter() - started
    p.close()
    return elapsed / len(msgs)


def librdkafka(bootstrap: str, topic: str, msgs) -> float:
    from confluent_kafka import Producer  # noqa: PLC0415

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2, "api.version.request": True,
                  "queue.buffering.max.messages": 2_000_000})
    started = time.perf_counter()
    for k, v in msgs:
        p.produce(topic, key=k, value=v)
        p.poll(0)
    p.flush(60)
    elapsed = time.perf_counter() - started
    return elapsed / len(msgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    msgs = forecast_messages(args.messages)
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {"kp": 4, "rd": 4})
        rows = []
        for _ in range(2):  # alternate, keep the best of two
            rows.append((kafka_python(broker.bootstrap, "kp", msgs), librdkafka(broker.bootstrap, "rd", msgs)))
        kp, rd = min(r[0] for r in rows), min(r[1] for r in rows)
        print(f"{args.messages:,} messages, 4 partitions, acks=all")
        print(f"  kafka-python   {kp * 1e6:6.2f} us/msg  {1 / kp:>10,.0f} msgs/s")
        print(f"  confluent-kafka {rd * 1e6:5.2f} us/msg  {1 / rd:>10,.0f} msgs/s  ({kp / rd:.1f}x faster)")


if __name__ == "__main__":
    main()
