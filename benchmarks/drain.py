"""The pipelined loop draining a backlog, RSS sampled every second: ``python -m benchmarks.drain [MINUTES]
[--pin-cores] [--json FILE]`` (from the repository root; default 10 minutes).

The same drain as ``tickcast bench e2e --drain-minutes``, without the rest of that benchmark: the pipelined
loop's rate (JSON ``every_tick``) is measured first on 150,000 ticks, then a backlog of MINUTES at that rate
is drained in a broker of its own. Pinned: the broker on CPU 0, the pipeline on the others.
"""

from __future__ import annotations

import uuid

from benchmarks.e2e import DEPTHS, produce_ticks, measure_drain, measure_pipeline, minutes_command, phase_broker
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.replay import encode_ticks

BATCH = 5000
RATE_TICKS = 150_000


def run(minutes: float = 10.0, instruments: int = 1000, pin_cores: bool = False, printer=print) -> dict:
    from benchmarks.workload import bench_bundle  # noqa: PLC0415

    bundle = bench_bundle(1, 32)
    u = uuid.uuid4().hex[:6]
    tin, tout, dlq = f"rate-in-{u}", f"rate-out-{u}", f"rate-dlq-{u}"
    with phase_broker(True, "", pin_cores, {tin: 1, tout: 1, dlq: 1}) as (bootstrap, _):
        produce_ticks(bootstrap, tin, encode_ticks(generate_ticks(instruments, RATE_TICKS, seed=1, bad_fraction=0.0)))
        rate = measure_pipeline(bundle, bootstrap, tin, tout, dlq, RATE_TICKS, "every_tick", BATCH,
                                DEPTHS["pipelined"])["ticks_per_second"]
    printer(f"drain: the pipelined loop's rate, JSON every_tick: {rate:,.0f} ticks/s"
            f"{'; cores pinned' if pin_cores else ''}")
    with phase_broker(True, "", pin_cores, {}) as (bootstrap, _):
        return {"pinned_cores": pin_cores, **measure_drain(bundle, bootstrap, rate, minutes, instruments, BATCH,
                                                            printer)}


def main(argv: list[str] | None = None) -> int:
    return minutes_command(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
