"""The pipelined loop under a steady load for minutes, RSS sampled every second: ``python -m benchmarks.soak
[MINUTES] [--pin-cores] [--json FILE]`` (from the repository root; default 10 minutes).

It runs in a broker of its own, and its load generator gathers 100 ms of ticks into each record batch: the
embedded broker's fetches slow down with the number of record batches in its log (``FEEDER_LINGER_MS``).
Pinned: the broker and the load generator on CPU 0, the pipeline on the others.
"""

from __future__ import annotations

import uuid

from benchmarks.e2e import DEPTHS, rss_summary, measure_latency, minutes_command, pin
from pipeline.kafka.broker import EmbeddedBroker, create_topics

RATE = 4000  # ticks/s
# The load generator gathers 100 ms of ticks (400) into a record batch: the embedded broker's fetch cost grows
# with the number of record batches in its log, and with librdkafka's usual 5 ms (200 batches a second) a
# caught-up consumer's fetches took its core from 24 % to 87 % within 70 seconds (flat 8-10 % with 100 ms;
# python -m benchmarks.broker_probe).
# Latency is measured from the loop's receipt, so the linger is not in it; the load arrives in 100 ms bursts.
FEEDER_LINGER_MS = 100


def run(minutes: float = 10.0, instruments: int = 1000, pin_cores: bool = False, printer=print) -> dict:
    from benchmarks.workload import bench_bundle  # noqa: PLC0415

    bundle = bench_bundle(1, 32)
    with EmbeddedBroker() as broker:
        feeder_cpus = pin(broker) if pin_cores else None
        u = uuid.uuid4().hex[:6]
        tin, tout, dlq = f"soak-in-{u}", f"soak-out-{u}", f"soak-dlq-{u}"
        create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1})
        printer(f"soak: {minutes:g} minutes, JSON every_tick pipelined, {RATE:,} ticks/s over {instruments:,} "
                f"instruments from the load generator{', cores pinned' if pin_cores else ''} ...")
        samples: list = []
        lat = measure_latency(bundle, broker.bootstrap, tin, tout, dlq, RATE, minutes * 60, instruments,
                              "every_tick", 5000, DEPTHS["pipelined"], feeder_cpus, rss_samples=samples,
                              feeder_linger_ms=FEEDER_LINGER_MS)
    result = {"minutes": minutes, "rate_ticks_per_second": RATE, "pinned_cores": pin_cores,
              "expected_ticks": int(RATE * minutes * 60), **lat, **rss_summary(samples)}
    printer(f"  {result['ticks']:,} of {result['expected_ticks']:,} ticks; RSS min {result['rss_mib_min']:.0f} MiB, "
            f"max {result['rss_mib_max']:.0f} MiB (first half {result['rss_mib_first_half_max']:.0f}, second half "
            f"{result['rss_mib_second_half_max']:.0f}), second-half slope "
            f"{result['rss_slope_mib_per_minute_second_half']:+.2f} MiB/min; latency p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms (the last 200,000 ticks)")
    return result


def main(argv: list[str] | None = None) -> int:
    return minutes_command(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
