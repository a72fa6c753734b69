"""Time from SIGKILL to the next forecast after a restart, at 100k instruments.

    python -m benchmarks.recovery [--instruments N] [--json PATH]

A `tickcast run` process (exactly-once, checkpoints in a local directory)
forecasts one tick for each of N instruments and checkpoints; it is killed
with SIGKILL and restarted at once; one new tick is produced; the clock stops
when that tick's forecast is readable (read_committed). The breakdown comes
from the restarted process's own log timestamps, and a bare
``import tensorflow`` in a fresh interpreter is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.broker import EmbeddedBroker, create_topics
from tests.support.live import RunProcess, produce


def _ts(line: dict) -> float:
    return datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp()


def _messages(names, k: int):
    return [(n.encode(), json.dumps({"v": 1, "instrument": n, "ts": 1_767_225_600_000_000_000 + k * 10**9 + i,
                                     "price": 100.0 + (i % 7) * 0.01, "size": 1}).encode())
            for i, n in enumerate(names)]


def _wait_forecasts(bootstrap: str, topic: str, want: int, timeout: float) -> float:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"rec-{uuid.uuid4().hex[:6]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got, deadline = 0, time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        msgs = c.consume(10_000, 0.2)
        got += sum(1 for m in msgs if not m.error())
    c.close()
    if got < want:
        raise RuntimeError(f"only {got} of {want} forecasts within {timeout}s")
    return time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instruments", type=int, default=100_000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = args.instruments
    model = os.environ.get("TICKCAST_BENCH_MODEL") or _model()
    names = [f"I{i:06d}" for i in range(n)]
    store = tempfile.mkdtemp(prefix="tickcast-rec-")
    with EmbeddedBroker() as broker:
        tin, tout, dlq = "rec-in", "rec-out", "rec-dlq"
        create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1})
        run_args = ["--processing", "exactly_once", "--checkpoint-uri", store, "--transactional-id", "rec-1",
                    "--checkpoint-interval-s", "0", "--session-timeout-ms", "6000", "--max-batch-ticks", "20000"]
        first = RunProcess.start(broker.bootstrap, model, tin, tout, dlq, "rec", *run_args)
        produce(broker.bootstrap, tin, _messages(names, 0), partition=0)
        _wait_forecasts(broker.bootstrap, tout, n, timeout=300)
        first.stop()  # graceful: a checkpoint of all n instruments at the end offset
        second = RunProcess.start(broker.bootstrap, model, tin, tout, dlq, "rec", *run_args)
        second.wait_for("partition restored from checkpoint", timeout=120)
        time.sleep(2)
        killed_at = time.time()
        second.kill()
        third = RunProcess.start(broker.bootstrap, model, tin, tout, dlq, "rec", *run_args)
        produce(broker.bootstrap, tin, _messages(names[:1], 1), partition=0)
        done_at = _wait_forecasts(broker.bootstrap, tout, n + 1, timeout=300)
        started = _ts(third.wait_for("starting"))
        connected = _ts(third.wait_for("connected"))
        restored = third.wait_for("partition restored from checkpoint")
        third.stop()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True)
    tf_import = time.perf_counter() - t0
    result = {"instruments": n, "kill_to_forecast_s": done_at - killed_at,
              "process_start_to_starting_log_s": started - killed_at,
              "connected_to_assigned_and_restored_s": _ts(restored) - connected,
              "restored_to_forecast_s": done_at - _ts(restored), "checkpoint_rows": restored["rows"],
              "tensorflow_import_s": tf_import}
    for k, v in result.items():
        print(f"  {k:<40} {v:,.2f}" if isinstance(v, float) else f"  {k:<40} {v:,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def _model() -> str:
    from operators.bundle import save_bundle  # noqa: PLC0415
    from operators.training import TrainConfig, train  # noqa: PLC0415
    from pipeline.files.synthetic import generate_ticks  # noqa: PLC0415

    path = tempfile.mkdtemp(prefix="tickcast-rec-model-")
    save_bundle(train(generate_ticks(20, 20_000, seed=1), TrainConfig(epochs=1, hidden=64)), path)
    return path


if __name__ == "__main__":
    main()
