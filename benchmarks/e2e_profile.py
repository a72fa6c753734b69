"""Where the live loop's thread spends its time: ``python -m benchmarks.e2e_profile MODE DEPTH`` (from the
repository root) drains 40,000 ticks through ``Runner`` once to warm up, then again under ``cProfile``, and
prints the top functions by own time and who waits on locks. MODE is a key of ``benchmarks.e2e.MODES``,
DEPTH is ``max_batches_in_flight``."""

from __future__ import annotations

import cProfile
import pstats
import sys
import uuid

from benchmarks.e2e import produce_ticks, measure_pipeline
from benchmarks.workload import bench_bundle
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import EmbeddedBroker, create_topics
from pipeline.kafka.replay import encode_ticks


def main(argv: list[str] | None = None) -> int:
    mode, depth = (argv or sys.argv[1:] or ["every_tick", "2"])[:2]
    n = 40_000
    bundle = bench_bundle(1, 32)
    with EmbeddedBroker() as broker:
        u = uuid.uuid4().hex[:6]
        tin, tout, dlq = f"prof-in-{u}", f"prof-out-{u}", f"prof-dlq-{u}"
        create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1})
        produce_ticks(broker.bootstrap, tin, encode_ticks(generate_ticks(1000, n, seed=1, bad_fraction=0.0)))
        measure_pipeline(bundle, broker.bootstrap, tin, tout, dlq, n, mode, 5000, int(depth))  # warm-up
        profile = cProfile.Profile()
        profile.enable()
        result = measure_pipeline(bundle, broker.bootstrap, tin, tout, dlq, n, mode, 5000, int(depth))
        profile.disable()
    print(result)
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(15)
    stats.print_callers("threading.py:611")  # Event.wait: which calls wait on another thread
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
